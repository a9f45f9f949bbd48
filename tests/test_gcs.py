"""Every file a run reads or writes may be gs://: the README's chain against a GCS emulator.

The end-to-end tests run the entry points as subprocesses in an empty scratch directory with
every output under gs://<bucket>/ (fake-gcs-server on loopback, tests/conftest.py): pretraining
(tokenizer, tokenized cache, checkpoints, metrics.jsonl, TensorBoard events), a SIGKILL and the
resume, fill_mask, an HF export and import; then fine-tuning from a gs:// workdir and an ablation
sweep. Nothing may appear on local disk: not in the scratch directory, not under the repository.
The other tests check the path helpers without an emulator.
"""
import os
import signal
import subprocess
import sys

import fsspec
import numpy as np
import pytest
from etils import epath
from safetensors import safe_open
from safetensors.numpy import save_file

from encoders import paths
from tests import training_util
# The local kill-and-resume test's waiting: orbax reads a gs:// workdir the same way.
from tests.test_checkpointing import _finish, _wait_for_checkpoint

# Pretraining in its smoke form: a 1-layer width-32 BERT, 10 steps of 8 x 32 tokens of the
# embedded corpus, a checkpoint every 2 steps (each a few objects written to the bucket).
PRETRAIN = {
    'model.num_layers': 1, 'model.hidden_size': 32, 'model.num_heads': 2,
    'model.intermediate_size': 64, 'data.seq_length': 32, 'train.batch_size': 8,
    'train.num_steps': 10, 'train.log_every': 1, 'train.eval_every': 1000, 'train.eval_steps': 1,
    'train.progress_bar': False, 'optimizer.warmup_steps': 2, 'checkpoint.every_steps': 2,
}
FINETUNE = {  # encoders/adaptation/finetune_ablation.py's smoke scale.
    'data.max_length': 32, 'data.max_windows': 1, 'data.max_examples': 48, 'train.batch_size': 8,
    'train.num_epochs': 1.0, 'train.eval_batch_size': 16, 'train.log_every': 2,
}


def _command(module: str, *args: str, **overrides) -> list[str]:
  return [sys.executable, '-m', module, *args, *(f'--config.{k}={v}' for k, v in overrides.items())]


def _start(command: list[str], cwd: str) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=cwd, env=training_util.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _pretrain(workdir: str, cwd: str, **overrides) -> subprocess.Popen:
  config = os.path.join(training_util.ROOT, 'configs/bert.py') + ':tiny'
  return _start(_command('experiments.pretrain', '--config', config, '--workdir', workdir,
                         **PRETRAIN, **overrides), cwd)


def _objects(url: str) -> list[str]:
  """Every object under a gs:// URL, relative to it."""
  root = url.removeprefix('gs://')
  return sorted(name.removeprefix(root + '/') for name in fsspec.filesystem('gcs').find(root))


def _local_files(root: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(folder, name), root)
                for folder, folders, files in os.walk(root) for name in files + folders)


@pytest.fixture
def scratch(tmp_path) -> str:
  """An empty working directory for the runs; the test checks it is still empty at the end."""
  folder = tmp_path / 'work'
  folder.mkdir()
  return str(folder)


# Not searched: git's and pip's own folders, Python's caches, and workdirs/, where the README's
# commands (other jobs than these tests) write; a URL taken for a local path lands in scratch.
_NOT_SEARCHED = {'.git', '.venv', '__pycache__', '.pytest_cache', 'workdirs'}


def _repository_files() -> dict[str, int]:
  """{path under the repository: modification time in ns (None for a folder)}."""
  found = {}
  for folder, folders, files in os.walk(training_util.ROOT):
    folders[:] = [f for f in folders if f not in _NOT_SEARCHED]
    for name in files + folders:
      path = os.path.join(folder, name)
      found[os.path.relpath(path, training_util.ROOT)] = (
          None if name in folders else os.lstat(path).st_mtime_ns)
  return found


def _assert_nothing_local(scratch: str, repository_before: dict[str, int]) -> None:
  assert _local_files(scratch) == []
  after = _repository_files()
  assert {p for p in after.keys() | repository_before.keys()
          if after.get(p) != repository_before.get(p)} == set()


