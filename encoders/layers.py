"""Building blocks shared by the encoder families: embeddings, attention, MLP, layer, stack.

Every parameter is created with logical axis names and the residual stream carries
logical constraints, so a mesh shards them by the rules of `encoders/training/sharding.py`:

  batch, length  activations          vocab    word embeddings / MLM bias
  embed          the hidden size      heads    attention heads
  kv             per-head features    mlp      the MLP's inner size
  embed_out      output side of hidden-state kernels (pooler, MLM transform, embeddings_project)
"""
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoders.config import EncoderConfig


def gelu(x: jax.Array) -> jax.Array:
  """BERT's exact GELU, x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), of f32 x.

  The select changes no value (below -20 the GELU underflows to 0 in f32). It keeps XLA:CPU
  from fusing the GELU into the next matmul's YNNPACK kernel, which materialised three f32
  [tokens, mlp] operands for it; with the select it is one loop over the previous matmul's
  output. A MiniLM forward at 32 x 128 took 13% less time in bf16 and 7% less in f32 than
  with `nn.gelu(approximate=False)` (benchmarks/cpu_gelu.py,
  docs/sentence/inference_bf16_weights/cpu_gelu.txt). The erf form is PyTorch's: for x < -3,
  where 1 + erf cancels, its f32 error reaches 1e-6 absolute (on values below 4e-3), which
  `nn.gelu(approximate=False)`'s erfc form avoids at a cost in time.
  """
  return jnp.where(x > -20.0, 0.5 * x * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2)))), 0.0)


ACTIVATIONS: dict[str, Callable] = {
    'gelu': gelu,
    'gelu_new': functools.partial(nn.gelu, approximate=True),
    'relu': nn.relu,
}


def activation(config: EncoderConfig, x: jax.Array) -> jax.Array:
  """config.hidden_act of x, computed in f32 and returned in the compute dtype.

  In bf16 that is one rounding, of the result: a bf16 GELU rounds each of its steps
  (XLA:CPU has no bf16 arithmetic and converts around every op, which also costs time).
  """
  return ACTIVATIONS[config.hidden_act](x.astype(jnp.float32)).astype(config.compute_dtype)


REMAT_POLICIES = {
    'full': None,  # Save nothing: recompute the whole layer in the backward pass.
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def normal_init(config: EncoderConfig, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
  """transformers' create_sinusoidal_embeddings: [positions, dim], sin at even and cos at odd features."""
  angles = np.arange(num_positions)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)
  return np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))  # [positions, dim]


def position_init(config: EncoderConfig, axes: tuple[str | None, ...]):
  """The absolute position table's initializer (config.position_init): BERT's normal, or the
  sinusoidal table times initializer_range * sqrt(2), whose entries then have the normal's std
  (sin and cos have RMS 1/sqrt(2)) and whose rows' dot products depend on their distance."""
  if config.position_init == 'normal':
    return normal_init(config, axes)
  scale = config.initializer_range * np.sqrt(2)

  def init(key, shape, dtype=jnp.float32):
    del key  # Deterministic.
    return jnp.asarray(sinusoidal_table(*shape) * scale, dtype)
  return nn.with_logical_partitioning(init, axes)


def pad_rows(x: jax.Array, rows: int) -> jax.Array:
  """[n, ...] -> [rows, ...] with zero rows appended (rows >= n)."""
  return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def zeros_init(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def layer_norm(config: EncoderConfig, name: str, axis: str = 'embed') -> nn.LayerNorm:
  """LayerNorm over features of logical axis `axis` (the hidden size; 'kv': a head's)."""
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,)),
      bias_init=zeros_init((axis,)))


