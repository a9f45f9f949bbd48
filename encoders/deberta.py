"""DeBERTa-v2/v3 (He et al. 2021, 2023): disentangled attention over shared relative
position embeddings, and the Enhanced Mask Decoder (EMD) for MLM pretraining.

v2 and v3 are configs of these modules (configs/deberta.py). Per layer, attention scores
between query position i and key position j add up to three terms, each scaled by
1 / sqrt(head_dim * (1 + number of position terms)):

  c2c  Q_i . K_j                        content to content (BERT's)
  c2p  Q_i . Kr_d(i, j)                 content to position ('c2p' in pos_att_type)
  p2c  K_j . Qr_d(i, j)                 position to content ('p2c')

Kr and Qr project one table of relative position embeddings (`relative_embeddings`,
2 x attention_span rows, LayerNorm'ed when norm_rel_ebd='layer_norm', shared by every
layer) with the layer's own key/query projections (`share_att_key`) or with separate
`pos_key_proj` / `pos_query_proj`. d(i, j) is i - j, log-bucketed beyond
position_buckets / 2 (`log_bucket_position`) and clamped to the table; it is a static
[length, length] index, so the per-layer cost is two [length, 2 length] products and a
gather. Scores, softmax and the gathers are float32 whatever the compute dtype
(`layers.matmul` accumulates in f32): bf16 activations do not overflow there.

The v2 `ConvLayer` (conv_kernel_size > 0) mixes each token's embedding with its
neighbours' after the first layer; neighbours of another segment count as zeros, as
padding does in transformers, so packed examples stay apart.

EMD (`emd=True`, pretraining only): the last layer's weights run `z_steps` more times,
keys/values the last layer's input states H, the query first H + absolute position
embeddings, then the previous run's output; the MLM head reads the last run. The query
runs only at the masked positions (an attention row needs only its own query), so EMD
adds 2 x (predictions / length) of a layer, not 2 layers. transformers has no EMD.

DeBERTa-v3's replaced-token detection (`RTDPair`, config.model.objective='rtd') runs
ELECTRA's objective (encoders/training/electra_objective.py) over a DeBERTa generator with the MLM
(+ EMD) head and a DeBERTa discriminator with the release's RTD head, sharing word
embeddings as `embedding_sharing` says (ES, NES or GDES; RTDConfig).

Parameter names follow BERT's layout (`layers/layer_{i}/attention/query`, ...) so
`encoders/deberta_interop.py` maps them onto `DebertaV2*` like BERT's table.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoders import bert, layers
from encoders.config import ConfigError, EncoderConfig
from encoders.electra import ElectraConfig, PairOutputs
from encoders.heads import MaskedLMHead, gather_positions
from encoders.layers import (ACTIVATIONS, MLP, REMAT_POLICIES, Dense, HeadProjection, activation,
                             attention_mask, layer_norm, matmul, normal_init, zeros_init)

POSITION_TERMS = ('c2p', 'p2c')
CONV_ACTIVATIONS = {**ACTIVATIONS, 'tanh': jnp.tanh}


@dataclasses.dataclass(frozen=True)
class DebertaConfig(EncoderConfig):
  vocab_size: int = 128100
  type_vocab_size: int = 0  # 0: no token-type embeddings (v3).
  layer_norm_eps: float = 1e-7
  relative_attention: bool = True  # The c2p / p2c terms over relative position embeddings.
  pos_att_type: tuple[str, ...] = ('p2c', 'c2p')  # Any subset of POSITION_TERMS.
  position_buckets: int = 256  # Relative positions are log-bucketed beyond buckets / 2; -1: none.
  max_relative_positions: int = -1  # Largest distance bucketed to; -1: max_position_embeddings.
  share_att_key: bool = True  # Position terms use the layer's query/key projections.
  norm_rel_ebd: str = 'layer_norm'  # 'layer_norm' or 'none' on the relative embeddings.
  position_biased_input: bool = False  # Absolute position embeddings added to the input (v1).
  conv_kernel_size: int = 0  # > 0: v2's ConvLayer after the first layer (odd widths).
  conv_act: str = 'tanh'
  conv_groups: int = 1
  pooler_hidden_act: str = 'gelu'  # ContextPooler: dropout, dense, this activation.
  pooler_dropout_rate: float = 0.0
  emd: bool = False  # Enhanced Mask Decoder in EncoderForPreTraining.
  z_steps: int = 2  # EMD runs of the last layer (the release's 2).

  def __post_init__(self):
    terms = self.pos_att_type
    if isinstance(terms, str):  # transformers' 'p2c|c2p'.
      terms = [t for t in terms.lower().replace(' ', '').split('|') if t]
    object.__setattr__(self, 'pos_att_type', tuple(terms or ()))

  @property
  def relative_span(self) -> int:
    """The largest relative distance the buckets reach (transformers' max_relative_positions)."""
    if self.max_relative_positions >= 1:
      return self.max_relative_positions
    return self.max_position_embeddings

  @property
  def attention_span(self) -> int:
    """Half the rows of the relative embedding table (transformers' att_span / pos_ebd_size)."""
    return self.position_buckets if self.position_buckets > 0 else self.relative_span

  def extra_flops_per_sequence(self, seq_length: int, num_predictions: int) -> float:
    """Training FLOPs (3x the forward's) that DeBERTa adds per sequence to BERT's count.

    Matmuls only, forward, with L tokens, P predictions, R relative rows a distance within
    L reaches (2L - 1 up to the buckets):
    - per layer and position term (c2p, p2c): queries or keys [L, h] x [h, R]: 2 L R h;
    - v2's ConvLayer, once: 2 L k h^2 / groups;
    - EMD, per z step: the last layer at the P masked queries only, its keys, values and p2c
      products being the last layer's own (XLA computes them once): Q, output and MLP
      projections 2 P (2 h^2 + 2 h I), scores and context 4 P L h, c2p 2 P R h.
    Projecting the relative rows (2 R h^2 per term and layer) happens once per batch, under 1%
    of a step at batch 32; not counted. tests/test_flops.py checks both against XLA's count.
    """
    h, length, predictions = self.hidden_size, seq_length, num_predictions
    index = relative_index(length, self)
    rows = int(index.max() - index.min()) + 1
    terms = len(self.pos_att_type) if self.relative_attention else 0
    forward = self.layers_run * terms * 2 * length * rows * h
    if self.conv_kernel_size:  # v2's ConvLayer: a [kernel x h / groups, h] product per token.
      forward += 2 * length * self.conv_kernel_size * h * h // self.conv_groups
    if self.emd:
      c2p = 2 * predictions * rows * h if 'c2p' in self.pos_att_type and terms else 0
      forward += self.z_steps * (2 * predictions * (2 * h * h + 2 * h * self.intermediate_size)
                                 + 4 * predictions * length * h + c2p)
    return 3.0 * forward

  @property
  def has_position_embeddings(self) -> bool:
    return self.position_biased_input or self.emd

  def validate(self, prefix: str = 'model') -> None:
    # EncoderConfig asks for at least one token type; DeBERTa-v3 has none.
    super(DebertaConfig, dataclasses.replace(self, type_vocab_size=1)).validate(prefix)

    def fail(field, message):
      raise ConfigError(f'{prefix}.{field}={getattr(self, field)!r}: {message}')

    if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
      fail('type_vocab_size', 'must be a non-negative integer (0: no token types).')
    if self.embedding_size not in (None, self.hidden_size):
      fail('embedding_size', "DeBERTa embeds at hidden_size (transformers' bias-free embed_proj "
           'is not supported).')
    if self.position_init != 'normal':
      fail('position_init', "DeBERTa's absolute table is BERT's, initialised normal.")
    if self.position_embedding_type != 'absolute':
      fail('position_embedding_type', "DeBERTa has its own relative positions (pos_att_type, "
           "position_buckets); leave it 'absolute'.")
    terms = self.pos_att_type
    if len(set(terms)) != len(terms) or not set(terms) <= set(POSITION_TERMS):
      fail('pos_att_type', f'must be a subset of {POSITION_TERMS} without repeats.')
    for field in ('position_buckets', 'max_relative_positions'):
      value = getattr(self, field)
      if not isinstance(value, int) or value == 0 or value < -1:
        fail(field, 'must be a positive integer, or -1.')
    if self.norm_rel_ebd not in ('layer_norm', 'none'):
      fail('norm_rel_ebd', "choose 'layer_norm' or 'none'.")
    if not isinstance(self.conv_kernel_size, int) or self.conv_kernel_size < 0 or (
        self.conv_kernel_size and self.conv_kernel_size % 2 == 0):
      fail('conv_kernel_size', 'must be 0 (no ConvLayer) or an odd positive integer.')
    if self.conv_act not in CONV_ACTIVATIONS:
      fail('conv_act', f'choose one of {tuple(CONV_ACTIVATIONS)}.')
    groups = self.conv_groups
    if not isinstance(groups, int) or groups < 1 or self.hidden_size % groups:
      fail('conv_groups', f'must be a positive integer dividing hidden_size={self.hidden_size}.')
    if self.conv_kernel_size and self.scan_layers:
      fail('conv_kernel_size', 'the ConvLayer follows only the first layer, which a scan over '
           'identical layers cannot express: use scan_layers=False.')
    if self.pooler_hidden_act not in ACTIVATIONS:
      fail('pooler_hidden_act', f'choose one of {tuple(ACTIVATIONS)}.')
    if not 0.0 <= self.pooler_dropout_rate < 1.0:
      fail('pooler_dropout_rate', 'must be in [0, 1).')
    if not isinstance(self.z_steps, int) or self.z_steps < 1:
      fail('z_steps', 'must be a positive integer (EMD runs of the last layer).')
    if self.emd and self.position_biased_input:
      fail('emd', 'EMD brings the absolute positions that position_biased_input already adds '
           '(the release skips EMD then): turn one of them off.')


def log_bucket_position(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
  """transformers' make_log_bucket_position, in float32 as there: exact within bucket_size / 2,
  then log-spaced buckets up to max_position."""
  f32 = np.float32
  mid = bucket_size // 2
  sign = np.sign(relative)
  abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative)).astype(f32)
  log_pos = np.ceil(np.log(abs_pos / f32(mid)) / np.log(f32((max_position - 1) / mid))
                    * f32(mid - 1)) + f32(mid)
  return np.where(abs_pos <= mid, relative, log_pos * sign).astype(np.int64)


