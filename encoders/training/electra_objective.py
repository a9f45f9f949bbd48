"""ELECTRA's pretraining objective (Clark et al. 2020): MLM generator + replaced-token detection.

The batch's masked `input_ids` go through the generator (MLM loss at `masked_positions`);
a replacement for every masked position is sampled from the generator's softmax (at
`temperature`, without gradient) and written into the original sequence; the
discriminator then labels every non-padding token original (0) or replaced (1). A
sampled token equal to the original counts as original. The loss is

  MLM + rtd_weight * RTD        (rtd_weight = lambda = 50 in the paper)

both terms averaged over the global batch (predictions, resp. real tokens), as the
released code does. It plugs into `encoders/training/objectives.py`'s interface.

The networks are a pair module with `generator` and `discriminator` methods: ELECTRA's
`ElectraPair`, or another family's `RTDPair` (DeBERTa-v3: encoders/deberta.py, whose
config chooses how the two share word embeddings). `MaskedOrReplaced` is the objective of
a family that pretrains either way, chosen by `config.model.objective`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from encoders import families
from encoders.config import ConfigError
from encoders.electra import ElectraPair
from encoders.training import flops
from encoders.training.objectives import MaskedLanguageModeling, Metrics, mlm_terms

# Validation runs without an rng; it samples replacements with this fixed key, so that
# validation numbers of different steps see the same draws.
EVAL_SAMPLING_SEED = 0


def corrupt(input_ids, masked_positions, masked_ids, masked_weights, sampled_ids):
  """(original ids, discriminator input) [batch, length] from the batch and the samples.

  The original sequence is `input_ids` with `masked_ids` written back; the
  discriminator's input is it with `sampled_ids` [batch, predictions] at the masked
  positions. Unused prediction slots (weight 0) write nothing.
  """
  input_ids = jnp.asarray(input_ids)
  batch, length = input_ids.shape
  rows = jnp.arange(batch)[:, None]  # [batch, 1]
  positions = jnp.where(masked_weights > 0, masked_positions, length)  # Out of range: dropped.
  original = input_ids.at[rows, positions].set(masked_ids, mode='drop')
  corrupted = original.at[rows, positions].set(sampled_ids.astype(input_ids.dtype), mode='drop')
  return original, corrupted


def rtd_terms(logits, replaced, token_weights, denominator) -> tuple[jax.Array, Metrics]:
  """Per-token sigmoid cross-entropy; logits, replaced, token_weights [batch, length]."""
  replaced = replaced.astype(jnp.float32)
  loss_sum = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, replaced) * token_weights)
  predicted = (logits > 0).astype(jnp.float32) * token_weights
  actual = replaced * token_weights
  hits = jnp.sum(predicted * actual)
  count = jnp.sum(token_weights)
  kept = (1.0 - replaced) * token_weights
  return loss_sum / denominator, {
      'rtd_loss': (loss_sum, count),
      'rtd_accuracy': (jnp.sum((predicted == actual) * token_weights), count),
      'rtd_precision': (hits, jnp.sum(predicted)),  # Of the tokens called replaced.
      'rtd_recall': (hits, jnp.sum(actual)),  # Of the replaced tokens.
      'replaced_fraction': (jnp.sum(actual), count),  # Of all real tokens.
      # Mean logit of each class: their gap separates the classes even while no logit is > 0.
      'rtd_logit_replaced': (jnp.sum(logits * actual), jnp.sum(actual)),
      'rtd_logit_original': (jnp.sum(logits * kept), jnp.sum(kept)),
  }


class ReplacedTokenDetection:
  """ELECTRA pretraining: one generator/discriminator pair, both losses in one step.

  `model_config` is `pair_class.config_class` (ElectraConfig for ElectraPair).
  """

  def __init__(self, model_config, rtd_weight: float = 50.0, temperature: float = 1.0,
               pair_class=ElectraPair):
    self.model = pair_class(model_config)
    self.rtd_weight = rtd_weight
    self.temperature = temperature

  @classmethod
  def from_config(cls, config, sentence_head: bool = False,
                  pair_class=ElectraPair) -> 'ReplacedTokenDetection':
    """From a run config (`configs/electra.py`, `configs/deberta.py:objective=rtd`); bad values
    raise naming the field."""
    del sentence_head  # The input format is checked below: ELECTRA has no sentence loss.
    model = config.model
    if model.rtd_weight < 0:
      raise ConfigError(f'config.model.rtd_weight={model.rtd_weight}: must be >= 0.')
    if model.sampling_temperature <= 0:
      raise ConfigError(f'config.model.sampling_temperature={model.sampling_temperature}: '
                        'must be > 0 (1.0 samples from the generator softmax as is).')
    if config.data.input_format not in ('full_sentences', 'doc_sentences'):
      raise ConfigError(f'config.data.input_format={config.data.input_format!r}: ELECTRA has no '
                        "sentence-level loss; use 'doc_sentences' or 'full_sentences'.")
    return cls(pair_class.config_class.from_config(model), model.rtd_weight,
               model.sampling_temperature, pair_class)

  def _inputs(self, batch, input_ids):
    return (input_ids, batch['segment_ids'], batch['position_ids'], batch['token_type_ids'])

  def init(self, rng, batch):
    return self.model.init(rng, *self._inputs(batch, batch['input_ids']),
                           batch['masked_positions'])['params']

  def denominators(self, batch) -> dict[str, jax.Array]:
    return {'mlm': jnp.maximum(jnp.sum(batch['masked_weights']), 1.0),
            'rtd': jnp.maximum(jnp.sum(batch['segment_ids'] > 0).astype(jnp.float32), 1.0)}

  def sample(self, mlm_logits, rng) -> jax.Array:
    """Replacement ids [batch, predictions] from the generator's softmax at `temperature`, without
    gradient (a test's subclass injects given replacements here)."""
    return jax.random.categorical(rng, jax.lax.stop_gradient(mlm_logits) / self.temperature)

  def forward(self, params, batch, rng, deterministic: bool = False) -> dict[str, jax.Array]:
    """Both networks on `batch`: mlm_logits [batch, predictions, vocab], the original and
    corrupted ids and rtd_logits [batch, length] (the discriminator's, on the corrupted ids)."""
    if rng is None:
      rng = jax.random.key(EVAL_SAMPLING_SEED)
    generator_rng, sampling_rng, discriminator_rng = jax.random.split(rng, 3)
    apply = lambda method, input_ids, *extra, dropout_rng: self.model.apply(
        {'params': params}, *self._inputs(batch, input_ids), *extra, method=method,
        deterministic=deterministic, rngs=None if deterministic else {'dropout': dropout_rng})

    mlm_logits = apply('generator', batch['input_ids'], batch['masked_positions'],
                       dropout_rng=generator_rng)  # [batch, predictions, vocab]
    sampled_ids = self.sample(mlm_logits, sampling_rng)  # [batch, predictions]
    original, corrupted = corrupt(batch['input_ids'], batch['masked_positions'],
                                  batch['masked_ids'], batch['masked_weights'], sampled_ids)
    rtd_logits = apply('discriminator', corrupted, dropout_rng=discriminator_rng)  # [batch, length]
    return dict(mlm_logits=mlm_logits, original=original, corrupted=corrupted,
                rtd_logits=rtd_logits)

  def loss(self, params, batch, rng, denominators, deterministic: bool = False, frozen=None):
    del frozen  # No frozen variables.
    outputs = self.forward(params, batch, rng, deterministic)
    mlm_loss, rtd_loss, metrics = self.loss_terms(outputs, batch, denominators)
    return mlm_loss + self.rtd_weight * rtd_loss, metrics

  def loss_terms(self, outputs, batch, denominators) -> tuple[jax.Array, jax.Array, Metrics]:
    """The generator's MLM loss and the discriminator's RTD loss (unweighted) of `forward`'s
    outputs, and the metrics of both."""
    mlm_loss, metrics = mlm_terms(outputs['mlm_logits'], batch['masked_ids'],
                                  batch['masked_weights'], denominators['mlm'])
    rtd_loss, rtd_metrics = rtd_terms(outputs['rtd_logits'],
                                      outputs['corrupted'] != outputs['original'],
                                      (batch['segment_ids'] > 0).astype(jnp.float32),
                                      denominators['rtd'])
    return mlm_loss, rtd_loss, metrics | rtd_metrics

  def flops_per_sequence(self, seq_length: int, num_predictions: int) -> float:
    """Training FLOPs of both networks for one sequence (as `encoders/training/flops.py` counts)."""
    c = self.model.config
    total = 0.0
    for network in (c.generator, c.discriminator):
      total += flops.flops_per_sequence(network, seq_length, 0, sentence_head=False)
    vocab = c.discriminator.vocab_size
    generator_head = c.generator.hidden_size * c.embedding_size + c.embedding_size * vocab
    discriminator_head = c.discriminator.hidden_size * (c.discriminator.hidden_size + 1)
    return total + 6 * (num_predictions * generator_head + seq_length * discriminator_head)


OBJECTIVES = ('mlm', 'rtd')


class MaskedOrReplaced:
  """The objective of a family that pretrains by MLM or by RTD (DeBERTa: v2 and v3), chosen by
  `config.model.objective`: 'mlm' is encoders/training/objectives.py's with the family's
  EncoderForPreTraining, 'rtd' ReplacedTokenDetection over the family's `RTDPair`."""

  @staticmethod
  def from_config(config, sentence_head: bool):
    objective = config.model.get('objective', 'mlm')
    if objective == 'rtd':
      return ReplacedTokenDetection.from_config(config, sentence_head,
                                                families.of_config(config).models.RTDPair)
    if objective == 'mlm':
      return MaskedLanguageModeling.from_config(config, sentence_head)
    raise ConfigError(f'config.model.objective={objective!r}: choose one of {OBJECTIVES}.')


def roc_auc(scores, positive) -> float:
  """ROC AUC of `scores` for the boolean labels `positive` (any shape, flattened): the chance
  that a random positive scores above a random negative, ties counting half (the Mann-Whitney
  U statistic from average ranks). NaN when either class is empty."""
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(positive, bool).ravel()
  num_positive = int(positive.sum())
  num_negative = positive.size - num_positive
  if not num_positive or not num_negative:
    return float('nan')
  order = np.argsort(scores, kind='stable')
  _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
  ranks = np.empty_like(scores)
  ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based; a tie's average rank.
  u = ranks[positive].sum() - num_positive * (num_positive + 1) / 2
  return float(u / (num_positive * num_negative))


def gradients_by_loss(objective):
  """jit of (params, batch) -> (forward's outputs, gradient of the MLM loss, gradient of
  rtd_weight x RTD loss): one forward pass, whose two losses are pulled back together."""

  def losses(params, batch):
    outputs = objective.forward(params, batch, None, True)
    mlm_loss, rtd_loss, _ = objective.loss_terms(outputs, batch, objective.denominators(batch))
    return jnp.stack([mlm_loss, objective.rtd_weight * rtd_loss]), outputs

  def split(params, batch):
    jacobian, outputs = jax.jacrev(losses, has_aux=True)(params, batch)  # Leaves [2, ...].
    return (outputs, jax.tree.map(lambda g: g[0], jacobian),
            jax.tree.map(lambda g: g[1], jacobian))

  return jax.jit(split)
