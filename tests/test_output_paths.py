"""Exports, tables and plots written to gs:// (the GCS emulator of tests/conftest.py) land in the
bucket and nowhere on local disk.

Each test runs in an empty working directory, writes to a new bucket and checks the bucket's
objects, that the working directory is still empty and that the repository gained no entry
(os.path.abspath('gs://b/x') would be '<cwd>/gs:/b/x').
"""
import os

import flax.linen as nn
import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from encoders import electra_interop, paths
from encoders.configs import electra as electra_configs
from encoders.electra import ElectraConfig, ElectraPair
from encoders.training import sweep
from experiments import (ablate_masking_rate, compare_inits, distill_vs_teacher, electra_vs_mlm,
                         evaluate, lora_vs_full)
from tests import training_util


def _objects(url: str) -> set[str]:
  """Every object under a gs:// URL, relative to it."""
  root = url.removeprefix('gs://')
  return {name.removeprefix(root + '/') for name in fsspec.filesystem('gcs').find(root)}


@pytest.fixture
def bucket(gcs_bucket, tmp_path, monkeypatch):
  """A new bucket; the test runs in an empty folder, which must stay empty, as the repository
  must keep its entries."""
  work = tmp_path / 'work'
  work.mkdir()
  monkeypatch.chdir(work)
  repository_before = set(os.listdir(training_util.ROOT))
  yield gcs_bucket
  assert list(work.iterdir()) == []
  assert set(os.listdir(training_util.ROOT)) == repository_before


def _tiny_electra_pair() -> tuple[ElectraPair, dict]:
  """A 1-layer, width-32 ELECTRA pair (generator width 16) with random numpy parameters."""
  config = electra_configs.get_model_config('tiny')
  config.update(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                embedding_size=32, vocab_size=64, generator_size_fraction=0.5)
  model = ElectraPair(ElectraConfig.from_config(config))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  rng = np.random.default_rng(0)
  return model, jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32),
                             shapes['params'])


def test_electra_pair_export_writes_both_networks_to_the_bucket(bucket):
  model, params = _tiny_electra_pair()
  directories = electra_interop.save_pair(f'{bucket}/electra', model, params)
  assert directories == {network: f'{bucket}/electra/{network}'
                         for network in electra_interop.NETWORKS}
  assert _objects(f'{bucket}/electra') == {
      f'{network}/{name}' for network in electra_interop.NETWORKS
      for name in ('config.json', 'model.safetensors')}
  loaded = electra_interop.load_params(model, directories['discriminator'],
                                       directories['generator'])
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_compare_inits_plot_goes_to_the_bucket(bucket):
  summary = {'pretrained n=500': {'test_accuracy': (0.6, 0.02, 2)},
             'random init n=500': {'test_accuracy': (0.3, 0.05, 2)}}
  path = f'{bucket}/compare_inits/accuracy_vs_size.png'
  compare_inits.plot_by_size(summary, [500], path, 'MiniLM')
  assert _objects(f'{bucket}/compare_inits') == {'accuracy_vs_size.png'}
  assert fsspec.filesystem('gcs').size(path) > 1000


def test_masking_rate_plot_reads_and_writes_the_bucket(bucket):
  cells = ablate_masking_rate.cells('tiny', None)
  for seed in (0, 1):
    sweep.write_result(bucket, cells[0], seed, {'mlm_loss_at_15': 7.0 + seed,
                                                'test_accuracy': 0.5}, 1.0)
  path = ablate_masking_rate.plot_by_rate('tiny', None, bucket, [0, 1])
  assert path == f'{bucket}/by_rate.png'
  assert 'by_rate.png' in _objects(bucket)


def test_electra_vs_mlm_plot_reads_and_writes_the_bucket(bucket):
  base = electra_vs_mlm.base_config('smoke')
  for cell in electra_vs_mlm.cells('smoke', base):
    sweep.write_result(bucket, cell, 0, {'test_accuracy': 0.5}, 1.0)
  path = electra_vs_mlm.plot_against_flops('smoke', base, bucket, [0])
  assert path == f'{bucket}/accuracy_vs_flops.png'
  assert 'accuracy_vs_flops.png' in _objects(bucket)


def test_distill_vs_teacher_plot_goes_to_the_bucket(bucket):
  row = sweep.Cell('teacher', {}, info={'seq/s b32': 100.0})
  sweep.write_result(bucket, row, 0, {'test_accuracy': 0.5}, 1.0)
  assert distill_vs_teacher.plot_speed_vs_accuracy([row], [0], bucket) == (
      f'{bucket}/accuracy_vs_speed.png')
  assert 'accuracy_vs_speed.png' in _objects(bucket)


def test_lora_vs_full_results_go_to_the_bucket(bucket):
  arm = {'trainable_parameters': 10, 'frozen_parameters': 90, 'optimizer_state_bytes': 2**20,
         'test': {'accuracy': 0.5, 'macro_f1': 0.4}, 'dev': {'accuracy': 0.5},
         'wall_seconds': 60.0, 'train_rows': 100}
  results = {name: arm for name in lora_vs_full.ARMS}
  table = lora_vs_full.write_results(f'{bucket}/lora', results, 'python -m x')
  assert _objects(f'{bucket}/lora') == {'results.json', 'results.md'}
  assert paths.read_json(f'{bucket}/lora/results.json') == {'command': 'python -m x',
                                                            'arms': results}
  assert table in epath.Path(f'{bucket}/lora/results.md').read_text()


def test_evaluate_writes_and_compares_runs_in_the_bucket(bucket):
  summary = {task: {'mean': 50.0, 'std': 1.0} for task in ('topic', 'macro')}
  results = [{'model': 'tiny', 'mode': 'probe', 'runs': [{}, {}], 'summary': summary}]
  evaluate.write(results, f'{bucket}/run')
  assert _objects(f'{bucket}/run') == {'results.json', 'results.md', 'results.csv', 'results.png'}
  assert evaluate.read(f'{bucket}/run') == results