def relative_index(length: int, config: DebertaConfig) -> np.ndarray:
  """[query, key] rows of the relative embedding table: bucket(i - j) + span, clamped."""
  positions = np.arange(length)
  relative = positions[:, None] - positions[None, :]
  if config.position_buckets > 0:
    relative = log_bucket_position(relative, config.position_buckets, config.relative_span)
  span = config.attention_span
  return np.clip(relative + span, 0, 2 * span - 1)


class Embeddings(layers.Embeddings):
  """Word [+ absolute position] [+ token type] embeddings, LayerNorm, dropout; BERT's tied
  decoder (`attend`).

  The position table exists when the input uses it (position_biased_input) or EMD does.
  `word_source` says where the word vectors come from (an RTD pair's discriminator reads
  its generator's table, RTDPair): 'own' (a table of its own), 'given' (the `word_table`
  passed in: ES) or 'given+delta' (that table plus a zero-initialised table of its own,
  `word_embeddings_delta`: GDES).
  """
  config: DebertaConfig
  word_source: str = 'own'

  def setup(self):
    c = self.config
    embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=c.compute_dtype,
                              param_dtype=c.storage_dtype)
    if self.word_source == 'own':
      self.word_embeddings = embed(c.vocab_size, embedding_init=normal_init(c, ('vocab', 'embed')))
    elif self.word_source == 'given+delta':
      self.word_embeddings_delta = embed(c.vocab_size, embedding_init=zeros_init(('vocab', 'embed')))
    if c.has_position_embeddings:
      self.position_embeddings = embed(c.max_position_embeddings,
                                       embedding_init=normal_init(c, (None, 'embed')))
    if c.type_vocab_size:
      self.token_type_embeddings = embed(c.type_vocab_size,
                                         embedding_init=normal_init(c, (None, 'embed')))
    self.layer_norm = layer_norm(c, 'layer_norm')
    self.dropout = nn.Dropout(c.hidden_dropout_rate)

  def __call__(self, input_ids, position_ids, token_type_ids, deterministic: bool,
               word_table=None):
    """word_table [vocab, hidden]: the given table ('given', 'given+delta'), else None."""
    c = self.config
    if self.word_source == 'own':
      x = self.word_embeddings(input_ids)  # [batch, length, hidden]
    else:
      x = jnp.take(word_table.astype(c.compute_dtype), input_ids, axis=0)
      if self.word_source == 'given+delta':
        x = x + self.word_embeddings_delta(input_ids)
    if c.position_biased_input:
      x = x + self.absolute_positions(position_ids)
    if c.type_vocab_size:
      x = x + self.token_type_embeddings(token_type_ids)
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def absolute_positions(self, position_ids):
    """[batch, length] -> the position table's rows [batch, length, hidden] (EMD's z states)."""
    return self.position_embeddings(position_ids + self.config.position_offset)


