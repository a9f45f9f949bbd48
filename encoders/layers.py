"""Building blocks shared by the encoder families: embeddings, attention, MLP, layer, stack.

Every parameter is created with logical axis names and the residual stream carries
logical constraints, so a mesh shards them by the rules of `training/sharding.py`:

  batch, length  activations          vocab    word embeddings / MLM bias
  embed          the hidden size      heads    attention heads
  kv             per-head features    mlp      the MLP's inner size
  embed_out      output side of square hidden->hidden kernels (pooler, MLM transform)
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoders.config import EncoderConfig

ACTIVATIONS: dict[str, Callable] = {
    'gelu': functools.partial(nn.gelu, approximate=False),  # BERT's exact erf form.
    'gelu_new': functools.partial(nn.gelu, approximate=True),
    'relu': nn.relu,
}

REMAT_POLICIES = {
    'full': None,  # Save nothing: recompute the whole layer in the backward pass.
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def normal_init(config: EncoderConfig, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def zeros_init(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def layer_norm(config: EncoderConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)),
      bias_init=zeros_init(('embed',)))


def dense(config: EncoderConfig, features: int, axes: tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(
      features, dtype=config.compute_dtype, param_dtype=config.storage_dtype, name=name,
      kernel_init=normal_init(config, axes), bias_init=zeros_init(axes[1:]))


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """[batch, length] segment ids -> [batch, 1, length, length] bool mask.

  A token attends only to tokens of its own segment, so packed examples never see
  each other and real tokens never see padding (segment 0). Padding tokens attend to
  padding, which keeps every softmax row non-empty.
  """
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None, :, :]


class Embeddings(nn.Module):
  """Word + absolute position + token type embeddings, then LayerNorm and dropout."""
  config: EncoderConfig

  def setup(self):
    c = self.config
    embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=c.compute_dtype,
                              param_dtype=c.storage_dtype)
    self.word_embeddings = embed(c.vocab_size, embedding_init=normal_init(c, ('vocab', 'embed')))
    self.position_embeddings = embed(c.max_position_embeddings,
                                     embedding_init=normal_init(c, (None, 'embed')))
    self.token_type_embeddings = embed(c.type_vocab_size,
                                       embedding_init=normal_init(c, (None, 'embed')))
    self.layer_norm = layer_norm(c, 'layer_norm')
    self.dropout = nn.Dropout(c.hidden_dropout_rate)

  def __call__(self, input_ids, position_ids, token_type_ids, deterministic: bool):
    x = (self.word_embeddings(input_ids)
         + self.position_embeddings(position_ids + self.config.position_offset)
         + self.token_type_embeddings(token_type_ids))  # [batch, length, hidden]
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def attend(self, x: jax.Array) -> jax.Array:
    """[..., hidden] -> [..., vocab]: the decoder tied to the word embeddings."""
    return self.word_embeddings.attend(x)


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
    dtype = c.compute_dtype
    return jnp.einsum(equation, x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class SelfAttention(nn.Module):
  """Bidirectional multi-head self-attention with a boolean mask.

  Without attention dropout (or at eval) it runs `jax.nn.dot_product_attention`,
  which XLA fuses and which uses cuDNN flash attention on GPU; with dropout it
  spells the softmax out, since the fused kernel has no dropout.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    query = HeadProjection(c, to_heads=True, name='query')(x)  # [batch, length, heads, head_dim]
    key = HeadProjection(c, to_heads=True, name='key')(x)
    value = HeadProjection(c, to_heads=True, name='value')(x)

    if deterministic or c.attention_dropout_rate == 0.0:
      context = jax.nn.dot_product_attention(query, key, value, mask=mask)
    else:
      scores = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                          preferred_element_type=jnp.float32) / jnp.sqrt(c.head_dim)
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1)  # [batch, heads, query, key], f32
      probs = nn.Dropout(c.attention_dropout_rate)(probs, deterministic=False)
      context = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(value.dtype), value)
    context = nn.with_logical_constraint(context, ('batch', 'length', 'heads', 'kv'))
    return HeadProjection(c, to_heads=False, name='output')(context)  # [batch, length, hidden]


class MLP(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = dense(c, c.intermediate_size, ('embed', 'mlp'), 'intermediate')(x)
    h = nn.with_logical_constraint(ACTIVATIONS[c.hidden_act](h), ('batch', 'length', 'mlp'))
    return dense(c, c.hidden_size, ('mlp', 'embed'), 'output')(h)


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
