"""encoders.bert / layers / config from first principles: packing, masking, dtypes, axes, remat, errors."""
import dataclasses
import functools
import importlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from encoders import bert, layers
from encoders.config import ConfigError, EncoderConfig
from encoders.configs import bert as bert_config

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                       max_position_embeddings=16, hidden_dropout_rate=0.0,
                       attention_dropout_rate=0.0)
LENGTH = 12


def init_params(model, seed=0):
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, LENGTH), jnp.int32))['params'])


@pytest.fixture(scope='module')
def encoder():
  """(apply, params) of a tiny Encoder: apply(params, ids, segments, positions, types) -> hidden."""
  model = bert.Encoder(CONFIG)
  apply = jax.jit(lambda params, *inputs: model.apply({'params': params}, *inputs)[0])
  return apply, init_params(model)


def test_packed_row_equals_examples_alone(encoder):
  apply, params = encoder
  rng = np.random.default_rng(0)
  first, second = rng.integers(5, 50, 5), rng.integers(5, 50, 4)
  first_types, second_types = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1])
  ids = np.zeros((3, LENGTH), np.int32)
  segments, positions, types = np.zeros_like(ids), np.zeros_like(ids), np.zeros_like(ids)
  # Row 0: both examples packed; rows 1, 2: each alone, padded.
  ids[0, :9], segments[0, :9] = np.r_[first, second], np.r_[[1] * 5, [2] * 4]
  positions[0, :9], types[0, :9] = np.r_[np.arange(5), np.arange(4)], np.r_[first_types, second_types]
  for row, example, example_types in ((1, first, first_types), (2, second, second_types)):
    n = len(example)
    ids[row, :n], segments[row, :n], positions[row, :n], types[row, :n] = (
        example, 1, np.arange(n), example_types)
  hidden = np.asarray(apply(params, ids, segments, positions, types))
  np.testing.assert_allclose(hidden[0, :5], hidden[1, :5], atol=1e-5)
  np.testing.assert_allclose(hidden[0, 5:9], hidden[2, :4], atol=1e-5)
  assert np.abs(hidden[0, :5] - hidden[2, :5]).max() > 0.1  # Different inputs do differ.


def test_padding_keys_are_masked(encoder):
  apply, params = encoder
  ids = np.array([[2, 7, 8, 9, 3, 0, 0, 0, 0, 0, 0, 0]] * 2, np.int32)
  segments = (np.arange(LENGTH) < 5).astype(np.int32)[None].repeat(2, 0)
  positions = np.arange(LENGTH)[None].repeat(2, 0) * segments
  ids[1, 5:] = np.arange(30, 37)  # Other tokens, same segment 0, at the padding.
  hidden = np.asarray(apply(params, ids, segments, positions, np.zeros_like(ids)))
  np.testing.assert_allclose(hidden[0, :5], hidden[1, :5], atol=1e-6)
  # The same change inside the segment does change the real tokens.
  ids[1, 5:], segments[1, 5:] = ids[0, 5:], 0
  ids[1, 3] = 40
  hidden = np.asarray(apply(params, ids, segments, positions, np.zeros_like(ids)))
  assert np.abs(hidden[0, :3] - hidden[1, :3]).max() > 1e-3


def test_bf16_compute_with_f32_params_stays_close():
  model_f32 = bert.Encoder(CONFIG)
  model_bf16 = bert.Encoder(dataclasses.replace(CONFIG, dtype='bfloat16'))
  params = init_params(model_bf16)
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(params))} == {jnp.dtype('float32')}
  ids = np.random.default_rng(0).integers(0, 50, (2, LENGTH)).astype(np.int32)
  hidden_f32 = jax.jit(model_f32.apply)({'params': params}, ids)[0]
  hidden_bf16 = jax.jit(model_bf16.apply)({'params': params}, ids)[0]
  assert hidden_bf16.dtype == jnp.bfloat16
  diff = np.abs(np.asarray(hidden_bf16, np.float32) - np.asarray(hidden_f32))
  assert diff.max() < 0.1 and diff.mean() < 0.02  # LayerNorm outputs: entries of order 1.


