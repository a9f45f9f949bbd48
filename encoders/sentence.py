"""Sentence embeddings: a family's encoder, then one vector per text pooled over its tokens.

Poolings (sentence-transformers' `Pooling` modes where one exists, same arithmetic):
- 'cls': the first token's hidden state (not BERT's tanh pooler);
- 'mean', 'max': over the text's tokens (encoders/heads.py's `pool`);
- 'mean_sqrt_len': the sum over tokens divided by sqrt(token count) ('mean_sqrt_len_tokens');
- 'weighted_mean': token t (1-based position) weighted by t ('weightedmean', Muennighoff 2022);
- 'attention': a learned query vector q scores each token, softmax(h_t . q / sqrt(H)) over
  the text's tokens weights the sum. q starts at zero, where the weights are uniform: training
  starts from mean pooling. sentence-transformers has no such module, so it does not export.

The vectors are not normalised here: the loss and the search take cosines.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from encoders.bert import Encoder
from encoders.config import EncoderConfig
from encoders.heads import pool
from encoders.layers import zeros_init

POOLINGS = ('cls', 'mean', 'max', 'mean_sqrt_len', 'weighted_mean', 'attention')
# Our pooling -> sentence-transformers' Pooling mode (1_Pooling/config.json's legacy key).
ST_POOLING_KEYS = {'cls': 'pooling_mode_cls_token', 'mean': 'pooling_mode_mean_tokens',
                   'max': 'pooling_mode_max_tokens',
                   'mean_sqrt_len': 'pooling_mode_mean_sqrt_len_tokens',
                   'weighted_mean': 'pooling_mode_weightedmean_tokens'}


def pool_tokens(hidden: jax.Array, token_mask: jax.Array, pooling: str) -> jax.Array:
  """A parameter-free pooling: hidden [batch, length, hidden], token_mask [batch, length] -> [batch, hidden] f32."""
  hidden = hidden.astype(jnp.float32)
  if pooling in ('mean', 'max'):
    return pool(hidden, token_mask, pooling)
  if pooling == 'cls':
    return hidden[:, 0]
  if pooling == 'mean_sqrt_len':
    total = jnp.sum(jnp.where(token_mask[:, :, None], hidden, 0.0), axis=1)
    return total / jnp.sqrt(jnp.maximum(jnp.sum(token_mask, axis=1, keepdims=True), 1))
  if pooling == 'weighted_mean':
    positions = jnp.arange(1, hidden.shape[1] + 1, dtype=jnp.float32)  # [length]
    weights = jnp.where(token_mask, positions, 0.0)  # [batch, length]
    return (jnp.einsum('bl,blh->bh', weights, hidden)
            / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1e-9))
  raise ValueError(f'Unknown pooling {pooling!r}; choose one of {POOLINGS}.')


class AttentionPooling(nn.Module):
  """softmax over tokens of h_t . q / sqrt(H), q learned (zero at init: mean pooling)."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, token_mask):
    """hidden [batch, length, hidden], token_mask [batch, length] -> [batch, hidden] f32."""
    c = self.config
    query = self.param('query', zeros_init(('embed',)), (c.hidden_size,), c.storage_dtype)
    hidden = hidden.astype(jnp.float32)
    scores = jnp.einsum('blh,h->bl', hidden, query.astype(jnp.float32)) / jnp.sqrt(c.hidden_size)
    weights = jax.nn.softmax(jnp.where(token_mask, scores, -jnp.inf), axis=-1)  # [batch, length]
    return jnp.einsum('bl,blh->bh', weights, hidden)


class SentenceEncoder(nn.Module):
  """texts' token ids -> pooled vectors [batch, hidden] (f32) over a family's `encoder_class`."""
  config: EncoderConfig
  pooling: str = 'mean'
  encoder_class: type = Encoder  # families.get(name).models.Encoder.

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f'pooling={self.pooling!r}: choose one of {POOLINGS}.')
    self.encoder = self.encoder_class(self.config)
    if self.pooling == 'attention':
      self.attention_pooling = AttentionPooling(self.config)

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """input_ids [batch, length] (segment_ids 0 at padding) -> [batch, hidden] f32."""
    hidden, _ = self.encoder(input_ids, segment_ids, position_ids, token_type_ids,
                             deterministic=deterministic)  # [batch, length, hidden]
    token_mask = jnp.ones_like(input_ids, bool) if segment_ids is None else segment_ids > 0
    if self.pooling == 'attention':
      return self.attention_pooling(hidden, token_mask)
    return pool_tokens(hidden, token_mask, self.pooling)