def _operands_and_output(equation: str) -> tuple[str, str, str]:
  """'x,y->out' -> (x, y, out), checked to be a matmul whose gradients are einsums too.

  Every index of an operand must be in the other operand or the output, no spec may
  repeat an index, and `...` may stand only for leading axes of x kept in the output.
  """
  inputs, output = equation.replace(' ', '').split('->')
  x, y = inputs.split(',')
  for spec, other in ((x, y), (y, x)):
    letters = spec.replace('...', '')
    if len(set(letters)) != len(letters) or not set(letters) <= set(other + output):
      raise ValueError(f'matmul({equation!r}): {spec!r} repeats an index or sums one of its own')
  if '...' in y or ('...' in x) != ('...' in output):
    raise ValueError(f'matmul({equation!r}): "..." only for leading axes of x kept in the output')
  return x, y, output


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bf16_einsum(equation: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """einsum of x and y cast to bf16, accumulated in f32; gradients in x's and y's own dtypes."""
  return jnp.einsum(equation, x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)


def _bf16_einsum_fwd(equation, x, y):
  # The residuals are the uncast operands: an f32 kernel is a parameter, alive anyway, and
  # XLA merges the backward pass's casts with the forward pass's.
  return _bf16_einsum(equation, x, y), (x, y)


def _contracting_last(lhs_spec: str, rhs_spec: str, out_spec: str, lhs: jax.Array):
  """-> (spec, lhs) with lhs transposed to (batch, free, contracting) order on XLA:CPU.

  XLA:CPU runs bf16 x bf16 -> f32 dots only in its fused (YNNPACK) kernels, which take
  an operand contracted on a middle axis (e.g. probs [b,h,q,k] summed over q) only once
  it is transposed to contract on its minor axis; its fallback has no such dot at all.
  The barrier keeps XLA from folding the transpose back into the dot. (jnp.einsum may
  still make this operand the dot's rhs.) Ellipsis specs (dense layers) already lower
  well and are left alone, as is every other backend (the default backend at trace
  time decides).
  """
  if '...' in lhs_spec or jax.default_backend() != 'cpu':
    return lhs_spec, lhs
  order = sorted(lhs_spec, key=lambda i: (i not in rhs_spec or i not in out_spec, i not in out_spec))
  spec = ''.join(order)
  if spec == lhs_spec:
    return lhs_spec, lhs
  return spec, jax.lax.optimization_barrier(jnp.transpose(lhs, [lhs_spec.index(i) for i in spec]))


def _gradient_einsum(a_spec: str, a: jax.Array, b_spec: str, b: jax.Array, out_spec: str):
  """einsum of a and b into out_spec (bf16, f32 accumulation), given first the operand
  whose free indices come first in out_spec, and that operand made minor-contracting.

  jnp.einsum's dot follows its operand order. So ordered, the key gradient of attention
  ('bhqk' with 'bqhd' -> 'bkhd') lowers to the same dot as the value gradient, which
  XLA:CPU runs in its fused bf16 kernel; the other order fell back to an f32 dot.
  """
  def first_free(spec, other):
    return min((out_spec.index(i) for i in spec if i in out_spec and i not in other),
               default=len(out_spec))
  if first_free(b_spec, a_spec) < first_free(a_spec, b_spec):
    a_spec, a, b_spec, b = b_spec, b, a_spec, a
  lhs_spec, lhs = _contracting_last(a_spec, b_spec, out_spec, a)
  return jnp.einsum(f'{lhs_spec},{b_spec}->{out_spec}', lhs, b, preferred_element_type=jnp.float32)


def _bf16_einsum_bwd(equation, residuals, grad):
  """Both gradient matmuls on bf16 operands, accumulated in f32.

  JAX's own transpose of a `preferred_element_type=f32` dot multiplies the f32
  cotangent by the upcast operand, i.e. runs the backward pass's two matmuls in f32.
  The gradient of an f32 operand (a kernel) is the f32 accumulator itself, never
  rounded to bf16 on its way to the optimizer.
  """
  x, y = residuals
  x_spec, y_spec, out_spec = _operands_and_output(equation)
  grad, x16, y16 = (a.astype(jnp.bfloat16) for a in (grad, x, y))
  grad_x = _gradient_einsum(out_spec, grad, y_spec, y16, x_spec)
  grad_y = _gradient_einsum(x_spec, x16, out_spec, grad, y_spec)
  return grad_x.astype(x.dtype), grad_y.astype(y.dtype)


_bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)


def matmul(equation: str, x: jax.Array, y: jax.Array, dtype) -> jax.Array:
  """`jnp.einsum(equation, x, y)` on operands cast to `dtype`, accumulated and returned in f32.

  In bf16 the forward and both backward matmuls take bf16 operands and accumulate in f32
  (what TPU MXUs and GPU tensor cores do; on a CPU with AVX512-BF16 it runs at about 2x
  the f32 rate), and each operand's gradient comes back in that operand's dtype (f32
  for f32 parameters). f32 runs at the backend's default matmul precision. f16 keeps
  JAX's own gradient, whose f32 cotangent needs no loss scaling.
  """
  _operands_and_output(equation)
  if jnp.dtype(dtype) == jnp.bfloat16:
    return _bf16_einsum(equation, x, y)
  return jnp.einsum(equation, x.astype(dtype), y.astype(dtype), preferred_element_type=jnp.float32)


