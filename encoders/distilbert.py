"""DistilBERT (Sanh et al. 2019): BERT's post-LN layers without token types or a pooler.

The embeddings are word + position only (`token_type_ids` is accepted and ignored, so the
batch contract is BERT's), then LayerNorm and dropout. The stack is BERT's
`TransformerStack`, unchanged: transformers' q_lin/k_lin/v_lin/out_lin, sa_layer_norm,
ffn.lin1/lin2 and output_layer_norm compute the same post-LN layer, so our parameters
under `encoder/layers/...` carry BERT's names and a BERT teacher's layers copy into a
student subtree by subtree (scan_layers, remat, bf16 and the mesh rules work as for BERT).
The MLM head is BERT's (`vocab_transform`, activation, `vocab_layer_norm`, the tied
`vocab_projector` with its own bias).

With `sinusoidal_pos_embds` the position table starts as transformers'
`create_sinusoidal_embeddings` and is not trained (its gradient is stopped, as transformers
sets requires_grad=False; with weight decay 0, as in configs/distilbert.py, Adam leaves it
unchanged). Imports always read the checkpoint's table.

There is no pooler: `add_pooler=True` takes the first token's hidden state, which is what
transformers' sequence classifier feeds its `pre_classifier` -> ReLU -> dropout ->
`classifier` head. There is no NSP/SOP head.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from encoders import bert, layers
from encoders.config import ConfigError, EncoderConfig
from encoders.heads import POOLINGS, ClassifierHead
from encoders.layers import (Dense, TransformerStack, layer_norm, normal_init,
                             sinusoidal_table)


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(EncoderConfig):
  type_vocab_size: int = 1  # No token-type embeddings: token_type_ids are ignored.
  sinusoidal_pos_embds: bool = False  # Fixed sinusoidal position table, not trained.
  seq_classif_dropout_rate: float = 0.2  # Dropout before the sequence classifier (HF seq_classif_dropout).
  qa_dropout_rate: float = 0.1  # Dropout before the span head (HF qa_dropout).

  def validate(self, prefix: str = 'model') -> None:
    super().validate(prefix)

    def fail(field, message):
      raise ConfigError(f'{prefix}.{field}={getattr(self, field)!r}: {message}')

    if self.type_vocab_size != 1:
      fail('type_vocab_size', 'DistilBERT has no token-type embeddings; it must be 1.')
    if self.projects_embeddings:
      fail('embedding_size', 'DistilBERT embeds at hidden_size; leave it None.')
    if self.position_init != 'normal':
      fail('position_init', "DistilBERT's sinusoidal table is model.sinusoidal_pos_embds.")
    if self.position_embedding_type != 'absolute':
      fail('position_embedding_type', "DistilBERT's positions are absolute.")
    for field in ('seq_classif_dropout_rate', 'qa_dropout_rate'):
      if not 0.0 <= getattr(self, field) < 1.0:
        fail(field, 'must be in [0, 1).')


def _sinusoidal_init(key, shape, dtype=jnp.float32):
  del key  # Deterministic.
  return jnp.asarray(sinusoidal_table(*shape), dtype)


class Embeddings(layers.Embeddings):
  """Word + position embeddings (no token types), LayerNorm, dropout; BERT's parameter names."""
  config: DistilBertConfig

  def setup(self):
    c = self.config
    embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=c.compute_dtype,
                              param_dtype=c.storage_dtype)
    self.word_embeddings = embed(c.vocab_size, embedding_init=normal_init(c, ('vocab', 'embed')))
    position_init = (_sinusoidal_init if c.sinusoidal_pos_embds
                     else nn.initializers.normal(c.initializer_range))
    self.position_embeddings = embed(
        c.max_position_embeddings,
        embedding_init=nn.with_logical_partitioning(position_init, (None, 'embed')))
    self.layer_norm = layer_norm(c, 'layer_norm')
    self.dropout = nn.Dropout(c.hidden_dropout_rate)

  def __call__(self, input_ids, position_ids, token_type_ids, deterministic: bool):
    del token_type_ids  # DistilBERT has no token types.
    positions = self.position_embeddings(position_ids + self.config.position_offset)
    if self.config.sinusoidal_pos_embds:
      positions = jax.lax.stop_gradient(positions)  # transformers: requires_grad=False.
    x = self.word_embeddings(input_ids) + positions  # [batch, length, hidden]
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


def first_token(hidden: jax.Array) -> jax.Array:
  """[batch, length, hidden] -> [batch, hidden]: DistilBERT's 'pooled' vector (no weights)."""
  return hidden[:, 0]


class Encoder(bert.Encoder):
  """Embeddings + BERT's post-LN stack; `add_pooler` returns the first token's state as pooled."""
  config: DistilBertConfig

  def setup(self):
    self.embeddings = Embeddings(self.config)
    self.embeddings_project = None
    self.layers = TransformerStack(self.config)
    if self.add_pooler:
      self.pooler = first_token


class EncoderForPreTraining(bert.EncoderForPreTraining):
  """BERT's MLM head tied to the word embeddings; returns 'mlm_logits' and 'hidden'."""
  encoder_class = Encoder

  def __post_init__(self):
    if self.sentence_head:
      raise ConfigError('DistilBERT has no NSP/SOP head (sentence_head=True): pretrain it on a '
                        "single-segment input_format ('doc_sentences' or 'full_sentences').")
    super().__post_init__()


class SequenceClassifierHead(nn.Module):
  """transformers' DistilBertForSequenceClassification head: pre_classifier, ReLU, dropout, classifier."""
  config: DistilBertConfig
  num_labels: int

  @nn.compact
  def __call__(self, pooled, deterministic: bool = True):
    """pooled [batch, hidden] -> logits [batch, num_labels]."""
    c = self.config
    x = nn.relu(Dense(c, c.hidden_size, ('embed', 'embed_out'), name='pre_classifier')(pooled))
    x = nn.Dropout(c.seq_classif_dropout_rate)(x, deterministic=deterministic)
    return Dense(c, self.num_labels, ('embed', None), name='dense')(x).astype(jnp.float32)


class EncoderForSequenceClassification(bert.EncoderForSequenceClassification):
  """One label per sequence: the first token ('cls', as transformers) or a mean/max pooling,
  through the pre_classifier head."""
  encoder_class = Encoder

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f'pooling={self.pooling!r}: choose one of {POOLINGS}.')
    self.encoder = self.encoder_class(self.config, add_pooler=self.pooling == 'cls')
    self.classifier = SequenceClassifierHead(self.config, self.num_labels)


class EncoderForTokenClassification(bert.EncoderForTokenClassification):
  """Dropout (the hidden dropout) + classifier per token, as transformers."""
  encoder_class = Encoder


class EncoderForQuestionAnswering(bert.EncoderForQuestionAnswering):
  """Start and end logits per token, after transformers' qa_dropout."""
  encoder_class = Encoder

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """-> (start_logits, end_logits), each [batch, length]."""
    c = self.config
    hidden, _ = self.encoder_class(c, name='encoder')(
        input_ids, segment_ids, position_ids, token_type_ids, deterministic=deterministic)
    logits = ClassifierHead(c, 2, dropout_rate=c.qa_dropout_rate, name='span')(hidden, deterministic)
    return logits[..., 0], logits[..., 1]


layer_depth = bert.layer_depth  # BERT's stack: embeddings 0, layer i at i + 1.
