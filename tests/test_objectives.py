"""MLM and NSP/SOP losses vs numpy; the objective wires the model's outputs to them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from encoders.training import objectives, synthetic
from tests import training_util


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_mlm_terms_match_numpy_weighted_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
  labels = rng.integers(0, 11, (2, 5))
  weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.float32)
  labels[0, 0] = logits[0, 0].argmax()  # At least one correct prediction.
  loss, sums = objectives.mlm_terms(jnp.asarray(logits), jnp.asarray(labels),
                                    jnp.asarray(weights), denominator=10.0)
  nll = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), labels[..., None], -1)[..., 0]
  assert float(loss) == pytest.approx((nll * weights).sum() / 10.0, rel=1e-5)
  assert float(sums['mlm_loss'][0]) == pytest.approx((nll * weights).sum(), rel=1e-5)
  assert float(sums['mlm_loss'][1]) == 7.0
  correct = ((logits.argmax(-1) == labels) * weights).sum()
  assert correct >= 1 and float(sums['mlm_accuracy'][0]) == correct


def test_sentence_terms_match_numpy():
  logits = np.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]], np.float32)
  labels = np.array([0, 1, 0])
  loss, sums = objectives.sentence_terms(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(3), 3.0)
  nll = -_log_softmax(logits.astype(np.float64))[np.arange(3), labels]
  assert float(loss) == pytest.approx(nll.mean(), rel=1e-6)
  assert float(sums['sentence_accuracy'][0]) == 1.0  # Only row 0 (row 1 ties -> argmax 0).
  # A padding row (weight 0) adds nothing: evaluation pads a host's missing batches with them.
  loss, sums = objectives.sentence_terms(jnp.asarray(logits), jnp.asarray(labels),
                                         jnp.array([1.0, 1.0, 0.0]), 2.0)
  assert float(loss) == pytest.approx(nll[:2].mean(), rel=1e-6)
  assert float(sums['sentence_loss'][1]) == 2.0 and float(sums['sentence_accuracy'][0]) == 1.0


def test_real_rows_are_those_with_a_cls_segment():
  segment_ids = jnp.array([[1, 1, 2, 0], [0, 0, 0, 0], [1, 2, 3, 3]])
  np.testing.assert_array_equal(objectives.real_rows(segment_ids), [1.0, 0.0, 1.0])


@pytest.mark.parametrize('pairs', [False, True])
def test_objective_loss_is_mlm_plus_sentence(pairs):
  config = training_util.tiny_config()
  objective = objectives.make_objective(config, sentence_head=pairs)
  batch = jax.tree.map(jnp.asarray, next(synthetic.SyntheticIterator(config, 'train', pairs=pairs)))
  params = objective.init(jax.random.PRNGKey(0), batch)
  params = jax.tree.map(lambda x: x.value if hasattr(x, 'value') else x, params,
                        is_leaf=lambda x: hasattr(x, 'value'))
  loss, sums = objective.loss(params, batch, None, objective.denominators(batch),
                              deterministic=True)
  outputs = objective.apply(params, batch)
  mlm, _ = objectives.mlm_terms(outputs['mlm_logits'], batch['masked_ids'],
                                batch['masked_weights'], jnp.sum(batch['masked_weights']))
  expected = float(mlm)
  if pairs:
    sentence, _ = objectives.sentence_terms(outputs['sentence_logits'], batch['nsp_labels'],
                                            jnp.ones(8), 8.0)
    expected += float(sentence)
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert ('sentence_accuracy' in sums) == pairs
  chance = np.log(128) + (np.log(2) if pairs else 0.0)  # Uniform over the vocabulary / 2 labels.
  assert float(loss) == pytest.approx(chance, rel=0.1)
