"""ELECTRA model pair and config: paper sizes, one shared embedding block, logical axes.

The forward passes are tested against transformers in test_electra_interop.py and through
the objective (gradients reach the shared embeddings from both networks) in
test_electra_objective.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from encoders.config import ConfigError
from encoders.configs import electra as electra_configs
from encoders.electra import ElectraConfig, ElectraPair

TINY = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
            max_position_embeddings=16, embedding_size=16, generator_size_fraction=0.5,
            hidden_dropout_rate=0.0, attention_dropout_rate=0.0)


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


def test_relative_positions_config_reaches_both_networks():
  config = electra_configs.get_config('size=tiny,positions=relative')
  assert config.optimizer.learning_rate == 5e-4  # ELECTRA-Small's, where absolute tiny collapses.
  assert electra_configs.get_config('tiny').optimizer.learning_rate == 2e-4
  relative = {field: config.model[field] for field in ('position_embedding_type',
                                                      'distance_layer_norm')}
  pair = ElectraPair(ElectraConfig.from_config({**TINY, **relative}))
  ids = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(jax.eval_shape(pair.init, jax.random.key(0), ids)['params'])
  paths = ['/'.join(str(k.key) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  for network in ('generator_encoder', 'discriminator_encoder'):
    assert any(p.startswith(network) and 'distance_layer_norm' in p for p in paths), network
  with pytest.raises(ValueError, match='positions'):
    electra_configs.get_config('size=tiny,positions=rotary')
