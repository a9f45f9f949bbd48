"""`scan_layers`: one nn.scan over stacked layers computes what the unrolled stack computes.

Reference: the unrolled model (`layer_{i}` parameters), whose parity with HF transformers
is tested in test_hf_interop.py; the scanned model gets the same weights through
`stack_layers`. Training is compared with dropout off, since scan and the unrolled loop
split the dropout key differently.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safetensors.numpy import load_file

from encoders import bert, electra_interop, hf_interop
from encoders.config import EncoderConfig
from encoders.electra import ElectraConfig, ElectraPair
from encoders.layers import stack_layers, unroll_layers
from tests import training_util

CONFIG = EncoderConfig(vocab_size=97, hidden_size=32, num_layers=3, num_heads=2,
                       intermediate_size=64, max_position_embeddings=32)
STEPS = 3


def _params(model, input_ids):
  return jax.tree.map(np.asarray, nn.meta.unbox(model.init(jax.random.key(0), input_ids)['params']))


@pytest.mark.parametrize('remat_policy', ['none', 'full'])
def test_scanned_forward_matches_unrolled(remat_policy):
  input_ids = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 16)), jnp.int32)
  segment_ids = jnp.asarray([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4], jnp.int32)
  unrolled = bert.EncoderForPreTraining(CONFIG, sentence_head=True)
  scanned = bert.EncoderForPreTraining(
      EncoderConfig(**{**CONFIG.__dict__, 'scan_layers': True, 'remat_policy': remat_policy}),
      sentence_head=True)
  params = _params(unrolled, input_ids)
  stacked = stack_layers(params)
  assert jax.tree.structure(stacked) == jax.tree.structure(_params(scanned, input_ids))
  assert stacked['encoder']['layers']['stacked']['layer']['mlp']['output']['kernel'].shape == (3, 64, 32)
  expected = unrolled.apply({'params': params}, input_ids, segment_ids)
  got = scanned.apply({'params': stacked}, input_ids, segment_ids)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=1e-5)
  round_trip = unroll_layers(stacked)
  assert jax.tree.structure(round_trip) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(round_trip), jax.tree.leaves(params)))


def _assert_same_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_same_files(a, b):
  a, b = load_file(a), load_file(b)
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_hf_checkpoints_load_into_and_export_from_scanned_models(tmp_path):
  input_ids = jnp.ones((1, 8), jnp.int32)
  unrolled = bert.EncoderForPreTraining(CONFIG)
  scanned = bert.EncoderForPreTraining(dataclasses.replace(CONFIG, scan_layers=True))
  params = _params(unrolled, input_ids)
  hf_interop.save_checkpoint(str(tmp_path / 'unrolled'), unrolled, params, family='bert')
  loaded = hf_interop.load_params(str(tmp_path / 'unrolled'), scanned)
  _assert_same_trees(loaded, stack_layers(params))
  hf_interop.save_checkpoint(str(tmp_path / 'scanned'), scanned, loaded, family='bert')
  _assert_same_files(tmp_path / 'unrolled' / 'model.safetensors',
                     tmp_path / 'scanned' / 'model.safetensors')


def test_electra_checkpoints_load_into_and_export_from_scanned_pairs(tmp_path):
  fields = dict(vocab_size=60, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                max_position_embeddings=32, embedding_size=24, generator_hidden_size=16,
                generator_num_heads=2, generator_intermediate_size=32)
  unrolled = ElectraPair(ElectraConfig.from_config(fields))
  scanned = ElectraPair(ElectraConfig.from_config({**fields, 'scan_layers': True}))
  params = _params(unrolled, jnp.ones((1, 8), jnp.int32))
  directories = electra_interop.save_pair(str(tmp_path / 'unrolled'), unrolled, params)
  loaded = electra_interop.load_params(scanned, directories['discriminator'], directories['generator'])
  _assert_same_trees(loaded, stack_layers(params))
  electra_interop.save_pair(str(tmp_path / 'scanned'), scanned, loaded)
  for network in directories:
    _assert_same_files(tmp_path / 'unrolled' / network / 'model.safetensors',
                       tmp_path / 'scanned' / network / 'model.safetensors')


def _child():
  """In a subprocess with 8 CPU devices: unrolled on 1 device vs scanned on a 2x2x2 mesh."""
  jax.config.update('jax_threefry_partitionable', True)

  def config_for(mesh_shape, scan):
    config = training_util.tiny_config(
        model__num_layers=2, model__scan_layers=scan, model__hidden_dropout_rate=0.0,
        model__attention_dropout_rate=0.0, optimizer__eps=1e-2)  # eps: see test_sharding.py.
    config.mesh.shape = mesh_shape
    return config

  def losses(step_sums):
    return [float(sums['loss'][0]) for sums in step_sums]

  reference = config_for((1, 1, 1), scan=False)
  ref_sums, ref_state, ref_run = training_util.train_on_mesh(reference, jax.devices()[:1], STEPS)
  initial = jax.device_get(ref_run.init_state(reference.seed).params)  # Init is deterministic.
  step_sums, state, _ = training_util.train_on_mesh(
      config_for((2, 2, 2), scan=True), steps=STEPS, start_params=stack_layers(initial))
  kernel = state.params['encoder']['layers']['stacked']['layer']['mlp']['intermediate']['kernel']
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                      unroll_layers(jax.device_get(state.params)), jax.device_get(ref_state.params))
  training_util.print_report(dict(
      reference=losses(ref_sums), scanned=losses(step_sums), param_diff=max(jax.tree.leaves(diff)),
      kernel_spec=[a for a in kernel.sharding.spec], kernel_shape=list(kernel.shape)))


@pytest.mark.slow
def test_scanned_training_on_a_mesh_matches_unrolled():
  report = training_util.child_report('test_scan_layers', '_child')
  assert report['scanned'] == pytest.approx(report['reference'], rel=1e-5)
  assert report['reference'][-1] != report['reference'][0]
  assert report['param_diff'] < 1e-5
  # [layers, hidden, mlp]: the stacking axis is replicated, the rest sharded as unrolled.
  assert report['kernel_shape'][0] == 2
  assert report['kernel_spec'][:3] == [None, 'fsdp', 'tensor']
