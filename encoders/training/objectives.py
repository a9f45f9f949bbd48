"""Pretraining objectives: what the train loop differentiates, behind one small interface.

An objective owns its networks and its loss:

  init(rng, batch)                    -> the trainable variables (boxed with logical axes)
  denominators(batch)                 -> {term: normaliser over the whole global batch}
  loss(params, batch, rng, denominators, deterministic, frozen)
                                      -> (scalar loss, {metric: (numerator, denominator)})

`denominators` is computed once per step over the global batch, so a step split into
micro-batches (gradient accumulation) sums to exactly the same loss and gradient as
one big batch. Metrics are (numerator, denominator) pairs that the loop sums over
micro-batches and eval batches before dividing. ELECTRA fits as one objective whose
`init` returns {'generator': ..., 'discriminator': ...} and whose `loss` adds both
terms; distillation (encoders/training/distillation.py) as one whose `loss` also runs a teacher,
its `frozen` variables (encoders/training/state.py says how an objective declares them).
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

from encoders import families
from encoders.bert import EncoderForPreTraining
from encoders.config import EncoderConfig
from encoders.training import flops

Metrics = dict[str, tuple[jax.Array, jax.Array]]


def mlm_terms(logits, masked_ids, masked_weights, denominator) -> tuple[jax.Array, Metrics]:
  """Weighted sparse cross-entropy at the masked positions.

  logits [batch, predictions, vocab] f32; masked_ids [batch, predictions];
  masked_weights [batch, predictions] (0 in unused slots). Returns the loss summed over
  predictions divided by `denominator` (the global count of real predictions).
  """
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, masked_ids)
  loss_sum = jnp.sum(cross_entropy * masked_weights)
  correct = jnp.sum((jnp.argmax(logits, -1) == masked_ids) * masked_weights)
  count = jnp.sum(masked_weights)
  return loss_sum / denominator, {'mlm_loss': (loss_sum, count), 'mlm_accuracy': (correct, count)}


def real_rows(segment_ids) -> jax.Array:
  """1.0 for rows that hold an example ([CLS] in segment >= 1), 0.0 for padding rows (all 0):
  [batch, length] -> [batch]. Evaluation pads a host's missing batches with such rows."""
  return (segment_ids[:, 0] > 0).astype(jnp.float32)


def sentence_terms(logits, labels, row_weights, denominator) -> tuple[jax.Array, Metrics]:
  """NSP/SOP cross-entropy over the real rows: logits [batch, 2], labels and row_weights [batch]."""
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  count = jnp.sum(row_weights)
  correct = jnp.sum((jnp.argmax(logits, -1) == labels) * row_weights)
  loss_sum = jnp.sum(cross_entropy * row_weights)
  return loss_sum / denominator, {'sentence_loss': (loss_sum, count),
                                  'sentence_accuracy': (correct, count)}


class MaskedLanguageModeling:
  """BERT pretraining: sparse MLM, plus NSP/SOP when the batches carry `nsp_labels`.

  `model_class` is a family's EncoderForPreTraining (BERT's, ALBERT's, ...).
  """

  def __init__(self, model_config: EncoderConfig, sentence_head: bool,
               sentence_loss_weight: float = 1.0, model_class=EncoderForPreTraining):
    self.model = model_class(model_config, sentence_head=sentence_head)
    self.sentence_head = sentence_head
    self.sentence_loss_weight = sentence_loss_weight

  @classmethod
  def from_config(cls, config, sentence_head: bool) -> 'MaskedLanguageModeling':
    """The run config's family's pretraining model under this loss."""
    family = families.of_config(config)
    return cls(family.model_config(config.model), sentence_head,
               config.train.sentence_loss_weight, family.models.EncoderForPreTraining)

  def apply(self, params, batch, rng=None, deterministic: bool = True) -> dict[str, jax.Array]:
    return self.model.apply(
        {'params': params}, batch['input_ids'], batch['segment_ids'], batch['position_ids'],
        batch['token_type_ids'], batch['masked_positions'], deterministic=deterministic,
        rngs=None if deterministic else {'dropout': rng})

  def init(self, rng, batch) -> Any:
    return self.model.init(
        rng, batch['input_ids'], batch['segment_ids'], batch['position_ids'],
        batch['token_type_ids'], batch['masked_positions'])['params']

  def denominators(self, batch) -> dict[str, jax.Array]:
    result = {'mlm': jnp.maximum(jnp.sum(batch['masked_weights']), 1.0)}
    if self.sentence_head:
      result['sentence'] = jnp.maximum(jnp.sum(real_rows(batch['segment_ids'])), 1.0)
    return result

  def loss(self, params, batch, rng, denominators, deterministic: bool = False, frozen=None):
    del frozen  # No frozen variables.
    outputs = self.apply(params, batch, rng, deterministic)
    loss, metrics = mlm_terms(outputs['mlm_logits'], batch['masked_ids'],
                              batch['masked_weights'], denominators['mlm'])
    if self.sentence_head:
      sentence_loss, sentence_metrics = sentence_terms(
          outputs['sentence_logits'], batch['nsp_labels'], real_rows(batch['segment_ids']),
          denominators['sentence'])
      loss = loss + self.sentence_loss_weight * sentence_loss
      metrics.update(sentence_metrics)
    return loss, metrics

  def flops_per_sequence(self, seq_length: int, num_predictions: int) -> float:
    """Training FLOPs for one sequence (encoders/training/flops.py)."""
    return flops.flops_per_sequence(self.model.config, seq_length, num_predictions,
                                    self.sentence_head)


def make_objective(config, sentence_head: bool):
  """The pretraining objective of `config.model.family` (encoders/families.py), or
  distillation into it when `config.distill.teacher` is set (encoders/training/distillation.py)."""
  if config.get('distill') and config.distill.get('teacher'):
    # pylint: disable-next=g-import-not-at-top (distillation imports this module)
    from encoders.training import distillation
    return distillation.Distillation.from_config(config, sentence_head)
  return families.of_config(config).make_objective(config, sentence_head)