# Logical axis names of every parameter of a model with all heads (path regex -> names).
EXPECTED_AXES = (
    (r'.*embeddings/word_embeddings/embedding', ('vocab', 'embed')),
    (r'.*embeddings/(position|token_type)_embeddings/embedding', (None, 'embed')),
    (r'.*layer_norm/(scale|bias)', ('embed',)),
    (r'.*attention/(query|key|value)/kernel', ('embed', 'heads', 'kv')),
    (r'.*attention/(query|key|value)/bias', ('heads', 'kv')),
    (r'.*attention/output/kernel', ('heads', 'kv', 'embed')),
    (r'.*attention/output/bias', ('embed',)),
    (r'.*mlp/intermediate/kernel', ('embed', 'mlp')),
    (r'.*mlp/intermediate/bias', ('mlp',)),
    (r'.*mlp/output/kernel', ('mlp', 'embed')),
    (r'.*mlp/output/bias', ('embed',)),
    (r'.*(pooler/dense|mlm_head/transform)/kernel', ('embed', 'embed_out')),
    (r'.*(pooler/dense|mlm_head/transform)/bias', ('embed_out',)),
    (r'mlm_head/bias', ('vocab',)),
    (r'sentence_order_head/dense/kernel', ('embed', None)),
    (r'sentence_order_head/dense/bias', (None,)),
    (r'.*attention/distance_embedding/embedding', (None, 'kv')),
)


@pytest.mark.parametrize('position_type,count', [('absolute', 30), ('relative_key', 31)])
def test_every_param_has_the_expected_logical_axes(position_type, count):
  config = dataclasses.replace(CONFIG, position_embedding_type=position_type)
  model = bert.EncoderForPreTraining(config, sentence_head=True)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))['params']
  leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  flat = {'/'.join(key.key for key in path): leaf for path, leaf in leaves}
  # 5 embedding, 16 layer (+1 distance table), 2 pooler, 5 MLM, 2 NSP.
  assert len(flat) == count
  for path, leaf in flat.items():
    matches = [axes for pattern, axes in EXPECTED_AXES if re.fullmatch(pattern, path)]
    assert len(matches) == 1, f'{path}: {len(matches)} table entries'
    assert isinstance(leaf, nn.Partitioned) and leaf.names == matches[0], path
    assert len(leaf.names) == leaf.value.ndim, path


def test_narrow_embeddings_are_projected_to_hidden():
  # ELECTRA-small's layout: embeddings at embedding_size, `embeddings_project` to hidden_size,
  # and the MLM head back to embedding_size for the tied decoder. Parity with transformers'
  # ElectraModel (which has this projection) is in test_electra_interop.py.
  model = bert.EncoderForPreTraining(dataclasses.replace(CONFIG, embedding_size=16))
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))['params']
  project = boxed['encoder']['embeddings_project']
  assert (project['kernel'].value.shape, project['kernel'].names) == ((16, 32), ('embed', 'embed_out'))
  assert (project['bias'].value.shape, project['bias'].names) == ((32,), ('embed_out',))
  assert boxed['encoder']['embeddings']['word_embeddings']['embedding'].value.shape == (50, 16)
  assert boxed['mlm_head']['transform']['kernel'].value.shape == (32, 16)
  params = init_params(model)
  ids = np.random.default_rng(0).integers(0, 50, (2, LENGTH)).astype(np.int32)
  assert model.apply({'params': params}, ids)['mlm_logits'].shape == (2, LENGTH, 50)
  for same in (None, 32):  # No projection when the widths agree.
    boxed = jax.eval_shape(bert.Encoder(dataclasses.replace(CONFIG, embedding_size=same)).init,
                           jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))['params']
    assert 'embeddings_project' not in boxed


@pytest.mark.parametrize('overrides,field', [
    (dict(hidden_size=30, num_heads=4), 'model.hidden_size'),
    (dict(dtype='float64'), 'model.dtype'),
    (dict(param_dtype='f32'), 'model.param_dtype'),
    (dict(hidden_act='swish'), 'model.hidden_act'),
    (dict(num_layers=0), 'model.num_layers'),
    (dict(pad_token_id=30522), 'model.pad_token_id'),
    (dict(remat_policy='some'), 'model.remat_policy'),
    (dict(attention_dropout_rate=1.0), 'model.attention_dropout_rate'),
    (dict(embedding_size=-4), 'model.embedding_size'),
    (dict(position_embedding_type='rotary'), 'model.position_embedding_type'),
    (dict(distance_init_range=0.2), 'model.distance_init_range'),  # Absolute: no distance table.
    (dict(distance_layer_norm=True), 'model.distance_layer_norm'),
    (dict(position_embedding_type='relative_key', position_init='sinusoidal'), 'model.position_init'),
    (dict(position_embedding_type='relative_key', distance_init_range=-0.2),
     'model.distance_init_range'),
])
def test_config_errors_name_the_field(overrides, field):
  config = bert_config.get_config('tiny').model
  config.update(overrides)
  with pytest.raises(ConfigError, match=re.escape(field)):
    EncoderConfig.from_config(config)