@pytest.mark.slow
def test_pretrain_kill_resume_fill_mask_export_use_only_the_bucket(tmp_path, scratch, gcs_bucket):
  from encoders.training import metrics  # pylint: disable=g-import-not-at-top
  workdir, straight = f'{gcs_bucket}/bert_tiny', f'{gcs_bucket}/straight'
  cache = f'{gcs_bucket}/cache'
  repository_before = _repository_files()

  # Pretraining, killed after a committed checkpoint and resumed, against an uninterrupted run
  # that trained the tokenizer (into the bucket) and tokenized the corpus (cached in the bucket).
  _finish(_pretrain(straight, scratch, **{'data.cache_dir': cache}))
  data = {'data.cache_dir': cache, 'data.tokenizer_path': f'{straight}/tokenizer'}
  run = _pretrain(workdir, scratch, **data)
  killed_after = _wait_for_checkpoint(run, workdir)
  run.send_signal(signal.SIGKILL)
  run.wait()
  _finish(_pretrain(workdir, scratch, **data))
  expected = training_util.train_losses(straight)
  assert sorted(expected) == list(range(1, PRETRAIN['train.num_steps'] + 1))
  assert training_util.train_losses(workdir) == expected, f'killed after step {killed_after}'
  assert metrics.read_jsonl(workdir)[-1]['step'] == PRETRAIN['train.num_steps']

  output = _finish(_start([sys.executable, '-m', 'experiments.fill_mask', '--workdir', workdir],
                          scratch))
  assert 'mask 1: ' in output, output[-2000:]

  # HF export of the pretrained model to the bucket, and its import back.
  export = _finish(_start([sys.executable, '-c', _EXPORT_AND_IMPORT, workdir, f'{gcs_bucket}/hf'],
                          scratch))
  assert export.strip().endswith('max difference 0.0'), export[-2000:]

  _assert_nothing_local(scratch, repository_before)
  pretraining = _objects(workdir)
  for name in ('metrics.jsonl', 'checkpoints/10/state/_METADATA',
               'checkpoints/10/data/process_0-of-1.json', 'checkpoints/10/config/metadata'):
    assert name in pretraining, pretraining
  assert any(name.startswith('tensorboard/events.out.tfevents.') for name in pretraining)
  # The uninterrupted run's event file, uploaded whole at its close, holds every logged loss.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  for name in _objects(f'{straight}/tensorboard'):
    (tmp_path / 'events' / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'events' / name).write_bytes(epath.Path(straight, 'tensorboard', name).read_bytes())
  events = event_accumulator.EventAccumulator(str(tmp_path / 'events'))
  events.Reload()
  assert {e.step: e.value for e in events.Scalars('train/loss')} == {
      step: float(np.float32(loss)) for step, loss in expected.items()}
  assert 'tokenizer/tokenizer.json' in _objects(straight)
  assert any(name.endswith('/stats.json') for name in _objects(cache))
  assert {'config.json', 'model.safetensors'} <= set(_objects(f'{gcs_bucket}/hf'))


@pytest.mark.slow
def test_finetuning_and_an_ablation_sweep_use_only_the_bucket(scratch, gcs_bucket):
  workdir, sweep = f'{gcs_bucket}/bert_tiny', f'{gcs_bucket}/ablate_nsp'
  repository_before = _repository_files()
  _finish(_pretrain(workdir, scratch, **{'data.cache_dir': f'{gcs_bucket}/cache'}))

  finetune_config = os.path.join(training_util.ROOT, 'configs/finetune.py') + ':topic_tiny'
  _finish(_start(_command('experiments.finetune', '--config', finetune_config, '--workdir',
                          f'{gcs_bucket}/ft', **FINETUNE, init_from=workdir), scratch))
  data = {'data.cache_dir': f'{gcs_bucket}/cache', 'data.tokenizer_path': f'{workdir}/tokenizer'}
  _finish(_start([sys.executable, '-m', 'experiments.ablate_nsp', '--smoke', f'--out={sweep}',
                  '--cell=SEGMENT-PAIR + NSP', *(f'--set={k}="{v}"' for k, v in data.items())],
                 scratch))

  assert 'results.json' in _objects(f'{gcs_bucket}/ft')
  assert {'results.csv', 'results.md', 'results.png'} <= set(_objects(sweep))
  run = 'runs/SEGMENT-PAIR_+_NSP__seed0'
  assert {f'{run}/pretrain/metrics.jsonl', f'{run}/finetune/results.json'} <= set(_objects(sweep))
  _assert_nothing_local(scratch, repository_before)