class Dense(nn.Module):
  """nn.Dense's parameters (kernel [in, features], bias [features]), computed by `matmul`.

  A kernel with axes ('embed', 'embed_out') may be split over its output features,
  but what it computes is a hidden state: its output is laid out as the
  residual stream ([batch, ..., embed]), not left split over those features. Left to
  propagation, that split reached the tied decoder, whose vocabulary is split over the
  same mesh axis, and XLA (jaxlib 0.10.2, CPU, Shardy and GSPMD alike) then computed
  wrong gradients through the softmax over the vocabulary; the forward pass stayed
  right (tests/test_sharding.py has the pure-JAX reproduction).
  """
  config: EncoderConfig
  features: int
  axes: tuple[str | None, str | None]  # Logical axes of the kernel; the bias takes axes[1].

  @nn.compact
  def __call__(self, x):
    c = self.config
    kernel = self.param('kernel', normal_init(c, self.axes), (x.shape[-1], self.features),
                        c.storage_dtype)
    bias = self.param('bias', zeros_init(self.axes[1:]), (self.features,), c.storage_dtype)
    y = (matmul('...i,io->...o', x, kernel, c.compute_dtype) + bias).astype(c.compute_dtype)
    if self.axes[1] == 'embed_out':
      y = nn.with_logical_constraint(y, ('batch',) + (None,) * (y.ndim - 2) + ('embed',))
    return y


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """[batch, length] segment ids -> [batch, 1, length, length] bool mask.

  A token attends only to tokens of its own segment, so packed examples never see
  each other and real tokens never see padding (segment 0). Padding tokens attend to
  padding, which keeps every softmax row non-empty.
  """
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None, :, :]


