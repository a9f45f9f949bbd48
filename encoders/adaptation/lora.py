"""LoRA (Hu et al. 2021) on any family's linear modules, as PEFT computes it.

A target module y = x W + b gains y += dropout(x) A B * scale, with A [*in, r] and
B [r, *out] over the kernel's own input and output dims (so an attention projection's
[hidden, heads, head_dim] kernel gets A [hidden, r], B [r, heads, head_dim]; PEFT's
lora_A.weight is A flattened to [in, r] and transposed, lora_B.weight likewise). PEFT's
initialisation: A is kaiming-uniform with a = sqrt(5) on torch's [r, in] weight, i.e.
U(-1/sqrt(in), 1/sqrt(in)); B is zero, so training starts at the pretrained function.
scale = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023). `merge` folds
A B * scale into W for inference and export.

  lora = LoRA(rank=8, alpha=16, targets=('query', 'value'))
  extra = lora.init(rng, module_hooks.target_modules(model, params, lora.module_targets))
  logits = module_hooks.apply(lora, model, params, extra, input_ids)  # Dropout: rngs=...
  merged = lora.merge(params, extra)   # a plain params tree of `model`
"""
import dataclasses
import math
from typing import ClassVar

import flax
import jax
import jax.numpy as jnp
import numpy as np

from encoders import module_hooks
from encoders.config import ConfigError


@dataclasses.dataclass(frozen=True)
class LoRA:
  rank: int = 8  # r.
  alpha: float = 8.0  # The update is scaled by alpha / r (alpha / sqrt(r) with rslora).
  dropout: float = 0.0  # On the input of A (PEFT's lora_dropout); the base path has none.
  targets: tuple[str, ...] = ('query', 'value')  # Module path suffixes (PEFT's BERT default).
  rslora: bool = False
  key: ClassVar[str] = 'lora'  # Where the weights sit in the extra tree (module_hooks).

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank <= 0:
      raise ConfigError(f'config.peft.rank={self.rank!r}: must be a positive integer.')
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f'config.peft.dropout={self.dropout!r}: must be in [0, 1).')
    if not self.targets:
      raise ConfigError('config.peft.targets: LoRA needs at least one target module.')

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

  @property
  def module_targets(self) -> tuple[str, ...]:
    return self.targets

  def init(self, rng: jax.Array, modules: dict) -> dict:
    """The extra tree: per module, A ~ U(-1/sqrt(in), 1/sqrt(in)) [*in, r] and B = 0 [r, *out]."""
    flat = {}
    for index, (path, (in_dims, out_dims)) in enumerate(sorted(modules.items())):
      bound = 1.0 / math.sqrt(int(np.prod(in_dims)))
      flat[path + (self.key, 'a')] = jax.random.uniform(
          jax.random.fold_in(rng, index), in_dims + (self.rank,), jnp.float32, -bound, bound)
      flat[path + (self.key, 'b')] = jnp.zeros((self.rank,) + out_dims, jnp.float32)
    return flax.traverse_util.unflatten_dict(flat)

  def hook(self, weights, x, y, module, deterministic: bool):
    """y + dropout(x) A B * scale, in y's dtype (the matmuls accumulate in f32)."""
    a, b = weights['a'], weights['b']
    if self.dropout > 0.0 and not deterministic:
      keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(x.dtype)
    num_in = a.ndim - 1
    down = jnp.tensordot(x, a.astype(x.dtype), num_in, preferred_element_type=jnp.float32)
    delta = jnp.tensordot(down.astype(x.dtype), b.astype(x.dtype), 1,
                          preferred_element_type=jnp.float32)  # [*batch, *out]
    return (y + delta * self.scale).astype(y.dtype)

  def merge(self, params, extra) -> dict:
    """`params` with every target kernel W replaced by W + A B * scale (f32 sum, kernel dtype)."""
    flat = flax.traverse_util.flatten_dict(params)
    for path, value in flax.traverse_util.flatten_dict(extra).items():
      if path[-2:] != (self.key, 'a'):
        continue
      module = path[:-2]
      b = module_hooks.at(extra, module + (self.key, 'b'))
      kernel = flat[module + ('kernel',)]
      update = jnp.tensordot(value, b, 1) * self.scale  # [*in, *out], the kernel's shape.
      flat[module + ('kernel',)] = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat)

  def trains(self, path) -> bool:
    """Whether the base parameter at `path` (inside the encoder) is trained: none is."""
    del path
    return False