def test_unknown_size_is_named():
  with pytest.raises(ValueError, match="'huge'.*tiny, mini"):
    bert_config.get_config('huge')


def loss_grads(remat_policy: str, params, ids, targets):
  """Gradients of a loss on the hidden states; deterministic=False exercises remat's static argument."""
  model = bert.Encoder(dataclasses.replace(CONFIG, remat_policy=remat_policy))

  def loss(params):
    hidden, _ = model.apply({'params': params}, ids, deterministic=False)
    return jnp.mean((hidden - targets) ** 2)

  return jax.jit(jax.grad(loss))(params)


def test_remat_policies_give_the_same_gradients():
  params = init_params(bert.Encoder(CONFIG))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 50, (2, LENGTH)).astype(np.int32)
  targets = rng.normal(size=(2, LENGTH, CONFIG.hidden_size)).astype(np.float32)
  reference = loss_grads('none', params, ids, targets)
  assert float(jnp.abs(reference['layers']['layer_0']['mlp']['output']['kernel']).max()) > 0
  for policy in ('full', 'dots'):
    grads = loss_grads(policy, params, ids, targets)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=1e-5), grads, reference)


@pytest.mark.parametrize('position_type', ['absolute', 'relative_key_query'])
def test_attention_dropout_path_equals_fused_path(monkeypatch, position_type):
  # A rate so small that every probability is kept and scaled by exactly 1 in float32: the spelled-out
  # softmax path (taken when dropout is on) must then equal jax.nn.dot_product_attention, which
  # the deterministic run takes as on TPU (on CPU it would spell it out too), relative scores
  # as its bias. ('rbg' random bits compile much faster on CPU than threefry.)
  monkeypatch.setattr(layers, 'attention_implementation', lambda *args, **kwargs: 'xla')
  model = bert.Encoder(dataclasses.replace(CONFIG, attention_dropout_rate=1e-9,
                                           position_embedding_type=position_type))
  params = init_params(model)
  ids = np.random.default_rng(0).integers(0, 50, (2, LENGTH)).astype(np.int32)
  segments = np.array([[1] * 7 + [2] * 3 + [0] * 2, [1] * 12], np.int32)

  def run(deterministic):
    return jax.jit(lambda p: model.apply({'params': p}, ids, segments, deterministic=deterministic,
                                         rngs={'dropout': jax.random.key(0, impl='rbg')})[0])(params)

  np.testing.assert_allclose(run(False), run(True), atol=1e-5)


def test_sinusoidal_position_init_changes_only_the_position_table():
  """position_init='sinusoidal': row p, features 2i and 2i+1 are sin and cos of
  p / 10000^(2i / dim), times initializer_range * sqrt(2); every other parameter is the one
  the normal init draws from the same key."""
  normal = init_params(bert.Encoder(CONFIG))
  sinusoidal = init_params(bert.Encoder(dataclasses.replace(CONFIG, position_init='sinusoidal')))
  table = np.asarray(sinusoidal['embeddings']['position_embeddings']['embedding'])
  positions, dim = CONFIG.max_position_embeddings, CONFIG.hidden_size
  frequencies = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)
  expected = np.zeros((positions, dim))
  expected[:, 0::2] = np.sin(np.arange(positions)[:, None] * frequencies)
  expected[:, 1::2] = np.cos(np.arange(positions)[:, None] * frequencies)
  np.testing.assert_allclose(table, expected * CONFIG.initializer_range * np.sqrt(2), atol=1e-7)
  flat_normal = dict(jax.tree_util.tree_leaves_with_path(normal))
  for path, leaf in jax.tree_util.tree_leaves_with_path(sinusoidal):
    if 'position_embeddings' not in jax.tree_util.keystr(path):
      np.testing.assert_array_equal(leaf, flat_normal[path])


