"""experiments/benchmark_data_scale.py in its smoke form: a 3 MB generated corpus through the
whole chain, with each phase's memory recorded."""
import json
import subprocess
import sys

import pytest

from tests import training_util


@pytest.mark.slow
def test_smoke_run_records_every_phase(tmp_path):
  out = tmp_path / 'out'
  subprocess.run([sys.executable, '-m', 'experiments.benchmark_data_scale', '--gigabytes=0.003',
                  '--num_batches=4', f'--out={out}', f'--scratch={tmp_path / "scratch"}'],
                 cwd=training_util.ROOT, env=training_util.env(), check=True, timeout=900,
                 capture_output=True)
  result, = json.loads((out / 'results.json').read_text())
  assert list(result['phases']) == ['build', 'vocab', 'shards', 'batches']
  assert result['train_documents'] > 0.8 * result['documents_written']  # About 90% in train.
  assert result['shards'] == 1 and result['train_tokens'] > 0
  for phase in result['phases'].values():
    assert 100 < phase['peak_rss_anon_mib'] < 4096
    assert 0 < phase['start_rss_anon_mib'] <= phase['peak_rss_anon_mib']
  # The pipeline ran in a process of its own: it starts below the writer's or this one's heap.
  assert result['phases']['build']['start_rss_anon_mib'] < 400
  assert (out / 'memory.png').stat().st_size > 0
  assert not list((tmp_path / 'scratch').iterdir())  # The corpus and caches are removed.