class Embeddings(nn.Module):
  """Word + absolute position + token type embeddings, then LayerNorm and dropout.

  With a relative `position_embedding_type` the position table is kept (transformers' layout
  has it) but not added: attention reads the distances (`SelfAttention`).
  """
  config: EncoderConfig

  def setup(self):
    c = self.config
    embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=c.compute_dtype,
                              param_dtype=c.storage_dtype)
    self.word_embeddings = embed(c.vocab_size, embedding_init=normal_init(c, ('vocab', 'embed')))
    self.position_embeddings = embed(c.max_position_embeddings,
                                     embedding_init=position_init(c, (None, 'embed')))
    self.token_type_embeddings = embed(c.type_vocab_size,
                                       embedding_init=normal_init(c, (None, 'embed')))
    self.layer_norm = layer_norm(c, 'layer_norm')
    self.dropout = nn.Dropout(c.hidden_dropout_rate)

  def __call__(self, input_ids, position_ids, token_type_ids, deterministic: bool,
               word_delta=None):
    """word_delta [batch, length, hidden]: DeBERTaV3's gradient-disentangled read (GDES) by a
    network with a word table of its own: every parameter of this block is read under
    stop_gradient and word_delta is added to its word vectors before the LayerNorm,
    LN(sg(E_word) + delta + sg(E_pos + E_type))."""
    words = self.word_embeddings(input_ids)
    positions = self.position_embeddings(position_ids + self.config.position_offset)
    if self.config.position_embedding_type != 'absolute':
      positions = 0.0  # The table is created above (init) and left unread.
    types = self.token_type_embeddings(token_type_ids)
    if word_delta is None:
      x = self.layer_norm(words + positions + types)  # [batch, length, hidden]
    else:
      stopped = jax.lax.stop_gradient
      x = stopped(words) + word_delta + stopped(positions + types)
      if self.is_initializing():
        self.layer_norm(x)  # Creates the LayerNorm's parameters when this read runs first.
      norm = stopped(self.layer_norm.variables['params'])
      x = self.layer_norm.clone(parent=None).apply({'params': norm}, x)
    x = self.dropout(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def attend(self, x: jax.Array) -> jax.Array:
    """[..., hidden] -> [..., padded vocab]: the decoder tied to the word embeddings.

    The table gets zero rows up to config.padded_vocab_size (a multiple of 128) and is laid
    out split over the vocabulary, so that a tensor axis splits the decoder's matmul evenly
    even when it does not divide vocab_size (the stored table is then replicated over it:
    encoders/training/sharding.py). The MLM head drops the padding columns.
    """
    c = self.config
    table = pad_rows(self.word_embeddings.embedding, c.padded_vocab_size)  # [padded vocab, hidden]
    table = nn.with_logical_constraint(table, ('vocab', 'embed'))
    return matmul('...d,vd->...v', x, table, c.compute_dtype)  # f32 logits.


class HeadProjection(nn.Module):
  """hidden -> (heads, head_dim) when `to_heads`, else back; the kernel is created at full rank.

  (flax's DenseGeneral creates its kernel flat and then applies the 3-D logical
  constraint to the 2-D array, which fails under an active mesh.)
  """
  config: EncoderConfig
  to_heads: bool

  @nn.compact
  def __call__(self, x):
    c = self.config
    heads_shape, heads_axes = (c.num_heads, c.head_dim), ('heads', 'kv')
    if self.to_heads:
      kernel_shape, kernel_axes = (c.hidden_size, *heads_shape), ('embed', *heads_axes)
      bias_shape, bias_axes, equation = heads_shape, heads_axes, 'bld,dhk->blhk'
    else:
      kernel_shape, kernel_axes = (*heads_shape, c.hidden_size), (*heads_axes, 'embed')
      bias_shape, bias_axes, equation = (c.hidden_size,), ('embed',), 'blhk,hkd->bld'
    kernel = self.param('kernel', normal_init(c, kernel_axes), kernel_shape, c.storage_dtype)
    bias = self.param('bias', zeros_init(bias_axes), bias_shape, c.storage_dtype)
    return (matmul(equation, x, kernel, c.compute_dtype) + bias).astype(c.compute_dtype)


# cuDNN's fused (flash) attention in JAX 0.10 (jax._src.cudnn.fused_attention_stablehlo):
# bf16/fp16 operands, head_dim a multiple of 8 up to 128 (256 from Hopper on), and, with a
# bias (our boolean mask becomes one), even query and key lengths in training.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
SPELLED_OUT = 'spelled_out'


def attention_implementation(backend: str, dtype, dropout: bool, head_dim: int,
                             length: int, bias: bool = False) -> str:
  """How SelfAttention computes attention for these settings.

  'cudnn' (the fused flash-attention kernel of `jax.nn.dot_product_attention`) on GPU when it
  supports them: compute dtype bf16/fp16, no attention dropout (the kernel has none here),
  head_dim % 8 == 0 and <= CUDNN_MAX_HEAD_DIM, an even sequence length. SPELLED_OUT
  (`spelled_out_attention`) on CPU in every precision: XLA:CPU runs dot_product_attention's
  products in the [batch, length, heads, head_dim] layout it is given, and a MiniLM forward
  with the head-major spelled-out form took 4-11% less CPU time in f32 and bf16 at 32 x 128
  and 1 x 512 (wall time in f32 at 32 x 128: 735 against 783 ms; benchmarks/cpu_attention.py,
  docs/sentence/inference_avx2/cpu_attention.txt; in bf16 the fused form's half-precision
  products also run at f32 speed, benchmarks/cpu_matmul.py). Else 'xla', which is also what
  the default (None) runs. (With attention dropout, or sowing the weights, every backend
  spells it out.) A trained score `bias` (relative positions) stays on XLA's form: cuDNN's
  kernel would round it to the operands' half precision, and its bias gradient has not been
  run against this one (no GPU test yet).
  """
  half = jnp.dtype(dtype) in CUDNN_DTYPES
  if (backend == 'gpu' and half and not dropout and not bias
      and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM and length % 2 == 0):
    return 'cudnn'
  if backend == 'cpu':
    return SPELLED_OUT
  return 'xla'


def spelled_out_attention(query, key, value, mask, dtype, dropout: Callable = lambda w: w,
                          sow: Callable | None = None, bias: jax.Array | None = None) -> jax.Array:
  """Softmax attention between two `matmul`s, head-major, normalised after the value product.

  query/key/value [batch, length, heads, head_dim], mask [batch, 1, query, key] bool ->
  context [batch, query, heads, head_dim] in `dtype`. The products run over [batch, heads,
  length, head_dim] operands, and each query's weights are divided by their sum once, on
  the context (flash attention's order: a pass over [batch, heads, query, key] less).
  `dropout` drops weights before the value product, which equals dropping the normalised
  probabilities (the sum is a per-row scale); `sow`, if given, receives the probabilities.
  `bias` [batch, heads, query, key] (f32) is added to the scaled scores.
  """
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (query, key, value))  # [batch, heads, length, head_dim]
  scores = matmul('bhqd,bhkd->bhqk', q, k, dtype) * q.shape[-1] ** -0.5  # f32
  if bias is not None:
    scores = scores + bias
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  # The shift cancels in weights / total, so it needs no gradient.
  weights = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
  total = jnp.sum(weights, axis=-1, keepdims=True)  # [batch, heads, query, 1]
  if sow is not None:
    sow(weights / total)
  context = matmul('bhqk,bhkd->bhqd', dropout(weights), v, dtype) / total
  return jnp.swapaxes(context, 1, 2).astype(dtype)


