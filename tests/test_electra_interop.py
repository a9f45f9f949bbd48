"""HF ELECTRA interop: parity with transformers (torch, CPU) on import, and export round trips."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from encoders import bert, electra_interop
from encoders.config import ConfigError, EncoderConfig
from encoders.electra import ElectraConfig, ElectraPair, discriminator_as_encoder

BOUND = 1e-4
HF_FIELDS = dict(vocab_size=60, embedding_size=24, max_position_embeddings=32,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 attn_implementation='eager')
DISCRIMINATOR = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64)
GENERATOR = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def randomise(model: torch.nn.Module, seed: int) -> None:
  """Every weight random (LayerNorm scales around 1), so no parameter can be read wrongly unseen."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * 0.2
      param.copy_(noise + 1.0 if name.endswith('LayerNorm.weight') else noise)


@pytest.fixture(scope='module', params=['absolute', 'relative_key_query'])
def hf_pair(tmp_path_factory, request):
  """A random HF discriminator and generator sharing their embeddings, saved with safetensors;
  with absolute positions, and with transformers' relative ones (a distance table per layer)."""
  fields = {**HF_FIELDS, 'position_embedding_type': request.param}
  discriminator = transformers.ElectraForPreTraining(
      transformers.ElectraConfig(**fields, **DISCRIMINATOR)).eval()
  generator = transformers.ElectraForMaskedLM(
      transformers.ElectraConfig(**fields, **GENERATOR)).eval()
  randomise(discriminator, 0)
  randomise(generator, 1)
  generator.electra.embeddings.load_state_dict(discriminator.electra.embeddings.state_dict())
  generator.tie_weights()
  directories = {}
  for name, model in (('discriminator', discriminator), ('generator', generator)):
    directories[name] = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(directories[name], safe_serialization=True)
  return discriminator, generator, directories


def padded_batch():
  rng = np.random.default_rng(0)
  input_ids = rng.integers(1, 60, (2, 10)).astype(np.int32)
  attention_mask = np.ones((2, 10), np.int32)
  attention_mask[1, 6:] = 0
  input_ids[attention_mask == 0] = 0
  token_type_ids = (np.arange(10) >= 5).astype(np.int32)[None].repeat(2, 0) * attention_mask
  return input_ids, attention_mask, token_type_ids


def hf_outputs(discriminator, generator, batch):
  inputs = {name: torch.from_numpy(array.astype(np.int64)) for name, array in
            zip(('input_ids', 'attention_mask', 'token_type_ids'), batch)}
  with torch.no_grad():
    return discriminator(**inputs).logits.numpy(), generator(**inputs).logits.numpy()


@functools.partial(jax.jit, static_argnums=0)
def our_outputs(model, params, input_ids, attention_mask, token_type_ids):
  # HF's attention_mask is our segment_ids: one segment per row, 0 at padding.
  inputs = (input_ids, attention_mask, None, token_type_ids)
  return (model.apply({'params': params}, *inputs, method='discriminator'),
          model.apply({'params': params}, *inputs, method='generator'))


def max_error(ours, theirs, attention_mask):
  real = attention_mask.astype(bool)  # Padded positions differ by design (they attend to padding).
  return float(np.max(np.abs(np.asarray(ours)[real] - theirs[real])))


def test_import_matches_transformers(hf_pair, record_figure):
  discriminator, generator, directories = hf_pair
  model_config = electra_interop.read_model_config(directories['discriminator'],
                                                   directories['generator'])
  config = ElectraConfig.from_config(model_config)
  assert (config.generator.hidden_size, config.discriminator.hidden_size) == (16, 32)
  assert config.embedding_size == 24
  model = ElectraPair(config)
  params = electra_interop.load_params(model, directories['discriminator'], directories['generator'])

  batch = padded_batch()
  rtd_ours, mlm_ours = our_outputs(model, params, *batch)
  rtd_hf, mlm_hf = hf_outputs(discriminator, generator, batch)
  rtd_error, mlm_error = max_error(rtd_ours, rtd_hf, batch[1]), max_error(mlm_ours, mlm_hf, batch[1])
  record_figure('rtd max|diff|', rtd_error, f'<= {BOUND}')
  record_figure('mlm max|diff|', mlm_error, f'<= {BOUND}')
  assert rtd_error <= BOUND and mlm_error <= BOUND
  assert np.abs(rtd_hf).max() > 0.1 and np.abs(mlm_hf).max() > 0.1  # Not trivially small.

  # Each network also loads on its own, with only its own parameters.
  alone = electra_interop.load_params(model, discriminator_dir=directories['discriminator'])
  assert set(alone) == {'embeddings', 'discriminator_encoder', 'discriminator_predictions'}
  jax.tree.map(np.testing.assert_array_equal, alone, {name: params[name] for name in alone})


def test_discriminator_as_a_bert_encoder_matches_transformers(hf_pair, record_figure):
  # What fine-tuning builds from an ELECTRA workdir: the discriminator's weights in a BERT
  # Encoder with `embeddings_project` (24 -> 32), against transformers' ElectraModel.
  discriminator, _, directories = hf_pair
  model_config = electra_interop.read_model_config(directories['discriminator'])
  pair = ElectraPair(ElectraConfig.from_config(model_config))
  params = discriminator_as_encoder(
      electra_interop.load_params(pair, discriminator_dir=directories['discriminator']))
  encoder = bert.Encoder(EncoderConfig.from_config(model_config))
  input_ids, attention_mask, token_type_ids = padded_batch()
  hidden, _ = jax.jit(encoder.apply)({'params': params['encoder']}, input_ids, attention_mask,
                                     None, token_type_ids)
  with torch.no_grad():
    theirs = discriminator.electra(
        input_ids=torch.from_numpy(input_ids.astype(np.int64)),
        attention_mask=torch.from_numpy(attention_mask.astype(np.int64)),
        token_type_ids=torch.from_numpy(token_type_ids.astype(np.int64))).last_hidden_state.numpy()
  assert 'embeddings_project' in params['encoder']
  error = max_error(hidden, theirs, attention_mask)
  record_figure('hidden max|diff|', error, f'<= {BOUND}')
  assert error <= BOUND and np.abs(theirs).max() > 0.1


