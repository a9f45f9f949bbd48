"""experiments/electra_vs_mlm.py and its relative-positions form: equal-FLOPs cells, and a smoke
run writes its CSV, table and plots."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from encoders.training import objectives, sweep
from experiments import electra_vs_mlm, electra_vs_mlm_relative
from tests import training_util

MODULES = (electra_vs_mlm, electra_vs_mlm_relative)


@pytest.mark.parametrize('module', MODULES, ids=lambda m: m.ABLATION.name)
@pytest.mark.parametrize('scale', ['quick', 'tiny', 'paper'])
def test_cells_give_both_models_the_same_training_flops(scale, module):
  base = module.ABLATION.base_config(scale)
  relative = module is electra_vs_mlm_relative
  assert (base.model.position_embedding_type, base.model.distance_layer_norm) == (
      ('relative_key_query', True) if relative else ('absolute', False))
  cells = electra_vs_mlm.cells(scale, base)
  assert len(cells) == 2 * len(electra_vs_mlm.BUDGETS[scale])
  for electra, bert in zip(cells[::2], cells[1::2]):
    totals = []
    for cell in (electra, bert):
      config = sweep.apply_overrides(base, cell.overrides)
      objective = objectives.make_objective(config, sentence_head=False)
      assert type(objective).__name__ == ('ReplacedTokenDetection' if cell is electra
                                          else 'MaskedLanguageModeling')
      totals.append(config.train.num_steps * objective.flops_per_sequence(
          config.data.seq_length, int(np.ceil(0.15 * config.data.seq_length / 8)) * 8))
    # Equal within one step of BERT's (steps are whole numbers).
    assert abs(totals[1] / totals[0] - 1) < 1.5 / bert.overrides['train.num_steps']
  assert [bool(c.paper) for c in cells] == [False] * (len(cells) - 2) + [True, True]  # Largest budget.


@pytest.mark.slow
@pytest.mark.parametrize('module', MODULES, ids=lambda m: m.ABLATION.name)
def test_smoke_run_writes_csv_table_and_plots(tmp_path, module):
  result = subprocess.run(
      [sys.executable, '-m', module.__name__, '--smoke', f'--out={tmp_path}'],
      cwd=training_util.ROOT, env=training_util.env(1), capture_output=True, text=True,
      timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['cell'].split(',')[0] for row in rows] == ['ELECTRA', 'BERT (MLM)']
  for row in rows:
    assert 0.0 <= float(row['test_accuracy']) <= 1.0 and 0.0 <= float(row['mlm_accuracy']) <= 1.0
  markdown = (tmp_path / 'results.md').read_text()
  assert 'Clark et al. 2020' in markdown and '79.9' in markdown and '75.1' in markdown
  for plot in ('results.png', 'accuracy_vs_flops.png'):
    assert (tmp_path / plot).stat().st_size > 1000
