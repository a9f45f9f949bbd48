"""The inference benchmark (benchmarks/inference.py, experiments/benchmark_inference.py): every
system embeds the same corpus batch to the same MiniLM vectors, and the runner's table."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import inference, measure
from experiments import benchmark_inference
from tests import training_util


def test_rows_are_full_real_text():
  batch = inference.text_batch(3, 40)
  ids = batch['input_ids']
  assert ids.shape == (3, 40) and batch['attention_mask'].all()
  assert (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()  # [CLS] ... [SEP], no padding.
  assert len({tuple(row) for row in ids}) == 3 and (ids[:, 1:-1] > 999).mean() > 0.9  # Words.


@pytest.fixture(scope='module')
def inputs():
  return inference.text_batch(2, 32)


def embeddings(system: str, precision: str, inputs) -> np.ndarray:
  embed, info = inference.build(measure.Spec(system=system, precision=precision, batch=2, seq=32),
                                inputs)
  assert info['weight_dtypes'] == ['bfloat16' if precision == 'bf16_weights' else 'float32']
  return embed()


@pytest.fixture(scope='module')
def reference(inputs):
  vectors = embeddings('torch', 'f32', inputs)
  assert vectors.shape == (2, 384) and np.min(vectors @ vectors.T) < 0.9  # Two different texts.
  return vectors


@pytest.mark.slow
@pytest.mark.parametrize('run', ['ours/f32', 'ours/bf16', 'ours/bf16_weights', 'torch/bf16',
                                 'torch/bf16_weights', 'sentence_transformers/f32'])
def test_systems_compute_the_same_embeddings(run, inputs, reference):
  vectors = embeddings(*run.split('/'), inputs)
  if run.endswith('f32'):
    np.testing.assert_allclose(vectors, reference, atol=1e-4)
  else:  # bf16 matmuls (and weights): the same direction within bf16's precision.
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.995


@pytest.mark.slow
def test_torch_compile_computes_the_same_embeddings(inputs, reference, monkeypatch, tmp_path):
  """Minutes on a loaded 2-core machine: inductor compiles C++ kernels."""
  monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))  # Its own cache, not the machine's.
  np.testing.assert_allclose(embeddings('torch_compile', 'f32', inputs), reference, atol=1e-4)


def test_best_round_and_table():
  def result(name, batch, rate, round_index):
    return dict(name=name, status='ok', spec=dict(batch=batch, seq=128), round=round_index,
                sequences_per_s=rate, step_s=dict(median=batch / rate))
  results = [result('ours/f32', 32, 100.0, 0), result('ours/f32', 32, 120.0, 1),
             result('torch/f32', 32, 60.0, 0), result('torch/bf16', 32, 80.0, 1),
             dict(name='torch_compile/f32', status='error', error='timed out after 900 s',
                  spec=dict(batch=32, seq=128), round=0)]
  best = benchmark_inference.best_rounds(results)
  assert sorted((r['name'], r.get('sequences_per_s')) for r in best) == [
      ('ours/f32', 120.0), ('torch/bf16', 80.0), ('torch/f32', 60.0), ('torch_compile/f32', None)]
  table = benchmark_inference.markdown_table(best).splitlines()
  assert table[2] == '| 32 | 128 | ours/f32 | 120.0 | 266.7 | 1.50x |'  # Over torch/bf16's 80.
  assert table[3].endswith('| torch/bf16 | 80.0 | 400.0 | 1.00x |')
  assert 'timed out' in table[-1]


def test_runner_alternates_rounds_and_writes_results(monkeypatch, tmp_path):
  calls = []
  def fake_run(spec, timeout):
    calls.append(spec.name)
    rate = {'ours/f32': 50.0, 'torch/f32': 40.0}[spec.name] + len(calls)
    return dict(name=spec.name, status='ok', spec=dataclasses.asdict(spec), sequences_per_s=rate,
                step_s=dict(median=spec.batch / rate))
  monkeypatch.setattr(benchmark_inference, 'run_in_subprocess', fake_run)
  benchmark_inference.main(['--runs', 'ours/f32,torch/f32', '--batches', '2', '--lengths', '32',
                            '--out', str(tmp_path)])
  assert calls == ['ours/f32', 'torch/f32', 'torch/f32', 'ours/f32']  # Second round reversed.
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert [r['round'] for r in saved['results']] == [0, 0, 1, 1]
  assert saved['command'].endswith('--runs ours/f32,torch/f32 --batches 2 --lengths 32 --out '
                                   f'{tmp_path}')
  rows = (tmp_path / 'results.md').read_text().splitlines()[2:]
  assert rows == ['| 2 | 32 | ours/f32 | 54.0 | 37.0 | 1.26x |',  # Best rounds: 54 and 43.
                  '| 2 | 32 | torch/f32 | 43.0 | 46.5 | 1.00x |']


@pytest.mark.slow
def test_worker_prints_one_result_line():
  spec = measure.Spec(system='ours', batch=2, seq=32, warmup=0, steps=2, max_time=1)
  result = subprocess.run([sys.executable, '-m', 'benchmarks.inference',
                           json.dumps(dataclasses.asdict(spec))], cwd=training_util.ROOT,
                          env=training_util.env(), capture_output=True, text=True, timeout=600)
  lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  assert len(lines) == 1, result.stderr[-3000:]
  measured = json.loads(lines[0].removeprefix('RESULT '))
  assert measured['status'] == 'ok' and measured['timed_steps'] == 2
  assert measured['sequences_per_s'] == pytest.approx(2 / measured['step_s']['median'])