def test_export_round_trip_loads_in_transformers(hf_pair, tmp_path, record_figure):
  _, _, hf_directories = hf_pair
  # The imported architecture (so the jitted forward is reused), with parameters of our own.
  config = ElectraConfig.from_config(electra_interop.read_model_config(
      hf_directories['discriminator'], hf_directories['generator']))
  model = ElectraPair(config)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(  # LayerNorm scales around 1, the rest around 0.
      lambda path, x: (path[-1].key == 'scale') + rng.normal(0, 0.2, x.shape).astype(np.float32),
      shapes['params'])
  directories = electra_interop.save_pair(str(tmp_path), model, params)

  batch = padded_batch()
  rtd_ours, mlm_ours = our_outputs(model, params, *batch)
  loaded = {}
  for network, cls in (('discriminator', transformers.ElectraForPreTraining),
                       ('generator', transformers.ElectraForMaskedLM)):
    loaded[network], info = cls.from_pretrained(directories[network], output_loading_info=True,
                                                attn_implementation='eager')
    assert all(not keys for keys in info.values()), info
  rtd_hf, mlm_hf = hf_outputs(loaded['discriminator'].eval(), loaded['generator'].eval(), batch)
  assert np.abs(rtd_hf).max() > 0.1 and np.abs(mlm_hf).max() > 0.1  # Not trivially small.
  rtd_error, mlm_error = max_error(rtd_ours, rtd_hf, batch[1]), max_error(mlm_ours, mlm_hf, batch[1])
  record_figure('rtd max|diff|', rtd_error, f'<= {BOUND}')
  record_figure('mlm max|diff|', mlm_error, f'<= {BOUND}')
  assert rtd_error <= BOUND and mlm_error <= BOUND

  # And back: the exported pair reads in to the same parameters.
  reloaded = electra_interop.load_params(model, directories['discriminator'],
                                         directories['generator'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), reloaded, params)


def test_mismatched_pairs_are_refused(hf_pair, tmp_path):
  _, generator, directories = hf_pair
  config = ElectraConfig.from_config(electra_interop.read_model_config(
      directories['discriminator'], directories['generator']))
  with torch.no_grad():
    generator.electra.embeddings.position_embeddings.weight.add_(1.0)
  try:
    generator.save_pretrained(str(tmp_path), safe_serialization=True)
  finally:
    with torch.no_grad():
      generator.electra.embeddings.position_embeddings.weight.sub_(1.0)
  with pytest.raises(ValueError, match='not trained as a pair'):
    electra_interop.load_params(ElectraPair(config), directories['discriminator'], str(tmp_path))
  with pytest.raises(ConfigError, match='model.num_layers'):
    small = ElectraConfig.from_config({**electra_interop.read_model_config(
        directories['discriminator']), 'num_layers': 1})
    electra_interop.load_params(ElectraPair(small), directories['discriminator'])


def test_gdes_discriminator_exports_its_word_table_plus_the_delta(hf_pair, tmp_path, record_figure):
  """embedding_gradients='gdes': the discriminator reads the shared block with its word vectors
  plus the delta; its export (and its fine-tuning encoder) fold the delta into the word table,
  and transformers computes the same logits from it. Import into a GDES pair is refused."""
  _, _, hf_directories = hf_pair
  fields = electra_interop.read_model_config(hf_directories['discriminator'],
                                             hf_directories['generator'])
  model = ElectraPair(ElectraConfig.from_config({**fields, 'embedding_gradients': 'gdes'}))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  assert shapes['params']['discriminator_word_delta']['embedding'].shape == (60, 24)
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (path[-1].key == 'scale') + rng.normal(0, 0.2, x.shape).astype(np.float32),
      shapes['params'])
  batch = padded_batch()
  rtd_ours, _ = our_outputs(model, params, *batch)
  without_delta = {**params, 'discriminator_word_delta': {'embedding': np.zeros((60, 24), np.float32)}}
  assert max_error(our_outputs(model, without_delta, *batch)[0], np.asarray(rtd_ours), batch[1]) > 1e-3

  directory = str(tmp_path / 'discriminator')
  electra_interop.save_checkpoint(directory, model, params, 'discriminator')
  hf, info = transformers.ElectraForPreTraining.from_pretrained(
      directory, output_loading_info=True, attn_implementation='eager')
  assert all(not keys for keys in info.values()), info
  inputs = {name: torch.from_numpy(array.astype(np.int64)) for name, array in
            zip(('input_ids', 'attention_mask', 'token_type_ids'), batch)}
  with torch.no_grad():
    rtd_hf = hf.eval()(**inputs).logits.numpy()
  error = max_error(rtd_ours, rtd_hf, batch[1])
  record_figure('gdes rtd max|diff|', error, f'<= {BOUND}')
  assert error <= BOUND
  folded = discriminator_as_encoder(params)['encoder']['embeddings']['word_embeddings']['embedding']
  np.testing.assert_allclose(folded, params['embeddings']['word_embeddings']['embedding']
                             + params['discriminator_word_delta']['embedding'], atol=1e-7)
  with pytest.raises(ConfigError, match="embedding_gradients='gdes'"):
    electra_interop.load_params(model, hf_directories['discriminator'])