# argv: a pretraining workdir, an HF directory to write. Prints the largest difference between the
# pretrained parameters and those read back from the export (BertForMaskedLM).
_EXPORT_AND_IMPORT = '''
import sys
import flax, jax, numpy as np
from encoders import families, hf_interop
from encoders.training import reload
config, model, params = reload.load_workdir(sys.argv[1])
hf_interop.save_checkpoint(sys.argv[2], model, params, family=families.of_config(config).name)
back = hf_interop.load_params(sys.argv[2], model)
ours = flax.traverse_util.flatten_dict(jax.device_get(params))
theirs = flax.traverse_util.flatten_dict(back)
assert ours.keys() == theirs.keys(), set(ours) ^ set(theirs)
print('max difference', max(float(np.max(np.abs(ours[k] - theirs[k]))) for k in ours))
'''


def test_a_url_is_never_made_a_local_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute('gs://bucket/run') == 'gs://bucket/run'
  assert paths.absolute('run') == os.path.join(str(tmp_path), 'run')
  assert paths.absolute('~/run') == os.path.join(os.path.expanduser('~'), 'run')
  assert paths.is_url('gs://bucket') and not paths.is_url('/tmp/gs:/bucket')


def test_write_atomic_leaves_only_the_file(tmp_path):
  path = tmp_path / 'new' / 'result.json'
  paths.write_atomic(str(path), '{"a": 1}')
  paths.write_atomic(str(path), b'{"a": 2}')
  assert path.read_text() == '{"a": 2}'
  assert os.listdir(path.parent) == ['result.json']


def test_safetensors_names_come_from_the_header(tmp_path):
  path = str(tmp_path / 'model.safetensors')
  save_file({'b.weight': np.ones((2, 3), np.float32), 'a': np.zeros(4, np.int64)}, path,
            metadata={'format': 'pt'})
  with safe_open(path, 'numpy') as f:  # The library's own reader as the reference.
    assert paths.safetensors_names(path) == set(f.keys()) == {'a', 'b.weight'}


