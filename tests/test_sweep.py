"""The sweep mechanism: cells x seeds, resume, CSV / markdown / PNG, mean ± std against numpy."""
import csv
import os
import re
import sys

import numpy as np
import pytest

from encoders.configs import finetune as finetune_configs
from encoders.training import sweep

CELLS = [sweep.Cell('a', {'train.batch_size': 8}, {'MNLI': 84.0}),
         sweep.Cell('b/2', {'train.batch_size': 16}, {'MNLI': 85.2, 'SST-2': 92.9}),
         sweep.Cell('c', {'train.batch_size': 32})]
SEEDS = (0, 1, 2)


def fake_metrics(cell, seed):
  base = {'a': 1.0, 'b/2': 2.0, 'c': 3.0}[cell.name]
  return {'accuracy': base + 0.1 * seed ** 2, 'loss': 10 * base - seed}


def test_runs_every_cell_and_seed_once_and_resumes(tmp_path):
  calls = []
  run_fn = lambda cell, seed: calls.append((cell.name, seed)) or fake_metrics(cell, seed)
  sweep.run(CELLS, SEEDS, str(tmp_path), run_fn)
  assert calls == [(c.name, s) for c in CELLS for s in SEEDS]
  calls.clear()
  sweep.run(CELLS, SEEDS, str(tmp_path), run_fn)
  assert not calls  # Everything finished: nothing reruns.
  os.remove(sweep.result_path(str(tmp_path), CELLS[1], 2))
  sweep.run(CELLS, SEEDS, str(tmp_path), run_fn)
  assert calls == [('b/2', 2)]


def test_a_failing_run_leaves_no_result_and_reruns(tmp_path):
  def failing(cell, seed):
    if cell.name == 'b/2' and seed == 1:
      raise RuntimeError('boom')
    return fake_metrics(cell, seed)
  with pytest.raises(RuntimeError):
    sweep.run(CELLS, SEEDS, str(tmp_path), failing)
  assert not os.path.exists(sweep.result_path(str(tmp_path), CELLS[1], 1))
  calls = []
  sweep.run(CELLS, SEEDS, str(tmp_path), lambda c, s: calls.append((c.name, s)) or fake_metrics(c, s))
  assert calls == [('b/2', 1), ('b/2', 2), ('c', 0), ('c', 1), ('c', 2)]


def test_report_mean_and_std_match_numpy(tmp_path):
  sweep.run(CELLS, SEEDS, str(tmp_path), fake_metrics)
  markdown = sweep.report(CELLS, SEEDS, str(tmp_path), ('accuracy', 'loss'), 'Title', 'Paper X, Table 9')
  for cell in CELLS:
    values = [fake_metrics(cell, s) for s in SEEDS]
    row = next(line for line in markdown.splitlines() if line.startswith(f'| {cell.name} |'))
    numbers = [float(x) for x in re.findall(r'-?\d+\.\d+', row)]
    for i, metric in enumerate(('accuracy', 'loss')):
      column = np.array([v[metric] for v in values])
      assert numbers[2 * i] == pytest.approx(column.mean(), abs=1e-4)
      assert numbers[2 * i + 1] == pytest.approx(column.std(ddof=1), abs=1e-4)
  assert 'Paper X, Table 9' in markdown and '| paper: MNLI | paper: SST-2 |' in markdown
  assert '| 3 | 85.2 | 92.9 |' in markdown  # Seeds, then the paper's numbers beside ours.
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(CELLS) * len(SEEDS)
  assert float(rows[4]['loss']) == fake_metrics(CELLS[1], 1)['loss']
  assert (tmp_path / 'results.md').read_text() == markdown
  png = (tmp_path / 'results.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 1000


def test_subprocess_and_print_modes(tmp_path):
  def command_fn(cell, seed):  # A child that writes the result file, as a launched job does.
    code = ('import sys; from encoders.training import sweep; '
            f'sweep.write_result({str(tmp_path)!r}, sweep.Cell({cell.name!r}, {{}}), {seed}, '
            f'{{"accuracy": {seed}}}, 0.0)')
    return [sys.executable, '-c', code]
  printed = sweep.run(CELLS[:1], (0, 1), str(tmp_path), mode='print', command_fn=command_fn)
  assert len(printed) == 2 and not os.path.exists(tmp_path / 'results')
  sweep.run(CELLS[:1], (0, 1), str(tmp_path), mode='subprocess', command_fn=command_fn)
  records = sweep.collect(CELLS[:1], (0, 1), str(tmp_path))
  assert [r['metrics']['accuracy'] for r in records] == [0, 1]
  # Print mode plans every job without reading the results (a bucket may be unreachable
  # from where jobs are planned); a finished job skips itself when run again.
  assert sweep.run(CELLS[:1], (0, 1), str(tmp_path), mode='print', command_fn=command_fn) == printed
  written = [os.path.getmtime(sweep.result_path(str(tmp_path), CELLS[0], seed)) for seed in (0, 1)]
  sweep.run(CELLS[:1], (0, 1), str(tmp_path), mode='subprocess',
            command_fn=lambda cell, seed: [sys.executable, '-c', 'raise SystemExit(1)'])
  assert [os.path.getmtime(sweep.result_path(str(tmp_path), CELLS[0], seed))
          for seed in (0, 1)] == written


def test_overrides_are_checked():
  config = finetune_configs.get_config('topic')
  changed = sweep.apply_overrides(config, {'train.batch_size': 4, 'data.max_length': 64})
  assert (changed.train.batch_size, changed.data.max_length) == (4, 64)
  assert config.train.batch_size == 32  # The base is not modified.
  with pytest.raises(KeyError, match='batchsize'):
    sweep.apply_overrides(config, {'train.batchsize': 4})
  with pytest.raises(ValueError, match='distinct'):
    sweep.run([sweep.Cell('x', {}), sweep.Cell('x', {})], (0,), '/nonexistent', lambda c, s: {})
