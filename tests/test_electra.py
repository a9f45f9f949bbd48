"""ELECTRA model pair and config: generator sizes, shared embeddings, heads, logical axes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import electra as electra_configs
from encoders.config import ConfigError
from encoders.electra import ElectraConfig, ElectraPair

TINY = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
            max_position_embeddings=16, embedding_size=16, generator_size_fraction=0.5,
            hidden_dropout_rate=0.0, attention_dropout_rate=0.0)


def tiny_pair(**overrides):
  config = ElectraConfig.from_config({**TINY, **overrides})
  model = ElectraPair(config)
  ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) + 3
  params = jax.jit(model.init)(jax.random.key(0), ids, masked_positions=jnp.zeros((2, 2), jnp.int32))
  return model.apply, nn.unbox(params['params'])


# Released google/electra-{base,large}-generator configs (HF hub): hidden 256, 4 heads, MLP 1024.
@pytest.mark.parametrize('size, discriminator, generator, embedding', [
    ('small', (12, 256, 4, 1024), (12, 64, 1, 256), 128),
    ('base', (12, 768, 12, 3072), (12, 256, 4, 1024), 768),
    ('large', (24, 1024, 16, 4096), (24, 256, 4, 1024), 1024),
])
def test_paper_sizes(size, discriminator, generator, embedding):
  config = ElectraConfig.from_config(electra_configs.get_config(size).model)
  shape = lambda c: (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size)
  assert shape(config.discriminator) == discriminator
  assert shape(config.generator) == generator
  assert config.embedding_size == embedding


def test_config_sections_and_errors():
  config = electra_configs.get_config('large')
  assert config.model.family == 'electra' and config.model.rtd_weight == 50.0
  assert (config.data.mask_rate, config.data.seq_length, config.train.batch_size) == (0.25, 512, 2048)
  assert (config.optimizer.learning_rate, config.optimizer.eps) == (2e-4, 1e-6)
  ElectraConfig.from_config(electra_configs.get_config('tiny').model)
  with pytest.raises(ValueError, match='huge'):
    electra_configs.get_config('huge')
  with pytest.raises(ConfigError, match='model.generator_num_heads'):
    ElectraConfig.from_config({**TINY, 'generator_num_heads': 3})
  with pytest.raises(ConfigError, match='model.embedding_size'):
    ElectraConfig.from_config({**TINY, 'embedding_size': -4})


def test_parameters_shared_once_with_logical_axes():
  config = ElectraConfig.from_config({**TINY, 'generator_size_fraction': 0.25})
  ids = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(ElectraPair(config).init, jax.random.key(0), ids)['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
  params = nn.unbox(boxed)
  assert set(params) == {'embeddings', 'generator_encoder', 'generator_predictions',
                         'discriminator_encoder', 'discriminator_predictions'}
  assert params['embeddings']['word_embeddings']['embedding'].shape == (50, 16)
  # Both networks are wider than the 16-wide embeddings (generator: 0.25 * 32 = 8 < 16).
  assert params['generator_encoder']['embeddings_project']['kernel'].shape == (16, 8)
  assert params['discriminator_encoder']['embeddings_project']['kernel'].shape == (16, 32)
  assert params['generator_predictions']['transform']['kernel'].shape == (8, 16)
  assert params['discriminator_predictions']['dense_prediction']['kernel'].shape == (32, 1)
  # No projection when a network is as wide as the embeddings.
  same = nn.unbox(jax.eval_shape(ElectraPair(ElectraConfig.from_config(
      {**TINY, 'embedding_size': 32})).init, jax.random.key(0), ids)['params'])
  assert 'embeddings_project' not in same['discriminator_encoder']
  assert 'embeddings_project' in same['generator_encoder']


def test_both_losses_reach_the_shared_embeddings():
  apply, params = tiny_pair()
  ids = jnp.array([[2, 7, 9, 4, 1, 0]], jnp.int32)

  @jax.jit
  def grad_norms(params):
    norms = {}
    for method in ('generator', 'discriminator'):
      grads = jax.grad(lambda p: jnp.sum(apply({'params': p}, ids, method=method) ** 2))(params)
      norms[method] = {name: optax.tree.norm(tree) for name, tree in grads.items()}
    return norms

  norms = grad_norms(params)
  assert norms['generator']['embeddings'] > 0 and norms['discriminator']['embeddings'] > 0
  assert norms['generator']['discriminator_encoder'] == 0
  assert norms['discriminator']['generator_encoder'] == 0


def test_generator_logits_use_the_tied_embeddings():
  """Recomputes the generator's logits from its head's LayerNorm output: the decoder is the word table."""
  apply, params = tiny_pair()
  ids = jnp.array([[2, 7, 9, 4, 1, 0], [3, 3, 5, 6, 0, 0]], jnp.int32)
  positions = jnp.array([[1, 3], [0, 2]], jnp.int32)

  @jax.jit
  def run(params):
    sparse = apply({'params': params}, ids, masked_positions=positions, method='generator')
    dense, state = apply({'params': params}, ids, method='generator', capture_intermediates=True)
    return sparse, dense, state['intermediates']['generator_predictions']['layer_norm']['__call__'][0]

  sparse, dense, head_output = run(params)
  np.testing.assert_allclose(sparse, np.take_along_axis(dense, positions[..., None], 1), atol=1e-6)
  table = np.asarray(params['embeddings']['word_embeddings']['embedding'])
  expected = np.asarray(head_output) @ table.T + np.asarray(params['generator_predictions']['bias'])
  np.testing.assert_allclose(dense, expected, atol=1e-5)


def test_segments_keep_packed_examples_apart():
  apply, params = tiny_pair()
  first, second = [5, 6, 7], [8, 9]
  packed = jnp.array([first + second + [0]], jnp.int32)
  segments = jnp.array([[1, 1, 1, 2, 2, 0]], jnp.int32)
  positions = jnp.array([[0, 1, 2, 0, 1, 0]], jnp.int32)
  discriminator = jax.jit(functools.partial(apply, method='discriminator'))
  logits = discriminator({'params': params}, packed, segments, positions)
  alone = discriminator({'params': params}, jnp.array([second], jnp.int32))
  np.testing.assert_allclose(logits[0, 3:5], alone[0], atol=1e-5)