class DisentangledSelfAttention(nn.Module):
  """c2c + c2p + p2c scores (module docstring), masked softmax in f32, output projection.

  Keys and values come from `x` [batch, length, hidden], queries from `query_states`
  [batch, queries, hidden] (the same states, except in EMD). `relative` is
  (relative embeddings [rows, hidden], index [batch | 1, queries, length] into those rows),
  or None without relative attention.
  """
  config: DebertaConfig

  @nn.compact
  def __call__(self, x, query_states, mask, relative, deterministic: bool):
    c = self.config
    query_projection = HeadProjection(c, to_heads=True, name='query')
    key_projection = HeadProjection(c, to_heads=True, name='key')
    query = query_projection(query_states)  # [batch, queries, heads, head_dim]
    key = key_projection(x)  # [batch, length, heads, head_dim]
    value = HeadProjection(c, to_heads=True, name='value')(x)
    # transformers counts the position terms in the scale even without relative attention.
    scale = (c.head_dim * (1 + len(c.pos_att_type))) ** -0.5
    scores = matmul('bqhd,bkhd->bhqk', query, key, c.compute_dtype) * scale  # f32
    if c.relative_attention:
      embeddings, index = relative
      embeddings = nn.Dropout(c.hidden_dropout_rate)(embeddings, deterministic=deterministic)[None]
      if 'c2p' in c.pos_att_type:
        projection = (key_projection if c.share_att_key
                      else HeadProjection(c, to_heads=True, name='pos_key_proj'))
        position_key = projection(embeddings)[0]  # [rows, heads, head_dim]
        c2p = matmul('bqhd,rhd->bhqr', query, position_key, c.compute_dtype)
        c2p = jnp.take_along_axis(c2p, index[:, None], axis=-1)  # [batch, heads, queries, length]
        scores += c2p * scale
      if 'p2c' in c.pos_att_type:
        projection = (query_projection if c.share_att_key
                      else HeadProjection(c, to_heads=True, name='pos_query_proj'))
        position_query = projection(embeddings)[0]  # [rows, heads, head_dim]
        p2c = matmul('bkhd,rhd->bhkr', key, position_query, c.compute_dtype)
        # Key j's row at d(i, j), for each query i: [batch, heads, length, queries].
        p2c = jnp.take_along_axis(p2c, jnp.swapaxes(index, 1, 2)[:, None], axis=-1)
        scores += jnp.swapaxes(p2c, 2, 3) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)  # [batch, heads, queries, length], f32
    probs = nn.Dropout(c.attention_dropout_rate)(probs, deterministic=deterministic)
    context = matmul('bhqk,bkhd->bqhd', probs, value, c.compute_dtype).astype(c.compute_dtype)
    context = nn.with_logical_constraint(context, ('batch', 'length', 'heads', 'kv'))
    return HeadProjection(c, to_heads=False, name='output')(context)  # [batch, queries, hidden]


