"""The optimizer: AdamW or LAMB with warm-up + decay, clipping, and no decay on biases / LayerNorm."""
import jax
import jax.numpy as jnp
import optax

from encoders.config import ConfigError

NO_DECAY_NAMES = ('bias', 'scale')  # Dense/attention biases, the MLM bias, LayerNorm scale+bias.


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then linear / cosine decay to the end fraction."""
  peak = opt_config.learning_rate
  end = peak * opt_config.end_learning_rate_fraction
  warmup = opt_config.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  if opt_config.decay == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif opt_config.decay == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt_config.end_learning_rate_fraction)
  elif opt_config.decay == 'constant':
    decay = optax.constant_schedule(peak)
  else:
    raise ConfigError(f'config.optimizer.decay={opt_config.decay!r}: choose linear, cosine or constant.')
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for parameters that get weight decay: all but biases and LayerNorm parameters."""
  def decays(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm, as one multiply by min(1, max_norm / norm).

  optax divides (`where(norm < max_norm, g, g / norm * max_norm)`); XLA does not copy a
  divide into each of the Adam fusions that read the clipped gradient, so it writes the
  clipped gradients out: one more pass over memory per step (seen on XLA:CPU). The state
  is optax's (EmptyState), so checkpoints are unchanged.
  """
  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def lamb(learning_rate, b1, b2, eps, weight_decay, mask) -> optax.GradientTransformation:
  """optax.lamb with no trust ratio where `mask` is False: those parameters take AdamW steps.

  BERT's reference LAMB (and NVIDIA's) leaves out of layer adaptation the parameters it
  leaves out of weight decay (`exclude_from_layer_adaptation` defaults to
  `exclude_from_weight_decay`: LayerNorm and biases); optax.lamb scales them all.
  """
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      _masked_stateless(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def _masked_stateless(inner: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """optax.masked(inner, mask) for a stateless `inner`, keeping inner's own (empty) state.

  optax.masked would wrap it in a MaskedState; keeping EmptyState keeps optax.lamb's state
  tree, so checkpoints written with optax.lamb still restore.
  """
  masked = optax.masked(inner, mask)

  def update(updates, state, params=None):
    updates, _ = masked.update(updates, masked.init(params), params)
    return updates, state

  return optax.GradientTransformation(inner.init, update)


def make_optimizer(opt_config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, learning-rate schedule) from `config.optimizer`."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  kwargs = dict(learning_rate=schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                weight_decay=opt_config.weight_decay, mask=decay_mask)
  if opt_config.name == 'adamw':
    tx = optax.adamw(**kwargs)
  elif opt_config.name == 'lamb':
    tx = lamb(**kwargs)
  else:
    raise ConfigError(f'config.optimizer.name={opt_config.name!r}: choose adamw or lamb.')
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx, schedule