class SelfAttention(nn.Module):
  """Bidirectional multi-head self-attention with a boolean mask.

  On GPU and TPU without attention dropout (or at eval) it runs `jax.nn.dot_product_attention`,
  as cuDNN's fused flash attention on GPU where that supports the settings
  (`attention_implementation`), else as XLA's (which fuses it); with dropout (neither fused
  form has it), and on CPU, it runs `spelled_out_attention`. Applied with the
  'intermediates' collection mutable (analysis/), it also spells it out and sows the
  probabilities as 'attention_weights' ([batch, heads, query, key], f32); otherwise nothing
  changes.

  A relative `position_embedding_type` adds transformers' relative scores: with E[i - j] a
  learned [head_dim] row per distance (`distance_embedding`, shared by the heads), query i
  and key j score (q_i.k_j + q_i.E[i-j] (+ k_j.E[i-j] for 'relative_key_query')) / sqrt(head_dim).
  Distances are between places in the row, as transformers computes them from 0..length-1.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    query = HeadProjection(c, to_heads=True, name='query')(x)  # [batch, length, heads, head_dim]
    key = HeadProjection(c, to_heads=True, name='key')(x)
    value = HeadProjection(c, to_heads=True, name='value')(x)
    bias = self.relative_scores(query, key) if c.relative_position_terms else None

    dropout = not deterministic and c.attention_dropout_rate > 0.0
    implementation = attention_implementation(jax.default_backend(), query.dtype, dropout,
                                              c.head_dim, x.shape[1], bias=bias is not None)
    if (not dropout and implementation != SPELLED_OUT
        and not self.is_mutable_collection('intermediates')):
      context = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                             implementation=implementation)
    else:
      drop = nn.Dropout(c.attention_dropout_rate)
      context = spelled_out_attention(
          query, key, value, mask, c.compute_dtype,
          dropout=lambda weights: drop(weights, deterministic=not dropout),
          sow=(lambda probs: self.sow('intermediates', 'attention_weights', probs))
          if self.is_mutable_collection('intermediates') else None, bias=bias)
    context = nn.with_logical_constraint(context, ('batch', 'length', 'heads', 'kv'))
    return HeadProjection(c, to_heads=False, name='output')(context)  # [batch, length, hidden]

  def relative_scores(self, query, key) -> jax.Array:
    """query, key [batch, length, heads, head_dim] -> the relative terms of the scaled scores,
    [batch, heads, query, key] f32.

    Each query (key) is multiplied with the 2 * length - 1 distances' rows in one dense
    matmul, and its scores are then read off at the distances i - j (Transformer-XL's
    relative shift, as a gather): no [query, key, head_dim] table as transformers builds it.
    """
    c = self.config
    length = query.shape[1]
    init = nn.initializers.normal(c.distance_init_range or c.initializer_range)
    table = nn.Embed(2 * c.max_position_embeddings - 1, c.head_dim, dtype=c.compute_dtype,
                     param_dtype=c.storage_dtype,
                     embedding_init=nn.with_logical_partitioning(init, (None, 'kv')),
                     name='distance_embedding')
    # Row r holds distance r - (length - 1); the table's row of distance d is d + max_positions - 1.
    rows = table(jnp.arange(2 * length - 1) + c.max_position_embeddings - length)  # [2L-1, head_dim]
    if c.distance_layer_norm:
      rows = layer_norm(c, 'distance_layer_norm', axis='kv')(rows)
    distance = jnp.arange(length)[:, None] - jnp.arange(length)[None, :] + length - 1  # [L, L]: i - j
    # Each token against every distance: [batch, length, heads, 2L-1] (a dense layer's product).
    by_query = matmul('...d,rd->...r', query, rows, c.compute_dtype)
    scores = jnp.take_along_axis(by_query, distance[None, :, None, :], axis=-1)  # [b, i, h, j]
    if c.relative_position_terms == 2:
      by_key = matmul('...d,rd->...r', key, rows, c.compute_dtype)
      # Key j's entry at distance i - j, for each query i: [b, j, h, i].
      scores = scores + jnp.transpose(
          jnp.take_along_axis(by_key, distance.T[None, :, None, :], axis=-1), (0, 3, 2, 1))
    scores = jnp.transpose(scores, (0, 2, 1, 3))  # [batch, heads, query, key]
    return scores * c.head_dim ** -0.5


class MLP(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = Dense(c, c.intermediate_size, ('embed', 'mlp'), name='intermediate')(x)
    h = nn.with_logical_constraint(activation(c, h), ('batch', 'length', 'mlp'))
    return Dense(c, c.hidden_size, ('mlp', 'embed'), name='output')(h)


class TransformerLayer(nn.Module):
  """Post-LN block (BERT): x = LN(x + Attn(x)); x = LN(x + MLP(x))."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    dropout = nn.Dropout(c.hidden_dropout_rate)
    attended = SelfAttention(c, name='attention')(x, mask, deterministic)
    x = layer_norm(c, 'attention_layer_norm')(x + dropout(attended, deterministic=deterministic))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    transformed = MLP(c, name='mlp')(x)
    x = layer_norm(c, 'output_layer_norm')(x + dropout(transformed, deterministic=deterministic))
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class ScanBody(nn.Module):
  """One TransformerLayer as the body of `nn.scan`: (x, mask) -> (x, None)."""
  config: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask):
    return layer_class(self.config)(self.config, name='layer')(x, mask, self.deterministic), None