class Layer(nn.Module):
  """Post-LN block: y = LN(q + Attn(x, q)); y = LN(y + MLP(y)), with q = x outside EMD."""
  config: DebertaConfig

  @nn.compact
  def __call__(self, x, mask, relative, deterministic: bool, query_states=None):
    c = self.config
    query_states = x if query_states is None else query_states
    dropout = nn.Dropout(c.hidden_dropout_rate)
    attended = DisentangledSelfAttention(c, name='attention')(x, query_states, mask, relative,
                                                             deterministic)
    attended = dropout(attended, deterministic=deterministic)
    y = layer_norm(c, 'attention_layer_norm')(query_states + attended)
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    transformed = MLP(c, name='mlp')(y)
    y = layer_norm(c, 'output_layer_norm')(y + dropout(transformed, deterministic=deterministic))
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed'))


def layer_class(config: DebertaConfig):
  if config.remat_policy == 'none':
    return Layer
  return nn.remat(Layer, policy=REMAT_POLICIES[config.remat_policy],
                  static_argnums=(4,))  # (self, x, mask, relative, deterministic, query_states)


class ScanBody(nn.Module):
  """One layer as the body of `nn.scan`: (x, previous x) -> (layer(x), x)."""
  config: DebertaConfig
  deterministic: bool

  @nn.compact
  def __call__(self, carry, mask, relative):
    x, _ = carry
    layer = layer_class(self.config)(self.config, name='layer')
    return (layer(x, mask, relative, self.deterministic), x), None


