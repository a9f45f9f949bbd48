"""Optimizer vs numpy references of AdamW / LAMB (Loshchilov & Hutter; You et al.) and the schedule."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from encoders.bert import EncoderForPreTraining
from encoders.config import EncoderConfig
from encoders.training import optimizer


def _opt_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      name='adamw', learning_rate=0.1, warmup_steps=4, decay='linear',
      end_learning_rate_fraction=0.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
      grad_clip_norm=1.0))
  config.update(overrides)
  return config


@pytest.mark.parametrize('decay', ['linear', 'cosine'])
def test_schedule_warms_up_then_decays(decay):
  schedule = optimizer.learning_rate_schedule(
      _opt_config(decay=decay, end_learning_rate_fraction=0.1), num_steps=14)
  peak, end, warmup, total = 0.1, 0.01, 4, 14
  for step in range(total + 1):
    if step < warmup:
      expected = peak * step / warmup
    else:
      progress = (step - warmup) / (total - warmup)
      expected = (peak + (end - peak) * progress if decay == 'linear' else
                  end + (peak - end) * 0.5 * (1 + np.cos(np.pi * progress)))
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-8), step


def test_no_weight_decay_on_biases_and_layer_norm():
  config = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_position_embeddings=16)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = EncoderForPreTraining(config, sentence_head=True).init(jax.random.PRNGKey(0), ids)
  mask = optimizer.decay_mask(params['params'])
  flat = {'/'.join(k.key for k in path if isinstance(k, jax.tree_util.DictKey)): v for path, v in
          jax.tree_util.tree_flatten_with_path(mask)[0]}
  for name, decays in flat.items():
    last = name.split('/')[-1]
    assert decays == (last in ('kernel', 'embedding')), name
  assert sum(flat.values()) >= 10


def _numpy_reference(params, grads_per_step, opt, schedule, mask, lamb):
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  p = {k: x.astype(np.float64) for k, x in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    scale = min(1.0, opt.grad_clip_norm / norm)
    lr = float(schedule(t - 1))
    for k in p:
      g = grads[k] * scale
      m[k] = opt.b1 * m[k] + (1 - opt.b1) * g
      v[k] = opt.b2 * v[k] + (1 - opt.b2) * g * g
      u = (m[k] / (1 - opt.b1 ** t)) / (np.sqrt(v[k] / (1 - opt.b2 ** t)) + opt.eps)
      if mask[k]:
        u = u + opt.weight_decay * p[k]
      if lamb and mask[k]:  # BERT's exclude_from_layer_adaptation: biases, LayerNorm.
        p_norm, u_norm = np.linalg.norm(p[k]), np.linalg.norm(u)
        u = u * (p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0)
      p[k] = p[k] - lr * u
  return p


@pytest.mark.parametrize('name', ['adamw', 'lamb'])
def test_matches_numpy_reference(name):
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
            'bias': rng.normal(size=(4,)).astype(np.float32),
            'scale': np.ones((4,), np.float32)}
  grads_per_step = [{k: rng.normal(size=x.shape).astype(np.float32) * 3 for k, x in params.items()}
                    for _ in range(5)]
  opt = _opt_config(name=name)
  tx, schedule = optimizer.make_optimizer(opt, num_steps=10)
  state, current = tx.init(params), jax.tree.map(jnp.asarray, params)
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, current)
    current = jax.tree.map(lambda a, b: a + b, current, updates)
  expected = _numpy_reference(params, grads_per_step, opt, schedule,
                              {'kernel': True, 'bias': False, 'scale': False}, name == 'lamb')
  for k in params:
    np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize('kind', ['random', 'zero', 'one_infinite'])
@pytest.mark.parametrize('max_norm', [0.5, 100.0])  # Clipping and not.
def test_clip_by_global_norm_matches_optax(max_norm, kind):
  rng = np.random.default_rng(0)
  grads = {'w': rng.normal(size=(4, 3)), 'b': rng.normal(size=(3,))}
  if kind == 'zero':
    grads = {name: np.zeros_like(g) for name, g in grads.items()}
  if kind == 'one_infinite':
    grads['w'][0, 0] = np.inf
  grads = {name: jnp.asarray(g, jnp.float32) for name, g in grads.items()}
  ours, _ = optimizer.clip_by_global_norm(max_norm).update(grads, None)
  reference_tx = optax.clip_by_global_norm(max_norm)
  reference, _ = reference_tx.update(grads, reference_tx.init(grads))
  for name in grads:
    np.testing.assert_allclose(ours[name], reference[name], rtol=1e-6)  # NaN where optax's is.
  assert optimizer.clip_by_global_norm(max_norm).init(grads) == reference_tx.init(grads)


def test_lamb_state_has_the_tree_of_optax_lamb():
  """Excluding biases / LayerNorm from the trust ratio adds no state: LAMB checkpoints written
  with optax.lamb (before the exclusion) restore into this optimizer's state."""
  params = {'dense': {'kernel': np.ones((3, 4), np.float32), 'bias': np.ones((4,), np.float32)},
            'LayerNorm': {'scale': np.ones((4,), np.float32)}}
  opt = _opt_config(name='lamb')
  tx, schedule = optimizer.make_optimizer(opt, num_steps=10)
  reference = optax.chain(optimizer.clip_by_global_norm(opt.grad_clip_norm), optax.lamb(
      schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
      mask=optimizer.decay_mask))
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(reference.init(params))