def layer_class(config: EncoderConfig):
  """TransformerLayer, wrapped in `nn.remat` with the config's policy unless 'none'."""
  if config.remat_policy == 'none':
    return TransformerLayer
  return nn.remat(TransformerLayer, policy=REMAT_POLICIES[config.remat_policy],
                  static_argnums=(3,))  # (self, x, mask, deterministic)


class TransformerStack(nn.Module):
  """`num_layers` TransformerLayers, each optionally rematerialised.

  Unrolled, layer i's parameters are `layer_{i}/...`. With `scan_layers` the layers are
  one `nn.scan` body whose parameters are stacked along a leading 'layers' axis
  (`stacked/layer/...`, [num_layers, ...]): one layer is traced and compiled instead of
  num_layers. `unroll_layers` / `stack_layers` convert between the two layouts.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    if c.scan_layers:
      stacked = nn.scan(
          ScanBody, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=nn.broadcast, length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = stacked(c, deterministic, name='stacked')(x, mask)
      return x
    for i in range(c.num_layers):
      x = layer_class(c)(c, name=f'layer_{i}')(x, mask, deterministic)
    return x


def unroll_layers(params):
  """Any params tree with scanned stacks (`stacked/layer/...`) -> the unrolled `layer_{i}` layout."""
  if not isinstance(params, dict):
    return params
  if set(params) == {'stacked'}:
    layers = params['stacked']['layer']
    num_layers = jax.tree.leaves(layers)[0].shape[0]
    return {f'layer_{i}': jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)}
  return {name: unroll_layers(value) for name, value in params.items()}


def stack_layers(params):
  """The inverse of `unroll_layers`: every `layer_0..layer_{n-1}` dict -> `stacked/layer/...`."""
  if not isinstance(params, dict):
    return params
  names = [f'layer_{i}' for i in range(len(params))]
  if params and sorted(params) == sorted(names):
    layers = [params[name] for name in names]
    return {'stacked': {'layer': jax.tree.map(lambda *a: np.stack(a), *layers)}}
  return {name: stack_layers(value) for name, value in params.items()}