def test_npy_and_figures_round_trip_through_epath(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  array = np.arange(12, dtype=np.int32).reshape(3, 4)
  paths.save_npy(str(tmp_path / 'a.npy'), array)
  np.testing.assert_array_equal(np.load(tmp_path / 'a.npy'), array)
  assert isinstance(paths.load_npy(str(tmp_path / 'a.npy')), np.memmap)  # Local: memory-mapped.
  figure = plt.figure()
  paths.save_figure(figure, str(tmp_path / 'plot.png'))
  plt.close(figure)
  assert (tmp_path / 'plot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_helpers_reach_the_bucket(gcs_bucket):
  """Each helper on a gs:// URL, read back through gcsfs directly."""
  array = np.arange(6, dtype=np.float32)
  paths.save_npy(f'{gcs_bucket}/x/a.npy', array)
  np.testing.assert_array_equal(paths.load_npy(f'{gcs_bucket}/x/a.npy'), array)
  paths.save_safetensors(f'{gcs_bucket}/x/m.safetensors', {'w': array}, metadata={'format': 'pt'})
  assert paths.safetensors_names(f'{gcs_bucket}/x/m.safetensors') == {'w'}
  np.testing.assert_array_equal(paths.load_safetensors(f'{gcs_bucket}/x/m.safetensors')['w'], array)
  paths.write_atomic(f'{gcs_bucket}/x/r.json', '{"a": 1}')
  assert paths.read_json(f'{gcs_bucket}/x/r.json') == {'a': 1}
  assert _objects(f'{gcs_bucket}/x') == ['a.npy', 'm.safetensors', 'r.json']
  assert epath.Path(gcs_bucket, 'x', 'r.json').read_text() == '{"a": 1}'


def test_an_hf_directory_on_the_bucket_loads_and_exports_as_a_local_one(gcs_bucket, minilm_dir):
  """MiniLM copied to the bucket (vocab.txt, no tokenizer.json) reads as the local copy does; a
  sentence-transformers export to the bucket reads back the same parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  from encoders.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from encoders import st_export  # pylint: disable=g-import-not-at-top
  from encoders.adaptation import finetune_init  # pylint: disable=g-import-not-at-top
  remote = f'{gcs_bucket}/minilm'
  for name in ('config.json', 'model.safetensors', 'vocab.txt', 'tokenizer_config.json',
               'modules.json', '1_Pooling/config.json'):
    epath.Path(remote, name).write_bytes(epath.Path(minilm_dir, name).read_bytes())
  assert finetune_init.is_hf_dir(remote) and not finetune_init.is_pretraining_workdir(remote)
  assert finetune_init.hf_tensor_names(remote) == finetune_init.hf_tensor_names(minilm_dir)
  texts = ['The Eiffel Tower is in Paris.', 'Unaffable naïve café owners!']
  tokenizer = tokenizer_lib.load(remote)
  assert ([ids.tolist() for ids, _ in tokenizer.encode_batch(texts)] ==
          [ids.tolist() for ids, _ in tokenizer_lib.load(minilm_dir).encode_batch(texts)])
  model, params = st_export.load(remote)
  local_model, local_params = st_export.load(minilm_dir)
  assert model == local_model
  jax.tree.map(np.testing.assert_array_equal, params, local_params)

  export = f'{gcs_bucket}/export'
  st_export.save(export, model, params, tokenizer, family='bert', max_seq_length=64)
  assert {'modules.json', 'config.json', 'model.safetensors', 'tokenizer.json',
          '1_Pooling/config.json'} <= set(_objects(export))
  exported_model, exported_params = st_export.load(export)
  assert exported_model.pooling == 'mean'
  jax.tree.map(np.testing.assert_array_equal, exported_params['encoder'],
               {k: v for k, v in params['encoder'].items() if k != 'pooler'})


def test_text_files_in_the_bucket_give_the_documents_of_their_local_copy(tmp_path, gcs_bucket):
  """A folder (read recursively) and a glob of gs:// text files build the corpus that the same
  files on local disk build: each document's title (its path under the folder) and text."""
  from encoders.configs.data import get_data_config  # pylint: disable=g-import-not-at-top
  from encoders.data import corpus  # pylint: disable=g-import-not-at-top
  files = {'a.txt': 'First file. It has two sentences.\n', 'sub/b.txt': 'Caf\xe9 in a folder.',
           'sub/c.md': 'Para one.\n\nPara two.', 'sub/empty.txt': ' \n'}
  for name, text in files.items():
    (tmp_path / 'local' / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'local' / name).write_text(text)
    epath.Path(gcs_bucket, 'texts', name).write_text(text)

  def documents(pattern: str, data_dir: str, split_by: str = 'file') -> dict[str, str]:
    config = get_data_config(dataset='text_files', text_files=pattern, data_dir=data_dir,
                             text_files_split_by=split_by)
    builder = corpus.get_builder(config)
    return {r['title'].decode(): r['text'].decode() for split in builder.info.splits
            for r in builder.as_data_source(split=split)}

  local = documents(str(tmp_path / 'local'), str(tmp_path / 'tfds_local'))
  assert set(local) == {'a.txt', 'sub/b.txt', 'sub/c.md'}
  assert documents(f'{gcs_bucket}/texts', str(tmp_path / 'tfds_bucket')) == local
  by_paragraph = documents(f'{gcs_bucket}/texts/sub/*.md', str(tmp_path / 'tfds_bucket'),
                           'paragraph')
  assert by_paragraph == documents(str(tmp_path / 'local/sub/*.md'), str(tmp_path / 'tfds_local'),
                                   'paragraph') == {'c.md#0': 'Para one.', 'c.md#1': 'Para two.'}
