"""experiments/ablate_deberta.py: every cell is the model it names, on the ablations' schedule."""
import json
import os
import subprocess
import sys

import pytest

from encoders import deberta
from encoders.adaptation import finetune_ablation
from encoders.configs import deberta as deberta_configs
from encoders.training import objectives, sweep
from experiments import ablate_deberta
from tests import training_util


def built(scale: str) -> dict:
  """{cell name: (config, objective)} of every cell at `scale`."""
  base = ablate_deberta.base_config(scale)
  result = {}
  for cell in ablate_deberta.cells(scale, base):
    config = sweep.apply_overrides(base, cell.overrides)
    result[cell.name] = (config, objectives.make_objective(config, sentence_head=False))
  return result


def test_each_cell_builds_the_model_it_names():
  cells = built('tiny')
  assert len(cells) == 8
  for name, (config, objective) in cells.items():
    model = objective.model.config
    assert config.optimizer.learning_rate == 1e-3, name  # Tiny's one rate (configs/deberta.py).
    if 'RTD' in name:
      assert isinstance(objective.model, deberta.RTDPair)
      assert model.sharing == name.split(', ')[1].split(' ')[0].lower()
      continue
    if name.startswith('BERT'):
      assert type(objective.model).__module__ == 'encoders.bert'
      assert (model.type_vocab_size, model.num_layers, model.hidden_size) == (2, 4, 128)
      continue
    assert type(objective.model).__module__ == 'encoders.deberta'
    terms = {'-c2p (T4)': ('p2c',), '-p2c (T4)': ('c2p',)}.get(name, ('p2c', 'c2p'))
    assert model.pos_att_type == terms
    assert model.emd == (name != '-EMD (T4)')


@pytest.mark.parametrize('scale,steps', [('quick', 100), ('tiny', finetune_ablation.TINY_STEPS)])
def test_tiny_is_deberta_tiny_on_the_ablations_schedule_and_paper_is_base(scale, steps):
  config, schedule = ablate_deberta.base_config(scale), finetune_ablation.pretrain_config(scale)
  assert config.model.to_dict() == deberta_configs.get_config('tiny').model.to_dict()
  assert config.train.to_dict() == schedule.train.to_dict()
  assert (config.train.num_steps, config.train.batch_size, config.data.seq_length) == (steps, 32, 128)
  assert ablate_deberta.base_config('paper').to_dict() == deberta_configs.get_config('base').to_dict()
  for name, (config, _) in built('paper').items():  # rtd.sh's base rate is mlm.sh's.
    assert config.optimizer.learning_rate == 1e-4, name


@pytest.mark.slow
def test_smoke_gdes_cell_pretrains_and_fine_tunes(tmp_path):
  cell = 'v3 RTD, GDES (v3)'
  command = [sys.executable, '-m', 'experiments.ablate_deberta', '--smoke', f'--out={tmp_path}',
             f'--cell={cell}']
  result = subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(1),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  name = sweep.run_name(sweep.Cell(cell, {}), 0)
  with open(os.path.join(tmp_path, 'results', f'{name}.json')) as f:
    metrics = json.load(f)['metrics']
  assert 0.0 <= metrics['test_accuracy'] <= 1.0
  assert 0.0 <= metrics['rtd_recall'] <= 1.0 and 0.0 <= metrics['rtd_precision'] <= 1.0
  rtd = training_util.train_metric(os.path.join(tmp_path, 'runs', name, 'pretrain'), 'rtd_loss')
  assert rtd  # The run trained the RTD pair.
