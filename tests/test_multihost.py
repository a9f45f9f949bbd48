"""Two processes x 4 CPU devices train exactly like one process x 8 devices on the same global batch.

Each process feeds only its own rows (jax.make_array_from_process_local_data); the
processes meet through jax.distributed on loopback.
"""
import json
import socket
import subprocess
import sys

import pytest

from encoders.training import checkpointing
from encoders.training import metrics as metrics_lib
from tests import training_util

STEPS = dict(train__num_steps=6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  port = _free_port()
  runs = [training_util.pretrain(single, num_devices=8, **STEPS)]
  runs += [training_util.pretrain(
      multi, f'--config.mesh.coordinator_address=127.0.0.1:{port}',
      '--config.mesh.num_processes=2', f'--config.mesh.process_id={i}', num_devices=4, **STEPS)
      for i in range(2)]
  for run in runs:
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-5000:]
  expected = training_util.train_losses(single)
  assert sorted(expected) == list(range(1, 7))
  assert training_util.train_losses(multi) == pytest.approx(expected, rel=1e-5)
  # The norm of parameters sharded over two processes' devices (taken outside the step).
  expected_norms = training_util.train_metric(single, 'param_norm')
  assert sorted(expected_norms) == list(range(1, 7))
  assert training_util.train_metric(multi, 'param_norm') == pytest.approx(expected_norms, rel=1e-6)
  manager = checkpointing.make_manager(multi, read_only=True)
  assert manager.all_steps() == [3, 6]
  assert sorted(p.name for p in (tmp_path / 'multi' / 'checkpoints' / '6' / 'data').glob('*.json')) == [
      'process_0-of-2.json', 'process_1-of-2.json']


def _finetune(workdir: str, minilm_dir: str, *extra: str, num_devices: int):
  """experiments.finetune on the topic task: a 1-layer model at random init with MiniLM's
  tokenizer, 100 training records (13 steps of 8 rows: the last batch of every evaluation split
  is padded), dev evaluated twice."""
  command = [sys.executable, '-m', 'experiments.finetune', '--config',
             'configs/finetune.py:topic_tiny', '--workdir', workdir,
             f'--config.data.tokenizer_path={minilm_dir}', '--config.data.max_examples=150',
             '--config.data.max_train_examples=100', '--config.train.batch_size=8',
             '--config.train.eval_batch_size=8', '--config.train.num_epochs=1',
             '--config.train.eval_every=7', '--config.train.log_every=1',
             '--config.model.num_layers=1', '--config.model.hidden_size=32',
             '--config.model.num_heads=2', '--config.model.intermediate_size=64', *extra]
  return subprocess.Popen(command, cwd=training_util.ROOT, env=training_util.env(num_devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize('processes', [2, 4])
def test_finetuning_on_several_processes_matches_one_process(tmp_path, minilm_dir, processes):
  """Each process feeds its own share of every global batch (training and evaluation), and
  the run gives one process's losses and metrics."""
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  port = _free_port()
  runs = [_finetune(single, minilm_dir, num_devices=8)]
  runs += [_finetune(multi, minilm_dir, f'--config.mesh.coordinator_address=127.0.0.1:{port}',
                     f'--config.mesh.num_processes={processes}', f'--config.mesh.process_id={i}',
                     num_devices=8 // processes) for i in range(processes)]
  for run in runs:
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output[-5000:]
  expected = training_util.train_losses(single)
  assert sorted(expected) == list(range(1, 14))
  assert training_util.train_losses(multi) == pytest.approx(expected, rel=1e-5)
  results = [json.loads((tmp_path / run / 'results.json').read_text()) for run in ('single', 'multi')]
  for split in ('dev', 'test'):
    assert results[1][split] == pytest.approx(results[0][split], rel=1e-6), split
  assert results[0]['best_step'] == results[1]['best_step']


@pytest.mark.slow
@pytest.mark.parametrize('processes', [2, 4])
def test_evaluation_with_uneven_shards_finishes_with_the_real_rows_metrics(tmp_path, processes):
  """Process i's validation shard ends after max(4 - i, 2) batches: every host still runs 4
  (padding rows of weight 0), and MLM and NSP metrics equal those of exactly the real rows
  evaluated in one process. Before, the hosts with fewer batches left the loop and the others
  waited in the collective for ever (the timeout fails the test)."""
  port = _free_port()
  multi, single = tmp_path / 'multi.json', tmp_path / 'single.json'
  command = [sys.executable, '-m', 'tests.multihost_eval']
  runs = [subprocess.Popen([*command, str(multi), str(processes), str(i), f'127.0.0.1:{port}'],
                           cwd=training_util.ROOT, env=training_util.env(8 // processes),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(processes)]
  runs.append(subprocess.Popen([*command, str(single), '0', '0', str(processes)],
                               cwd=training_util.ROOT, env=training_util.env(1),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  for run in runs:
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-5000:]
  expected = json.loads(single.read_text())
  assert {'mlm_loss', 'mlm_accuracy', 'sentence_loss', 'sentence_accuracy'} <= set(expected)
  assert json.loads(multi.read_text()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_hosts_tokenize_and_read_only_their_own_shards(tmp_path, minilm_dir):
  """Two processes pretrain on the embedded corpus cut into shards of 2,000 documents, each
  host's cache on its own disk: the training split's five shards are tokenized 0, 2, 4 by host 0
  and 1, 3 by host 1 (none twice); the one-shard validation split is read by both, each taking
  every other example. Training and validation finish on both hosts."""
  from encoders.configs import data as data_config_lib  # pylint: disable=g-import-not-at-top
  from encoders.data import corpus  # pylint: disable=g-import-not-at-top
  corpus.get_builder(data_config_lib.get_data_config())  # Built once, not by two hosts at once.
  port = _free_port()
  workdir = str(tmp_path / 'work')
  runs = [training_util.pretrain(
      workdir, f'--config.mesh.coordinator_address=127.0.0.1:{port}',
      '--config.mesh.num_processes=2', f'--config.mesh.process_id={i}',
      f'--config.data.tokenizer_path={minilm_dir}', f'--config.data.cache_dir={tmp_path}/cache{i}',
      '--config.data.shard_documents=2000', num_devices=2, train__synthetic_data=False,
      train__num_steps=4, train__eval_every=2, train__eval_steps=3, model__vocab_size=30522,
      data__input_format='full_sentences') for i in range(2)]
  for run in runs:
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-5000:]

  def shards(host, split):
    return sorted(p.name for p in (tmp_path / f'cache{host}').glob(f'*/{split}-*/shard-*'))

  assert shards(0, 'train') == [f'shard-{i:05d}-of-00005' for i in (0, 2, 4)]
  assert shards(1, 'train') == [f'shard-{i:05d}-of-00005' for i in (1, 3)]
  assert shards(0, 'validation') == shards(1, 'validation') == ['shard-00000-of-00001']
  evaluations = [r['step'] for r in metrics_lib.read_jsonl(workdir) if 'eval/mlm_loss' in r]
  assert evaluations == [0, 2, 4]
