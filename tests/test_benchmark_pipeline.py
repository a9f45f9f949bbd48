"""experiments/benchmark_pipeline.py in its smoke form: the cold build, the warm reload and a few
batches of every setting, written to results.json (the README's input-pipeline table reads it)."""
import json
import subprocess
import sys

import pytest

from tests import training_util


@pytest.mark.slow
def test_smoke_run_writes_every_setting(tmp_path):
  subprocess.run([sys.executable, '-m', 'experiments.benchmark_pipeline', '--num_batches=3',
                  f'--out={tmp_path}'], cwd=training_util.ROOT, env=training_util.env(),
                 check=True, timeout=900, capture_output=True)
  results = json.loads((tmp_path / 'results.json').read_text())
  # The English summaries' train split: ~9k documents, ~0.8M tokens (~776k words in all).
  assert results['cold']['documents'] > 8000 and results['cold']['tokens'] > 5e5
  # (experiments.benchmark_pipeline is not imported here: its absl flags would clash with other
  # experiments' in one pytest process.)
  settings = {(r['input_format'], r['masking'], r['packing']) for r in results['warm']}
  assert len(settings) == len(results['warm']) == 5
  for row in results['warm']:
    assert 0 < row['efficiency'] <= 1
    assert 0 < row['real_tokens_per_s'] <= row['tokens_per_s']
  assert results['peak_rss_mib'] > 100
