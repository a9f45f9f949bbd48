"""Task heads on top of an encoder's hidden states: MLM, NSP/SOP, pooling, classification, spans."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from encoders.config import EncoderConfig
from encoders.layers import Dense, activation, layer_norm, pad_rows, zeros_init

POOLINGS = ('cls', 'mean', 'max')


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """[batch, length, hidden], [batch, predictions] -> [batch, predictions, hidden]."""
  return jnp.take_along_axis(hidden, positions[:, :, None], axis=1)


class MaskedLMHead(nn.Module):
  """BERT's MLM head: dense + activation + LayerNorm, then the tied decoder + bias.

  The decoder may pad the vocabulary (layers.Embeddings.attend: to a multiple of 128, so that
  a tensor axis splits it evenly); the bias is padded alike and the padding columns dropped,
  so the logits, every softmax, loss and accuracy are over the vocab_size real tokens.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, decode):
    """hidden [..., hidden]; decode maps [..., hidden] -> [..., vocab or padded vocab] (the tied
    embeddings). Returns f32 logits [..., vocab]."""
    c = self.config
    x = Dense(c, c.hidden_size, ('embed', 'embed_out'), name='transform')(hidden)
    x = layer_norm(c, 'layer_norm')(activation(c, x))
    bias = self.param('bias', zeros_init(('vocab',)), (c.vocab_size,), c.storage_dtype)
    decoded = decode(x)  # [..., vocab or padded vocab]
    logits = decoded + pad_rows(bias, decoded.shape[-1])
    return logits[..., :c.vocab_size].astype(jnp.float32)  # [..., vocab]


class Pooler(nn.Module):
  """BERT's pooler: tanh(dense(hidden state of the first token))."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden):
    c = self.config
    return jnp.tanh(Dense(c, c.hidden_size, ('embed', 'embed_out'), name='dense')(hidden[:, 0]))


def pool(hidden: jax.Array, token_mask: jax.Array, pooling: str) -> jax.Array:
  """Mean or max over the tokens where token_mask is true: [batch, length, hidden] -> [batch, hidden]."""
  mask = token_mask[:, :, None]
  if pooling == 'mean':
    total = jnp.sum(jnp.where(mask, hidden, 0.0), axis=1, dtype=jnp.float32)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1)
  if pooling == 'max':
    return jnp.max(jnp.where(mask, hidden, jnp.finfo(hidden.dtype).min), axis=1)
  raise ValueError(f'Unknown pooling {pooling!r}; choose one of {POOLINGS}.')


class ClassifierHead(nn.Module):
  """Dropout then a linear layer to `num_labels` (NSP/SOP, sequence and token classification, spans)."""
  config: EncoderConfig
  num_labels: int
  dropout_rate: float | None = None  # None: the encoder's hidden dropout.

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.config
    rate = c.hidden_dropout_rate if self.dropout_rate is None else self.dropout_rate
    x = nn.Dropout(rate)(x, deterministic=deterministic)
    return Dense(c, self.num_labels, ('embed', None), name='dense')(x).astype(jnp.float32)
