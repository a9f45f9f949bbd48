"""experiments/compare_inits.py: each starting point is fine-tuned from what its cell names."""
import csv
import json
import subprocess
import sys

import pytest

from encoders.training import trainer
from experiments import compare_inits
from tests import training_util
from tests.test_finetune import TINY_MODEL


def test_cells_per_training_size():
  cells = compare_inits.make_cells('/w', '/hf', [500, 0], 1e-4, num_epochs=2.0, min_rows=5000)
  assert [c.name for c in cells] == ['pretrained n=500', 'random init n=500', 'HF n=500',
                                     'pretrained n=all', 'random init n=all', 'HF n=all']
  by_name = {c.name: c.overrides for c in cells}
  assert by_name['random init n=500'] == {'data.max_train_examples': 500, 'train.num_epochs': 10.0,
                                          'init_from': '/w', 'reinit': True}
  assert by_name['HF n=all'] == {'data.max_train_examples': 0, 'train.num_epochs': 2.0,
                                 'init_from': '/hf', 'optimizer.learning_rate': 1e-4}
  assert len(compare_inits.make_cells('/w', None, [16], 1e-4, num_epochs=2.0, min_rows=5000)) == 2


@pytest.mark.slow
def test_run_fine_tunes_each_source_and_writes_the_report(minilm_dir, tmp_path):
  pretrain_dir = str(tmp_path / 'pretrain')
  pretrain = training_util.tiny_config(model__vocab_size=30522, train__num_steps=2,
                                       checkpoint__every_steps=2)
  pretrain.model.update(TINY_MODEL)
  pretrain.data.tokenizer_path = minilm_dir
  pretrain.data.input_format = 'full_sentences'
  trainer.train_and_evaluate(pretrain, pretrain_dir)
  out = tmp_path / 'compare'
  command = [sys.executable, '-m', 'experiments.compare_inits', f'--pretrained={pretrain_dir}',
             f'--out={out}', f'--hf={minilm_dir}', '--train_sizes=16', '--seeds=1',
             '--set=data.max_length=32', '--set=data.max_examples=48', '--set=train.batch_size=8',
             '--set=train.eval_batch_size=8', '--set=train.num_epochs=1.0', '--min_rows=16']
  result = subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(1),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(out / 'results.csv') as f:
    rows = {row['cell']: row for row in csv.DictReader(f)}
  assert set(rows) == {'pretrained n=16', 'random init n=16', 'HF n=16'}
  for row in rows.values():
    assert 0.0 <= float(row['test_accuracy']) <= 1.0 and int(row['train_rows']) == 16
  sources = {}
  for cell in rows:
    with open(out / 'runs' / f'{cell.replace(" ", "_")}__seed0' / 'results.json') as f:
      run = json.load(f)
    sources[cell] = (run['init_from'], run['reinit'])
  assert sources == {'pretrained n=16': ('workdir', False), 'random init n=16': ('workdir', True),
                     'HF n=16': ('hf', False)}
  assert 'random init n=16' in (out / 'results.md').read_text()
  assert (out / 'accuracy_vs_size.png').stat().st_size > 1000
