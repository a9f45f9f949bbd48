"""The train state and its sharded initialisation.

Shardings come from abstract shapes: `jax.eval_shape(init)` gives the state with
`nn.Partitioned` boxes on parameters (and, through optax's tree maps, on the Adam
moments), `nn.get_partition_spec` + `nn.logical_to_mesh_sharding` turn those into
NamedShardings, and `jax.jit(init, out_shardings=...)` creates every array where it
lives: full parameters never sit on one device.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from training import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimizer steps taken.
  params: Any  # The objective's trainable variables.
  opt_state: optax.OptState
  rng: jax.Array  # uint32 [2]: base key; step s uses fold_in(rng, s).


def example_batch(batch_shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, jax.Array]:
  """One-row zero arrays of the batch's shapes/dtypes: enough to create parameters."""
  return {name: jnp.zeros((1,) + shape[1:], dtype) for name, (shape, dtype) in batch_shapes.items()}


def _init_fn(objective, tx, batch_shapes):
  def init(rng) -> TrainState:
    params_rng, dropout_rng = jax.random.split(rng)
    params = objective.init(params_rng, example_batch(batch_shapes))  # Boxed: nn.Partitioned.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=dropout_rng)
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
  return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(
      jax.random.PRNGKey(seed))


def batch_shapes_of(batch: dict[str, np.ndarray], global_batch_size: int):
  """{name: (global shape, dtype)} from one host-local batch."""
  return {name: ((global_batch_size,) + value.shape[1:], value.dtype)
          for name, value in batch.items()}
