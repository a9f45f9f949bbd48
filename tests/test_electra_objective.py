"""ELECTRA objective: corruption, replaced-token labels, loss weighting and stop-gradient."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from encoders.config import ConfigError
from encoders.configs import electra as electra_configs
from encoders.electra import ElectraConfig
from encoders.training import electra_objective, synthetic
from encoders.training.electra_objective import ReplacedTokenDetection, corrupt, roc_auc, rtd_terms
from tests import training_util

VOCAB = 40
FORCED = 7  # The token the rigged generator always samples.
CONFIG = ElectraConfig.from_config(dict(
    vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
    max_position_embeddings=16, embedding_size=16, generator_size_fraction=0.5))


def batch_with_forced_token():
  """A contract batch (encoders/training/synthetic.py) where the first real masked slot of row 0
  holds FORCED."""
  batch = synthetic.make_batch(np.random.default_rng(0), 2, 12, 4, VOCAB, pairs=False)
  batch['masked_ids'][0, 0] = FORCED
  others = (batch['masked_ids'] == FORCED) & (batch['masked_weights'] > 0)
  batch['masked_ids'][others] = FORCED + 1
  batch['masked_ids'][0, 0] = FORCED
  return batch


def test_corrupt_writes_only_used_slots():
  input_ids = np.array([[2, 4, 4, 9, 0], [2, 4, 8, 9, 3]], np.int32)  # 4 = [MASK]
  positions = np.array([[1, 2, 0], [1, 0, 0]], np.int32)
  masked_ids = np.array([[11, 12, 0], [13, 0, 0]], np.int32)
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  sampled = np.array([[11, 20, 21], [22, 23, 24]], np.int32)
  original, corrupted = corrupt(input_ids, positions, masked_ids, weights, sampled)
  np.testing.assert_array_equal(original, [[2, 11, 12, 9, 0], [2, 13, 8, 9, 3]])
  np.testing.assert_array_equal(corrupted, [[2, 11, 20, 9, 0], [2, 22, 8, 9, 3]])


def test_rtd_terms_match_numpy():
  logits = np.array([[2.0, -1.0, 0.5, -3.0], [-0.5, 1.5, 3.0, 0.2]], np.float32)
  replaced = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], bool)
  weights = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
  loss, metrics = rtd_terms(logits, replaced, weights, 7.0)
  probability = 1 / (1 + np.exp(-logits))
  bce = -(replaced * np.log(probability) + (1 - replaced) * np.log(1 - probability))
  np.testing.assert_allclose(loss, np.sum(bce * weights) / 7.0, rtol=1e-6)
  # Real tokens: predicted replaced at (0,0), (0,2), (1,1), (1,2); replaced (0,0), (0,3), (1,1), (1,2).
  expected = {'rtd_accuracy': (5, 7), 'rtd_precision': (3, 4), 'rtd_recall': (3, 4),
              'replaced_fraction': (4, 7),
              'rtd_logit_replaced': (2.0 - 3.0 + 1.5 + 3.0, 4),
              'rtd_logit_original': (-1.0 + 0.5 - 0.5, 3)}
  for name, value in expected.items():
    np.testing.assert_allclose([float(x) for x in metrics[name]], value)


def test_roc_auc_counts_ordered_pairs():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 6, 300).astype(np.float32)  # Many ties.
  positive = rng.random(300) < scores / 8  # Higher scores more often positive.
  # First principles: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 if equal.
  difference = scores[positive][:, None] - scores[~positive][None, :]
  expected = np.mean((difference > 0) + 0.5 * (difference == 0))
  assert roc_auc(scores, positive) == pytest.approx(expected, abs=1e-12)
  assert 0.6 < expected < 0.9
  assert roc_auc([3.0, 1.0, 2.0], [True, False, False]) == 1.0
  assert roc_auc([1.0, 1.0], [True, False]) == 0.5
  assert np.isnan(roc_auc([1.0, 2.0], [True, True]))


def rigged_params(batch):
  """Random parameters (numpy, no compile) whose generator always samples FORCED."""
  shapes = nn.unbox(jax.eval_shape(ReplacedTokenDetection(CONFIG).init, jax.random.key(0), batch))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), shapes)
  params['generator_predictions']['bias'][FORCED] = 1e4
  return params


def test_labels_loss_and_stop_gradient():
  batch = batch_with_forced_token()
  params = rigged_params(batch)
  # The discriminator's input expected from first principles: FORCED at every used slot.
  expected = np.array(batch['input_ids'])
  rows, slots = np.nonzero(batch['masked_weights'])
  expected[rows, batch['masked_positions'][rows, slots]] = FORCED

  @jax.jit
  def run(params, batch, expected, rtd_weight):  # One compile for both weights.
    objective = ReplacedTokenDetection(CONFIG, rtd_weight=rtd_weight)
    (loss, metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        params, batch, jax.random.key(1), objective.denominators(batch), deterministic=True)
    logits = objective.model.apply({'params': params}, expected, batch['segment_ids'],
                                   batch['position_ids'], batch['token_type_ids'],
                                   method='discriminator')
    return loss, metrics, grads, logits

  loss, metrics, grads, logits = run(params, batch, expected, 50.0)
  real = batch['segment_ids'] > 0
  replaced = np.zeros_like(real)
  replaced[rows, batch['masked_positions'][rows, slots]] = batch['masked_ids'][rows, slots] != FORCED
  # Sampling the original token counts as original: slot (0, 0) is not replaced.
  assert replaced.sum() == (batch['masked_weights'] > 0).sum() - 1
  np.testing.assert_allclose([float(x) for x in metrics['replaced_fraction']],
                             [replaced.sum(), real.sum()])
  bce = np.logaddexp(0, logits) - replaced * logits  # -log sigmoid for 1, -log(1 - sigmoid) for 0.
  rtd_loss = np.sum(bce * real) / real.sum()
  np.testing.assert_allclose(metrics['rtd_loss'][0] / metrics['rtd_loss'][1], rtd_loss, rtol=1e-5)
  mlm_loss = metrics['mlm_loss'][0] / metrics['mlm_loss'][1]
  np.testing.assert_allclose(loss, mlm_loss + 50.0 * rtd_loss, rtol=1e-5)

  # With lambda = 0 only the MLM loss is left: the discriminator gets no gradient, and the
  # generator's own weights get the same as with lambda = 50 (no gradient through sampling),
  # while the shared embeddings get the discriminator's gradient too.
  loss_0, _, grads_0, _ = run(params, batch, expected, 0.0)
  np.testing.assert_allclose(loss_0, mlm_loss, rtol=1e-6)
  for name in ('generator_encoder', 'generator_predictions'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), grads[name], grads_0[name])
  assert float(optax.tree.norm(grads_0['discriminator_encoder'])) == 0
  assert float(optax.tree.norm(grads['discriminator_encoder'])) > 0
  assert float(optax.tree.norm(grads_0['embeddings'])) > 0
  embedding_change = jax.tree.map(jnp.subtract, grads['embeddings'], grads_0['embeddings'])
  assert float(optax.tree.norm(embedding_change)) > 0


def test_embeddings_learn_only_from_mlm_when_asked():
  """embedding_gradients='mlm': the shared embeddings get exactly the MLM loss's gradient (that of
  lambda = 0), the discriminator still its RTD gradient."""
  batch = batch_with_forced_token()
  params = rigged_params(batch)
  config = dataclasses.replace(CONFIG, embedding_gradients='mlm')

  def grads(rtd_weight):
    objective = ReplacedTokenDetection(config, rtd_weight=rtd_weight)
    return jax.grad(lambda p: objective.loss(p, batch, jax.random.key(1),
                                             objective.denominators(batch), deterministic=True)[0])(params)

  with_rtd, mlm_only = grads(50.0), grads(0.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
               with_rtd['embeddings'], mlm_only['embeddings'])
  assert float(optax.tree.norm(mlm_only['embeddings'])) > 0
  assert float(optax.tree.norm(with_rtd['discriminator_encoder'])) > 0


def test_gdes_shared_block_learns_only_from_mlm_and_the_delta_only_from_rtd():
  """embedding_gradients='gdes' over 4 Adam steps with lambda = 50 and lambda = 0 from one init:
  the shared embeddings and the whole generator end bit-identical (RTD does not reach them);
  the zero-initialised delta moves with RTD only."""
  config = dataclasses.replace(CONFIG, embedding_gradients='gdes')
  batches = [synthetic.make_batch(np.random.default_rng(s), 2, 12, 4, VOCAB, pairs=False)
             for s in range(4)]
  params = nn.unbox(ReplacedTokenDetection(config).init(jax.random.key(0), batches[0]))
  np.testing.assert_array_equal(params['discriminator_word_delta']['embedding'], 0.0)
  final = training_util.adam_with_and_without_rtd(
      lambda rtd_weight: ReplacedTokenDetection(config, rtd_weight=rtd_weight), params, batches)
  for name in ('embeddings', 'generator_encoder', 'generator_predictions'):
    jax.tree.map(np.testing.assert_array_equal, final[50.0][name], final[0.0][name])
  assert not np.array_equal(final[0.0]['embeddings']['word_embeddings']['embedding'],
                            params['embeddings']['word_embeddings']['embedding'])  # MLM trains it.
  assert np.abs(final[50.0]['discriminator_word_delta']['embedding']).max() > 1e-3
  np.testing.assert_array_equal(final[0.0]['discriminator_word_delta']['embedding'], 0.0)


def test_from_config_validates():
  config = electra_configs.get_config('tiny')
  objective = ReplacedTokenDetection.from_config(config)
  assert (objective.rtd_weight, objective.temperature) == (50.0, 1.0)
  config.model.sampling_temperature = 0.0
  with pytest.raises(ConfigError, match='config.model.sampling_temperature'):
    ReplacedTokenDetection.from_config(config)
  config.model.sampling_temperature = 1.0
  config.model.embedding_gradients = 'rtd'
  with pytest.raises(ConfigError, match='embedding_gradients'):
    ReplacedTokenDetection.from_config(config)
  config.model.embedding_gradients = 'mlm'
  assert ReplacedTokenDetection.from_config(config).model.config.embedding_gradients == 'mlm'
  config.data.input_format = 'segment_pair_nsp'
  with pytest.raises(ConfigError, match='config.data.input_format'):
    ReplacedTokenDetection.from_config(config)


# Clark et al. 2020, Table 1: train FLOPs of ELECTRA-Small (1M steps x 128 x 128 tokens) and
# -Base (766k x 256 x 512). The paper counts some operations differently: agree within 25%.
@pytest.mark.parametrize('size, steps, batch, seq_length, paper_flops', [
    ('small', 1e6, 128, 128, 1.4e18), ('base', 766e3, 256, 512, 6.4e19)])
def test_flops_agree_with_the_paper(size, steps, batch, seq_length, paper_flops):
  objective = ReplacedTokenDetection.from_config(electra_configs.get_config(size))
  num_predictions = int((0.15 + 0.005) * seq_length)  # The released code's max_predictions.
  total = objective.flops_per_sequence(seq_length, num_predictions) * batch * steps
  assert 0.75 < total / paper_flops < 1.25


def test_diagnostics_split_the_gradient_by_loss_in_one_pass():
  """gradients_by_loss (experiments.rtd_diagnostics) pulls both losses back from one forward pass: its MLM and
  weighted-RTD gradients equal jax.grad of the loss with rtd_weight 0, and with rtd_weight w
  minus that (two independent passes, as it computed them before)."""
  objective = ReplacedTokenDetection(CONFIG, rtd_weight=50.0)
  batch = batch_with_forced_token()
  params = objective.init(jax.random.key(0), batch)
  outputs, mlm, weighted_rtd = electra_objective.gradients_by_loss(objective)(params, batch)

  def grad(weight):
    weighted = ReplacedTokenDetection(CONFIG, rtd_weight=weight)
    return jax.grad(lambda p: weighted.loss(p, batch, None, weighted.denominators(batch),
                                            deterministic=True)[0])(params)

  mlm_only, total = grad(0.0), grad(50.0)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, mlm, mlm_only)
  jax.tree.map(close, weighted_rtd, jax.tree.map(jnp.subtract, total, mlm_only))
  assert float(optax.tree.norm(weighted_rtd['discriminator_encoder'])) > 0
  close(outputs['rtd_logits'], objective.forward(params, batch, None, True)['rtd_logits'])
