"""The train state and its sharded initialisation.

Shardings come from abstract shapes: `jax.eval_shape(init)` gives the state with
`nn.Partitioned` boxes on parameters (and, through optax's tree maps, on the Adam
moments), `nn.get_partition_spec` + `nn.logical_to_mesh_sharding` turn those into
NamedShardings, and `jax.jit(init, out_shardings=...)` creates every array where it
lives: full parameters never sit on one device.

An objective with frozen variables (distillation's teacher) provides `init_frozen(rng,
batch)` (their boxed shapes and logical axes: sharded by the same rules), `load_frozen()`
(their values, host arrays) and `init_from_frozen(params, frozen)` (the trainable
variables' start, e.g. a student copied from teacher layers). They live in
`TrainState.frozen`: checkpointed with the state, never given to the optimizer.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from encoders.training import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimizer steps taken.
  params: Any  # The objective's trainable variables.
  opt_state: optax.OptState
  rng: jax.Array  # uint32 [2]: base key; step s uses fold_in(rng, s).
  frozen: Any = None  # The objective's variables that are not trained (None: it has none).


def example_batch(batch_shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, jax.Array]:
  """One-row zero arrays of the batch's shapes/dtypes: enough to create parameters."""
  return {name: jnp.zeros((1,) + shape[1:], dtype) for name, (shape, dtype) in batch_shapes.items()}


def has_frozen(objective) -> bool:
  return hasattr(objective, 'init_frozen')


def _init_fn(objective, tx, batch_shapes):
  """init(rng, frozen=None) -> TrainState; without `frozen` values, frozen variables are
  their boxed shapes (for `jax.eval_shape`) and the trainable ones are not derived from them."""
  def init(rng, frozen=None) -> TrainState:
    params_rng, dropout_rng = jax.random.split(rng)
    batch = example_batch(batch_shapes)
    params = objective.init(params_rng, batch)  # Boxed: nn.Partitioned.
    if has_frozen(objective):
      if frozen is None:
        frozen = objective.init_frozen(params_rng, batch)
      else:
        params = objective.init_from_frozen(nn.meta.unbox(params), frozen)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=dropout_rng, frozen=frozen)
  return init


def state_shardings(objective, tx, batch_shapes, mesh: Mesh, rules) -> tuple[Any, Any]:
  """(abstract unboxed state as ShapeDtypeStructs with shardings, NamedSharding tree)."""
  abstract_boxed = jax.eval_shape(_init_fn(objective, tx, batch_shapes), jax.random.PRNGKey(0))
  shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(abstract_boxed), shardings)
  return abstract, shardings


def init_state(objective, tx, batch_shapes, seed: int, shardings) -> TrainState:
  """The initial state, created directly with `shardings` (from `state_shardings`)."""
  init = _init_fn(objective, tx, batch_shapes)
  frozen = None
  if has_frozen(objective):  # Read on every host, placed shard by shard.
    frozen = jax.tree.map(
        lambda value, sharding: jax.make_array_from_callback(
            value.shape, sharding, lambda index: value[index]),
        objective.load_frozen(), shardings.frozen)
  return jax.jit(lambda rng, frozen: nn.meta.unbox(init(rng, frozen)), out_shardings=shardings,
                 donate_argnums=1)(jax.random.PRNGKey(seed), frozen)


def batch_shapes_of(batch: dict[str, np.ndarray], global_batch_size: int):
  """{name: (global shape, dtype)} from one host-local batch."""
  return {name: ((global_batch_size,) + value.shape[1:], value.dtype)
          for name, value in batch.items()}
