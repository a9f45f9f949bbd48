"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) on any family's layers.

An adapter maps a sublayer's output h [*batch, hidden] to h + up(act(down(h))), with
down [hidden, size] and up [size, hidden]. It sits on the output projection of a
sublayer, before the residual add and LayerNorm (module_hooks intercepts the projection;
so it is also before the hidden dropout, which adapter-transformers applies first):

  houlsby   two per layer: after the attention output projection and after the FFN output
  pfeiffer  one per layer: after the FFN output

(Pfeiffer's full configuration in adapter-transformers also re-routes the residual
through the layer's LayerNorm; this is its placement only.) `down` starts near zero
(normal, std 1e-2, truncated at 2 std, as Houlsby) and `up` at zero, so an untrained
adapter leaves the model's output exactly unchanged. Trained: the adapters, every
LayerNorm of the encoder (`trains`) and the task head; everything else is frozen.
"""
import dataclasses
import functools
from typing import ClassVar

import flax
import jax
import jax.numpy as jnp

from encoders.config import ConfigError

PLACEMENTS = {'houlsby': ('attention/output', 'mlp/output'), 'pfeiffer': ('mlp/output',)}
ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': functools.partial(jax.nn.gelu, approximate=False),
               'swish': jax.nn.swish}
INIT_STD = 1e-2


@dataclasses.dataclass(frozen=True)
class Adapters:
  placement: str = 'houlsby'  # 'houlsby' or 'pfeiffer' (PLACEMENTS).
  size: int = 64  # Bottleneck width.
  activation: str = 'relu'  # 'relu', 'gelu' or 'swish'.
  targets: tuple[str, ...] = ()  # Module path suffixes; () -> the placement's.
  key: ClassVar[str] = 'adapter'  # Where the weights sit in the extra tree (module_hooks).

  def __post_init__(self):
    if self.placement not in PLACEMENTS:
      raise ConfigError(f'config.peft.method={self.placement!r}: choose one of {tuple(PLACEMENTS)}.')
    if not isinstance(self.size, int) or self.size <= 0:
      raise ConfigError(f'config.peft.adapter_size={self.size!r}: must be a positive integer.')
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f'config.peft.adapter_activation={self.activation!r}: choose one of '
                        f'{tuple(ACTIVATIONS)}.')

  @property
  def module_targets(self) -> tuple[str, ...]:
    """The projections the adapters follow."""
    return self.targets or PLACEMENTS[self.placement]

  def init(self, rng: jax.Array, modules: dict) -> dict:
    """Per module: down {kernel [*out, size], bias [size]}, up {kernel [size, *out], bias [*out]}."""
    flat = {}
    for index, (path, (_, out_dims)) in enumerate(sorted(modules.items())):
      down = jax.random.truncated_normal(jax.random.fold_in(rng, index), -2.0, 2.0,
                                         out_dims + (self.size,), jnp.float32) * INIT_STD
      flat[path + (self.key, 'down', 'kernel')] = down
      flat[path + (self.key, 'down', 'bias')] = jnp.zeros((self.size,), jnp.float32)
      flat[path + (self.key, 'up', 'kernel')] = jnp.zeros((self.size,) + out_dims, jnp.float32)
      flat[path + (self.key, 'up', 'bias')] = jnp.zeros(out_dims, jnp.float32)
    return flax.traverse_util.unflatten_dict(flat)

  def hook(self, weights, x, y, module, deterministic: bool):
    """y + up(act(down(y))), in y's dtype (the matmuls accumulate in f32)."""
    del x, module, deterministic
    down, up = weights['down'], weights['up']
    num_out = down['kernel'].ndim - 1
    hidden = jnp.tensordot(y, down['kernel'].astype(y.dtype), num_out,
                           preferred_element_type=jnp.float32) + down['bias']  # [*batch, size]
    hidden = ACTIVATIONS[self.activation](hidden).astype(y.dtype)
    delta = jnp.tensordot(hidden, up['kernel'].astype(y.dtype), 1,
                          preferred_element_type=jnp.float32) + up['bias']  # [*batch, *out]
    return (y + delta).astype(y.dtype)

  def trains(self, path) -> bool:
    """Whether the base parameter at `path` (inside the encoder) is trained: the LayerNorms."""
    return any('norm' in name.lower() for name in path[:-1])
