"""Smoke test of experiments/benchmark.py: every system runs at a tiny shape and reports well-formed JSON.

No timing assertions: figures on a shared CPU are noise; only their presence and sanity are checked.
"""
import json
import math

import numpy as np
import pytest

from benchmarks import measure
from experiments import benchmark

# torch_compile is left out: inductor's compile alone takes minutes on 2 cores.
SYSTEMS = ('ours/f32', 'ours/bf16', 'hf_flax/f32', 'torch/bf16')


def test_synthetic_batch_labels_match_masked_positions():
  spec = measure.Spec(system='ours', shape='tiny', seq=64, batch=3)
  batch = measure.synthetic_batch(spec)
  p = measure.max_predictions(0.15, 64)
  assert batch['masked_positions'].shape == (3, p) == (3, 16)
  for row in range(3):
    real = batch['masked_weights'][row] > 0
    positions = batch['masked_positions'][row][real]
    assert real.sum() == round(0.15 * 64)
    np.testing.assert_array_equal(np.flatnonzero(batch['labels'][row] != -100), positions)
    np.testing.assert_array_equal(batch['labels'][row][positions], batch['masked_ids'][row][real])
    assert (batch['input_ids'][row][positions] == measure.SPECIAL_IDS['mask']).all()
    segments = batch['segment_ids'][row]
    starts = np.flatnonzero(batch['position_ids'][row] == 0)
    np.testing.assert_array_equal(starts, [0, np.argmax(segments == 2)])


def test_mfu_is_over_the_peak_of_the_run_s_own_precision():
  peak = dict(status='ok', platform='cpu', device_kind='cpu', f32_gflops={'max': 400.0},
              bf16_acc_f32_gflops={'max': 800.0})
  for precision, peak_flops in (('f32', 400e9), ('bf16', 800e9)):
    result = dict(status='ok', spec={'precision': precision}, tokens_per_s={'median': 1000.0},
                  flops_per_token_useful=2e8, flops_per_token_executed=3e8)
    benchmark.add_mfu(result, peak)
    assert result['mfu_useful'] == pytest.approx(2e8 * 1000 / peak_flops)
    assert result['mfu_executed'] == pytest.approx(3e8 * 1000 / peak_flops)


@pytest.mark.slow
def test_benchmark_runs_every_system(tmp_path):
  benchmark.main(['--shapes', 'tiny', '--seq', '16', '--batch', '2', '--warmup', '0', '--steps', '2',
                  '--systems', 'ours,hf_flax:f32,torch_eager:bf16',
                  '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'results.json').read_text())
  assert (tmp_path / 'tokens_per_s.png').stat().st_size > 0
  assert all(p['status'] == 'ok' and p['f32_gflops']['max'] > 0 for p in report['matmul_peaks'])
  results = {r['name']: r for r in report['results']}
  for name in SYSTEMS:
    result = results[name]
    assert result['status'] == 'ok', result.get('error')
    assert result['spec']['shape'] == 'tiny' and result['timed_steps'] == 2
    assert 'glibc.malloc.hugetlb=1' in result['glibc_tunables'].split(':')  # Every system, same malloc.
    for key in ('tokens_per_s', 'step_s'):
      stats = result[key]
      assert 0 < stats['min'] <= stats['p10'] <= stats['median'] <= stats['p90'] <= stats['max']
    # A high-water mark: a tiny model's build may stay under the peak its imports reached.
    assert result['compile_s'] >= 0 and result['peak_rss_mb'] >= result['rss_before_build_mb'] > 0
    assert result['flops_per_token_executed'] >= result['flops_per_token_useful'] > 0
    assert math.isfinite(result['mfu_useful']) and result['mfu_useful'] > 0
  assert results['ours/f32']['head_positions'] == 8  # Sparse: P = 8 of 16 positions.
  assert results['hf_flax/f32']['head_positions'] == 16
