"""The BERT family: BERT and RoBERTa (a config of the same modules), with their heads.

`Encoder` maps token ids to hidden states; the task models wrap it:
`EncoderForPreTraining` (MLM, optionally NSP/SOP), `EncoderForSequenceClassification`,
`EncoderForTokenClassification` and `EncoderForQuestionAnswering`. All take the
batch contract's arrays; `segment_ids` (1.. per packed example, 0 at padding) is
what keeps packed examples and padding apart in attention.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoders.config import EncoderConfig
from encoders.heads import (POOLINGS, ClassifierHead, MaskedLMHead, Pooler, gather_positions,
                            pool)
from encoders.layers import Dense, Embeddings, TransformerStack, attention_mask


def default_inputs(input_ids, segment_ids=None, position_ids=None, token_type_ids=None):
  """Fills the optional inputs: one segment over the whole row, positions 0..L-1, type 0."""
  if segment_ids is None:
    segment_ids = jnp.ones_like(input_ids)
  if position_ids is None:
    position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  return segment_ids, position_ids, token_type_ids


def embeddings_project(config: EncoderConfig) -> Dense | None:
  """ELECTRA's `embeddings_project`: embedding_size -> hidden_size (None when they are equal)."""
  if not config.projects_embeddings:
    return None
  return Dense(config, config.hidden_size, ('embed', 'embed_out'), name='embeddings_project')


def project(projection: Dense | None, embedded: jax.Array) -> jax.Array:
  """[batch, length, embedding_size] -> [batch, length, hidden] (as is without a projection)."""
  if projection is None:
    return embedded
  return nn.with_logical_constraint(projection(embedded), ('batch', 'length', 'embed'))


class Encoder(nn.Module):
  """Embeddings [+ embeddings_project] + post-LN transformer stack (+ BERT's pooler when `add_pooler`).

  The projection exists only when `config.embedding_size` differs from `hidden_size`
  (an ELECTRA-small discriminator fine-tuned as a BERT encoder).
  """
  config: EncoderConfig
  add_pooler: bool = False

  def setup(self):
    self.embeddings = Embeddings(self.config.embedding)
    self.embeddings_project = embeddings_project(self.config)
    self.layers = TransformerStack(self.config)
    if self.add_pooler:
      self.pooler = Pooler(self.config)

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """input_ids [batch, length] -> (hidden [batch, length, hidden], pooled [batch, hidden] | None)."""
    segment_ids, position_ids, token_type_ids = default_inputs(
        input_ids, segment_ids, position_ids, token_type_ids)
    x = self.embeddings(input_ids, position_ids, token_type_ids, deterministic)
    x = self.layers(project(self.embeddings_project, x), attention_mask(segment_ids), deterministic)
    return x, (self.pooler(x) if self.add_pooler else None)

  def decode(self, x):
    """The word-embedding decoder that MLM heads tie to: [..., hidden] -> [..., vocab]."""
    return self.embeddings.attend(x)


class EncoderForPreTraining(nn.Module):
  """MLM head tied to the word embeddings, plus an NSP/SOP head when `sentence_head`.

  With `masked_positions` [batch, predictions], the MLM head runs only there (sparse
  prediction: the vocabulary projection is most of a small model's FLOPs); without
  it, at every position. 'hidden' is the last layer's states at every position (the
  distillation loss reads it; under jit an unused output costs nothing).
  """
  config: EncoderConfig
  sentence_head: bool = False
  encoder_class = Encoder  # Class attribute, not a field: a family swaps in its own encoder.

  def setup(self):
    self.encoder = self.encoder_class(self.config, add_pooler=self.sentence_head)
    self.mlm_head = MaskedLMHead(self.config.embedding)  # Ends at the tied embeddings' width.
    if self.sentence_head:
      self.sentence_order_head = ClassifierHead(self.config, 2, dropout_rate=0.0)

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None,
               masked_positions=None, *, deterministic: bool = True) -> dict[str, jax.Array]:
    hidden, pooled = self.encoder(input_ids, segment_ids, position_ids, token_type_ids,
                                  deterministic=deterministic)  # [batch, length, hidden]
    predicted = hidden if masked_positions is None else gather_positions(hidden, masked_positions)
    outputs = {'mlm_logits': self.mlm_head(predicted, self.encoder.decode), 'hidden': hidden}
    if self.sentence_head:
      outputs['sentence_logits'] = self.sentence_order_head(pooled)  # [batch, 2]
    return outputs


class EncoderForSequenceClassification(nn.Module):
  """One label per sequence from the pooled encoder output ('cls' uses BERT's pooler)."""
  config: EncoderConfig
  num_labels: int
  pooling: str = 'cls'
  encoder_class = Encoder

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f'pooling={self.pooling!r}: choose one of {POOLINGS}.')
    self.encoder = self.encoder_class(self.config, add_pooler=self.pooling == 'cls')
    self.classifier = ClassifierHead(self.config, self.num_labels)

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """-> logits [batch, num_labels]."""
    hidden, pooled = self.encoder(input_ids, segment_ids, position_ids, token_type_ids,
                                  deterministic=deterministic)
    if self.pooling != 'cls':
      segment_ids = jnp.ones_like(input_ids) if segment_ids is None else segment_ids
      pooled = pool(hidden, segment_ids > 0, self.pooling)
    return self.classifier(pooled, deterministic)


class EncoderForTokenClassification(nn.Module):
  """One label per token (e.g. NER)."""
  config: EncoderConfig
  num_labels: int
  encoder_class = Encoder

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """-> logits [batch, length, num_labels]."""
    hidden, _ = self.encoder_class(self.config, name='encoder')(
        input_ids, segment_ids, position_ids, token_type_ids, deterministic=deterministic)
    return ClassifierHead(self.config, self.num_labels, name='classifier')(hidden, deterministic)


class EncoderForQuestionAnswering(nn.Module):
  """Extractive QA: start and end logits per token."""
  config: EncoderConfig
  encoder_class = Encoder

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """-> (start_logits, end_logits), each [batch, length]."""
    hidden, _ = self.encoder_class(self.config, name='encoder')(
        input_ids, segment_ids, position_ids, token_type_ids, deterministic=deterministic)
    logits = ClassifierHead(self.config, 2, dropout_rate=0.0, name='span')(hidden)
    return logits[..., 0], logits[..., 1]


def layer_depth(names: list[str], value, config: EncoderConfig):
  """Depth for layer-wise lr decay of the encoder parameter at `names` (None: not in the stack).

  Embeddings (and their projection) are at depth 0, layer i at i + 1. Scanned stacks
  (`layers/stacked/...`, [num_layers, ...]) get one depth per slice, as an int array
  shaped to broadcast against the parameter.
  """
  if names[:2] != ['encoder', 'layers']:
    return None
  if names[2] == 'stacked':
    return np.arange(1, config.num_layers + 1).reshape(
        (config.num_layers,) + (1,) * (np.ndim(value) - 1))
  return int(names[2].removeprefix('layer_')) + 1