class Stack(nn.Module):
  """`num_layers` layers (`layer_{i}`, or `stacked/layer` [num_layers, ...] with scan_layers).

  `after_first` (the ConvLayer) maps the first layer's output. `emd` = (absolute position
  embeddings [batch, length, hidden], masked_positions [batch, predictions], their mask
  [batch, 1, predictions, length], their relative (rows, index)) reruns the last layer's
  weights `z_steps` times, keys/values its input H, the query first H + positions at
  masked_positions. Returns (hidden [batch, length, hidden], the EMD
  states [batch, queries, hidden] or None).
  """
  config: DebertaConfig

  @nn.compact
  def __call__(self, x, mask, relative, deterministic: bool, after_first=None, emd=None):
    c = self.config
    if c.scan_layers:
      stacked = nn.scan(
          ScanBody, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      (x, last_input), _ = stacked(c, deterministic, name='stacked')((x, x), mask, relative)
      if emd is None:
        return x, None
      # The last slice of the stacked weights, run as a module of its own.
      weights = jax.tree.map(lambda a: a[-1], nn.unbox(self.variables['params']['stacked']['layer']))
      rngs = None if deterministic else {'dropout': self.make_rng('dropout')}
      last = lambda *args: layer_class(c)(c, parent=None).apply({'params': weights}, *args, rngs=rngs)
    else:
      layers = [layer_class(c)(c, name=f'layer_{i}') for i in range(c.num_layers)]
      for i, layer in enumerate(layers):
        last_input = x
        x = layer(x, mask, relative, deterministic)
        if i == 0 and after_first is not None:
          x = after_first(x)
      last = layers[-1]
    if emd is None:
      return x, None
    positions, masked_positions, query_mask, query_relative = emd
    query = gather_positions(last_input + positions, masked_positions)  # [batch, predictions, hidden]
    for _ in range(c.z_steps):
      query = last(last_input, query_mask, query_relative, deterministic, query)
    return x, query


class ConvLayer(nn.Module):
  """v2's ConvLayer: LN(layer-0 output + act(dropout(conv(embeddings)))).

  A 1-D convolution over the sequence (torch Conv1d: zero padding, `conv_groups` groups)
  in which a neighbour of another segment (another packed example, or padding) counts
  as zero. The kernel is [width, hidden / groups, hidden] (flax nn.Conv's layout).
  """
  config: DebertaConfig

  @nn.compact
  def __call__(self, embedded, x, segment_ids, deterministic: bool):
    c = self.config
    width, groups, hidden = c.conv_kernel_size, c.conv_groups, c.hidden_size
    kernel = self.param('kernel', normal_init(c, (None, None, 'embed')),
                        (width, hidden // groups, hidden), c.storage_dtype)
    bias = self.param('bias', zeros_init(('embed',)), (hidden,), c.storage_dtype)
    batch, length = segment_ids.shape
    pad = (width - 1) // 2
    padded = jnp.pad(embedded, ((0, 0), (pad, pad), (0, 0)))
    padded_segments = jnp.pad(segment_ids, ((0, 0), (pad, pad)), constant_values=-1)
    kernel = kernel.reshape(width, hidden // groups, groups, hidden // groups)  # [w, in/g, g, out/g]
    out = bias.astype(jnp.float32)
    for offset in range(width):
      same = padded_segments[:, offset:offset + length] == segment_ids  # [batch, length]
      neighbour = jnp.where(same[..., None], padded[:, offset:offset + length], 0)
      neighbour = neighbour.reshape(batch, length, groups, hidden // groups)
      out = out + matmul('blgi,igo->blgo', neighbour, kernel[offset],
                         c.compute_dtype).reshape(batch, length, hidden)
    out = nn.Dropout(c.hidden_dropout_rate)(out, deterministic=deterministic)
    out = CONV_ACTIVATIONS[c.conv_act](out).astype(c.compute_dtype)
    x = layer_norm(c, 'layer_norm')(x + out)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class ContextPooler(nn.Module):
  """DeBERTa's pooler: pooler_hidden_act(dense(dropout(hidden state of the first token)))."""
  config: DebertaConfig

  @nn.compact
  def __call__(self, hidden, deterministic: bool = True):
    c = self.config
    x = nn.Dropout(c.pooler_dropout_rate)(hidden[:, 0], deterministic=deterministic)
    x = Dense(c, c.hidden_size, ('embed', 'embed_out'), name='dense')(x)
    return ACTIVATIONS[c.pooler_hidden_act](x.astype(jnp.float32)).astype(c.compute_dtype)


class Encoder(bert.Encoder):
  """Embeddings, the shared relative embeddings, [ConvLayer], the layers [+ ContextPooler].

  `word_source`: the embeddings' (Embeddings); not 'own', `encode` takes the `word_table`.
  """
  config: DebertaConfig
  word_source: str = 'own'

  def setup(self):
    c = self.config
    self.embeddings = Embeddings(c, word_source=self.word_source)
    if c.relative_attention:
      self.relative_embeddings = nn.Embed(
          2 * c.attention_span, c.hidden_size, dtype=c.compute_dtype, param_dtype=c.storage_dtype,
          embedding_init=normal_init(c, (None, 'embed')))
      if c.norm_rel_ebd == 'layer_norm':
        self.relative_layer_norm = layer_norm(c, 'relative_layer_norm')
    if c.conv_kernel_size:
      self.conv = ConvLayer(c)
    self.layers = Stack(c)
    if self.add_pooler:
      self.pooler = ContextPooler(c)

  def relative(self, length: int):
    """(the used rows of the relative embeddings [rows, hidden], index [length, length] into them)."""
    if not self.config.relative_attention:
      return None, None
    index = relative_index(length, self.config)
    # Only the rows that a distance within this length reaches.
    first, end = int(index.min()), int(index.max()) + 1
    rows = self.relative_embeddings.embedding[first:end]
    if self.config.norm_rel_ebd == 'layer_norm':
      rows = self.relative_layer_norm(rows)
    return rows.astype(self.config.compute_dtype), jnp.asarray(index - first, jnp.int32)

  def encode(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None,
             masked_positions=None, *, deterministic: bool = True, emd: bool = False,
             word_table=None):
    """-> (hidden [batch, length, hidden], EMD states at masked_positions [batch, predictions,
    hidden] (every position if None) when `emd`, else None)."""
    segment_ids, position_ids, token_type_ids = bert.default_inputs(
        input_ids, segment_ids, position_ids, token_type_ids)
    embedded = self.embeddings(input_ids, position_ids, token_type_ids, deterministic, word_table)
    rows, index = self.relative(input_ids.shape[1])
    mask = attention_mask(segment_ids)  # [batch, 1, length, length]
    relative = None if rows is None else (rows, index[None])
    after_first = None
    if self.config.conv_kernel_size:
      after_first = lambda x: self.conv(embedded, x, segment_ids, deterministic)
    emd_inputs = None
    if emd:
      if masked_positions is None:
        masked_positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
      query_segments = jnp.take_along_axis(segment_ids, masked_positions, axis=1)  # [b, predictions]
      query_mask = (query_segments[:, :, None] == segment_ids[:, None, :])[:, None]
      query_relative = None if rows is None else (rows, index[masked_positions])
      emd_inputs = (self.embeddings.absolute_positions(position_ids), masked_positions,
                    query_mask, query_relative)
    return self.layers(embedded, mask, relative, deterministic, after_first, emd_inputs)

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
               deterministic: bool = True):
    """input_ids [batch, length] -> (hidden [batch, length, hidden], pooled [batch, hidden] | None)."""
    hidden, _ = self.encode(input_ids, segment_ids, position_ids, token_type_ids,
                            deterministic=deterministic)
    return hidden, (self.pooler(hidden, deterministic) if self.add_pooler else None)


class EncoderForPreTraining(bert.EncoderForPreTraining):
  """MLM head (transformers' legacy one) tied to the word embeddings; with `config.emd` it
  reads the Enhanced Mask Decoder's states. DeBERTa has no sentence-level head.

  Returns {'mlm_logits': [batch, predictions | length, vocab], 'hidden': the last layer's
  states [batch, length, hidden]}.
  """
  config: DebertaConfig
  encoder_class = Encoder

  def setup(self):
    if self.sentence_head:
      raise ConfigError('DeBERTa pretrains without a sentence-level (NSP/SOP) head: use a '
                        "single-segment data.input_format such as 'full_sentences'.")
    self.encoder = Encoder(self.config)
    self.mlm_head = MaskedLMHead(self.config)

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None,
               masked_positions=None, *, deterministic: bool = True) -> dict[str, jax.Array]:
    hidden, decoded = self.encoder.encode(input_ids, segment_ids, position_ids, token_type_ids,
                                          masked_positions, deterministic=deterministic,
                                          emd=self.config.emd)
    if decoded is None:
      decoded = hidden if masked_positions is None else gather_positions(hidden, masked_positions)
    return {'mlm_logits': self.mlm_head(decoded, self.encoder.decode), 'hidden': hidden}


class EncoderForSequenceClassification(bert.EncoderForSequenceClassification):
  """pooling='cls' runs DeBERTa's ContextPooler (transformers' DebertaV2ForSequenceClassification)."""
  encoder_class = Encoder


class EncoderForTokenClassification(bert.EncoderForTokenClassification):
  encoder_class = Encoder


class EncoderForQuestionAnswering(bert.EncoderForQuestionAnswering):
  encoder_class = Encoder


def layer_depth(names: list[str], value, config: DebertaConfig):
  """Depth for layer-wise lr decay of the encoder parameter at `names` (None: not in the stack).

  Layer i is at i + 1 (scanned stacks: one depth per slice). The relative embeddings (and
  their LayerNorm) feed every layer: as ALBERT's shared weights, they are decayed once, at
  the depth of the topmost layer that reads them. The ConvLayer belongs to layer 1's output.
  """
  if names[:2] == ['encoder', 'conv']:
    return 1
  if names[:2] in (['encoder', 'relative_embeddings'], ['encoder', 'relative_layer_norm']):
    return config.num_layers
  return bert.layer_depth(names, value, config)


# How an RTD pair's discriminator gets its word vectors (Embeddings.word_source), by
# config.model.embedding_sharing (He et al. 2023, section 3):
#   es    the generator's table: one table, both losses' gradients flow into it (ELECTRA's);
#   nes   a table of its own: the two networks share nothing;
#   gdes  stop_gradient(the generator's table) + a zero-initialised delta of its own: the
#         generator's table learns only from MLM, the delta only from RTD.
WORD_SOURCES = {'es': 'given', 'nes': 'own', 'gdes': 'given+delta'}


@dataclasses.dataclass(frozen=True)
class RTDConfig(ElectraConfig):
  """DeBERTa-v3's generator and discriminator configs (ElectraConfig's fields and generator_*
  sizes; v3: the same width at half the depth) and their embedding sharing. Neither network
  projects its embeddings; the discriminator has no EMD."""
  discriminator: DebertaConfig
  generator: DebertaConfig
  sharing: str = 'gdes'
  encoder_class = DebertaConfig

  @classmethod
  def from_config(cls, model_config, prefix: str = 'model') -> 'RTDConfig':
    """A generator field left None is v3's: the discriminator's width, heads and MLP, half its
    depth (ElectraConfig derives the rest)."""
    values = dict(model_config.items()) if hasattr(model_config, 'items') else dict(model_config)
    for field, default in (('generator_size_fraction', 1.0),
                           ('generator_num_heads', values.get('num_heads')),
                           ('generator_intermediate_size', values.get('intermediate_size')),
                           ('generator_num_layers', max(1, values.get('num_layers', 2) // 2))):
      values[field] = values.get(field) or default
    pair = super().from_config(values, prefix)
    sharing = values.get('embedding_sharing', 'gdes')
    if sharing not in WORD_SOURCES:
      raise ConfigError(f'{prefix}.embedding_sharing={sharing!r}: choose one of '
                        f'{tuple(WORD_SOURCES)}.')
    if pair.embedding_gradients != 'mlm+rtd':  # ELECTRA's switch; RTDPair shares by `sharing`.
      raise ConfigError(f'{prefix}.embedding_gradients={pair.embedding_gradients!r}: DeBERTa-v3 '
                        "chooses what trains the embeddings by embedding_sharing ('gdes' keeps "
                        "the RTD gradient out of the generator's table).")
    if pair.generator.hidden_size != pair.discriminator.hidden_size:
      raise ConfigError(f'{prefix}.generator_hidden_size={pair.generator.hidden_size}: DeBERTa embeds '
                        f'at hidden_size, so the generator must be as wide as the discriminator '
                        f'({pair.discriminator.hidden_size}); make it smaller by generator_num_layers.')
    return dataclasses.replace(pair, sharing=sharing,
                               discriminator=dataclasses.replace(pair.discriminator, emd=False))


class MaskPredictionHead(nn.Module):
  """DeBERTa-v3's replaced-token head (the release's LMMaskPredictionHead, `mask_predictions`):
  LayerNorm(each token's state + its example's first token's), dense, activation, one logit.

  The release reads the row's first token; here it is the first token of the token's own
  segment, so packed examples stay apart (one example per row: the same).
  """
  config: DebertaConfig

  @nn.compact
  def __call__(self, hidden, segment_ids):
    """hidden [batch, length, hidden], segment_ids [batch, length] -> logits [batch, length]
    (> 0: replaced)."""
    c = self.config
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [batch, length, length]
    first = jnp.argmax(same, axis=-1)  # [batch, length]: where each token's segment starts.
    context = jnp.take_along_axis(hidden, first[..., None], axis=1)  # [batch, length, hidden]
    x = layer_norm(c, 'layer_norm')(context + hidden)
    x = activation(c, Dense(c, c.hidden_size, ('embed', 'embed_out'), name='dense')(x))
    return Dense(c, 1, ('embed', None), name='classifier')(x)[..., 0].astype(jnp.float32)


class RTDPair(PairOutputs):
  """DeBERTa-v3's generator (EncoderForPreTraining: MLM head, EMD as its config says) and
  discriminator (an Encoder and MaskPredictionHead), the discriminator's word vectors from
  the generator's table as config.sharing says (WORD_SOURCES)."""
  config: RTDConfig
  config_class = RTDConfig  # What encoders/training/electra_objective.py builds `config` with.

  def setup(self):
    c = self.config
    self.generator_model = EncoderForPreTraining(c.generator)
    self.discriminator_encoder = Encoder(c.discriminator, word_source=WORD_SOURCES[c.sharing])
    self.discriminator_predictions = MaskPredictionHead(c.discriminator)

  def generator(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None,
                masked_positions=None, *, deterministic: bool = True) -> jax.Array:
    """MLM logits [batch, predictions, vocab] at masked_positions ([batch, length, vocab] if None)."""
    return self.generator_model(input_ids, segment_ids, position_ids, token_type_ids,
                                masked_positions, deterministic=deterministic)['mlm_logits']

  def discriminator(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
                    deterministic: bool = True) -> jax.Array:
    """Replaced-token logits [batch, length] (> 0: the token was replaced)."""
    table = None
    if self.config.sharing != 'nes':
      table = self.generator_model.encoder.embeddings.word_embeddings.embedding  # [vocab, hidden]
      if self.config.sharing == 'gdes':
        table = jax.lax.stop_gradient(table)
    segment_ids, position_ids, token_type_ids = bert.default_inputs(
        input_ids, segment_ids, position_ids, token_type_ids)
    hidden, _ = self.discriminator_encoder.encode(input_ids, segment_ids, position_ids,
                                                  token_type_ids, deterministic=deterministic,
                                                  word_table=table)
    return self.discriminator_predictions(hidden, segment_ids)


def pretrained_encoder(params: dict) -> dict:
  """Pretraining params -> {'encoder': ...} to fine-tune or export: an MLM run's as they are;
  an RTD pair's discriminator with its effective word table, the generator's (ES), its own
  (NES) or the generator's + its delta (GDES), as the released v3 discriminators store it.
  Its RTD head (`discriminator_predictions`) is left out."""
  if 'encoder' in params:
    return params
  encoder = dict(params['discriminator_encoder'])
  embeddings = dict(encoder['embeddings'])
  if 'word_embeddings' not in embeddings:
    table = params['generator_model']['encoder']['embeddings']['word_embeddings']['embedding']
    delta = embeddings.pop('word_embeddings_delta', None)
    embeddings['word_embeddings'] = {
        'embedding': table if delta is None else table + delta['embedding']}
  encoder['embeddings'] = embeddings
  return {'encoder': encoder}