def test_distance_init_range_sets_only_the_distance_tables():
  relative = dataclasses.replace(CONFIG, position_embedding_type='relative_key', num_layers=2)
  default = init_params(bert.Encoder(relative))
  wide = init_params(bert.Encoder(dataclasses.replace(relative, distance_init_range=0.5)))
  flat_default = dict(jax.tree_util.tree_leaves_with_path(default))
  for path, leaf in jax.tree_util.tree_leaves_with_path(wide):
    if 'distance_embedding' in jax.tree_util.keystr(path):
      assert np.std(leaf) == pytest.approx(0.5, rel=0.05)
      assert np.std(flat_default[path]) == pytest.approx(CONFIG.initializer_range, rel=0.05)
    else:
      np.testing.assert_array_equal(leaf, flat_default[path])


def test_distance_layer_norm_reads_the_normalised_table():
  """With distance_layer_norm the encoder equals the plain relative encoder whose distance
  tables hold each row normalised in numpy, times the norm's scale, plus its bias."""
  relative = dataclasses.replace(CONFIG, position_embedding_type='relative_key_query')
  normed_model = bert.Encoder(dataclasses.replace(relative, distance_layer_norm=True))
  params = init_params(normed_model)
  norm = params['layers']['layer_0']['attention']['distance_layer_norm']
  rng = np.random.default_rng(1)
  norm['scale'] = (1 + 0.3 * rng.normal(size=norm['scale'].shape)).astype(np.float32)
  norm['bias'] = (0.3 * rng.normal(size=norm['bias'].shape)).astype(np.float32)
  table = np.asarray(params['layers']['layer_0']['attention']['distance_embedding']['embedding'],
                     np.float64)
  centred = table - table.mean(-1, keepdims=True)
  normalised = (centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + CONFIG.layer_norm_eps)
                * norm['scale'] + norm['bias'])

  def plain_params(distance_table):
    """params for the encoder without the norm, with `distance_table` as layer 0's table."""
    plain = jax.tree.map(lambda x: x, params)  # New dicts, same leaves.
    attention = plain['layers']['layer_0']['attention']
    del attention['distance_layer_norm']
    attention['distance_embedding']['embedding'] = distance_table.astype(np.float32)
    return {'params': plain}

  ids = np.random.default_rng(0).integers(0, 50, (2, LENGTH)).astype(np.int32)
  ours = np.asarray(jax.jit(normed_model.apply)({'params': params}, ids)[0])
  plain_apply = jax.jit(bert.Encoder(relative).apply)
  np.testing.assert_allclose(ours, plain_apply(plain_params(normalised), ids)[0], atol=1e-5)
  assert np.abs(ours - plain_apply(plain_params(table), ids)[0]).max() > 1e-3  # The norm matters.


@pytest.mark.parametrize('family', ['albert', 'deberta', 'distilbert'])
def test_relative_positions_are_refused_where_not_built(family):
  from encoders import families  # pylint: disable=g-import-not-at-top
  model_config = importlib.import_module(f'encoders.configs.{family}').get_config('tiny').model
  fields = {**model_config.to_dict(), 'position_embedding_type': 'relative_key'}
  families.get(family).config_class.from_config(model_config)  # Valid as configured.
  with pytest.raises(ConfigError, match=r"position_embedding_type='relative_key'"):
    families.get(family).config_class.from_config(fields)


@pytest.mark.parametrize('family', ['bert', 'deberta', 'distilbert'])
def test_position_init_errors(family):
  from encoders import families  # pylint: disable=g-import-not-at-top
  config_class = families.get(family).config_class
  fields = {**dataclasses.asdict(CONFIG), 'type_vocab_size': 1 if family == 'distilbert' else 2}
  with pytest.raises(ConfigError, match=r"position_init='uniform'"):
    config_class.from_config({**fields, 'position_init': 'uniform'})
  if family != 'bert':  # Their absolute tables do not read the field: a silent no-op otherwise.
    with pytest.raises(ConfigError, match=r"position_init='sinusoidal'"):
      config_class.from_config({**fields, 'position_init': 'sinusoidal'})
