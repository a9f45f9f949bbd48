"""experiments/ablate_albert.py: ALBERT Tables 4 and 5, parameter counts from the layer shapes."""
import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from encoders.adaptation import finetune_ablation
from encoders.configs import albert as albert_configs
from encoders.training import reload, sweep
from experiments import ablate_albert
from tests import training_util

# (model.sharing, data.input_format) of the six runs: Table 4's sharing modes with SOP, and
# Table 5's NSP and None beside the all-shared SOP run they share with Table 4.
RUNS = {('all', 'sop'), ('attention', 'sop'), ('ffn', 'sop'), ('none', 'sop'),
        ('all', 'segment_pair_nsp'), ('all', 'full_sentences')}


def pooler_parameters(model) -> int:
  return model.hidden_size ** 2 + model.hidden_size


def expected_parameters(model) -> dict[str, int]:
  """Encoder parameters per sharing mode, counted from the shapes of HF's AlbertModel."""
  V, E, H, I, L = (model.vocab_size, model.embedding_size, model.hidden_size,
                   model.intermediate_size, model.num_layers)
  embeddings = (V + model.max_position_embeddings + model.type_vocab_size) * E + 2 * E  # + LN
  mapping = E * H + H  # embedding_hidden_mapping_in
  attention = 4 * (H * H + H) + 2 * H  # query, key, value, output dense; LayerNorm
  ffn = 2 * H * I + H + I + 2 * H  # H -> I -> H; LayerNorm
  one_layer = embeddings + mapping + attention + ffn + pooler_parameters(model)
  return {'all': one_layer, 'attention': one_layer + (L - 1) * ffn,
          'ffn': one_layer + (L - 1) * attention, 'none': one_layer + (L - 1) * (attention + ffn)}


def by_sharing_and_format(cells):
  return {(c.overrides['model.sharing'], c.overrides['data.input_format']): c for c in cells}


def test_paper_scale_counts_are_albert_base_and_the_papers():
  base = ablate_albert.base_config('paper')
  assert base.to_dict() == albert_configs.get_config('base').to_dict()
  cells = by_sharing_and_format(ablate_albert.cells('paper', base))
  assert set(cells) == RUNS and len(cells) == 6  # SOP = all-shared: one cell, not two.
  expected = expected_parameters(base.model)
  assert expected['all'] == 11_683_584  # transformers' albert-base-v2 (tests/test_albert.py).
  printed = {'all': 12, 'attention': 64, 'ffn': 38, 'none': 89}  # Lan et al. Table 4, E=128.
  for (sharing, _), cell in cells.items():
    count = int(cell.info['encoder params'].replace(',', ''))
    assert count == expected[sharing]
    assert abs(count / 1e6 - printed[sharing]) < 0.7  # The paper rounds (89.65M is "89M").


@pytest.mark.parametrize('scale,steps', [('quick', 100), ('tiny', finetune_ablation.TINY_STEPS)])
def test_tiny_is_albert_tiny_on_the_ablations_schedule(scale, steps):
  config, schedule = ablate_albert.base_config(scale), finetune_ablation.pretrain_config(scale)
  assert config.model.to_dict() == albert_configs.get_config('tiny').model.to_dict()
  assert config.train.to_dict() == schedule.train.to_dict()
  assert (config.train.num_steps, config.train.batch_size, config.data.seq_length) == (steps, 32, 128)
  assert config.optimizer.warmup_steps == schedule.optimizer.warmup_steps
  assert (config.data.masking, config.data.tokenizer) == ('ngram', 'unigram')


def _markdown_rows(path) -> list[dict[str, str]]:
  lines = [line for line in path.read_text().splitlines() if line.startswith('|')]
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  return [dict(zip(header, (c.strip() for c in line.strip('|').split('|')))) for line in lines[2:]]


def _encoder_count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params['encoder']))


@pytest.mark.slow
def test_smoke_run_reports_every_cell_with_exact_parameter_counts(tmp_path):
  command = [sys.executable, '-m', 'experiments.ablate_albert', '--smoke', f'--out={tmp_path}']
  result = subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(1),
                          capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  cells = ablate_albert.cells('smoke', ablate_albert.base_config('smoke'))
  with open(tmp_path / 'results.csv') as f:
    results = {row['cell']: row for row in csv.DictReader(f)}
  table = {row['cell']: row for row in _markdown_rows(tmp_path / 'results.md')}
  assert set(results) == set(table) == {c.name for c in cells}  # All six, not the first two.
  assert 'paper: params' in next(iter(table.values()))
  assert (tmp_path / 'results.png').stat().st_size > 1000

  model = ablate_albert.base_config('smoke').model
  assert model.num_layers >= 2  # One layer would make every sharing mode the same model.
  expected = expected_parameters(model)
  assert expected['none'] > expected['attention'] > expected['ffn'] > expected['all']  # FFN 4H.
  runs = set()
  for cell in cells:
    config, _, params = reload.load_workdir(
        os.path.join(tmp_path, 'runs', sweep.run_name(cell, 0), 'pretrain'))
    sharing, input_format = config.model.sharing, config.data.input_format
    runs.add((sharing, input_format))
    assert int(table[cell.name]['encoder params'].replace(',', '')) == expected[sharing]
    has_pooler = 'pooler' in params['encoder']  # Only a sentence head pretrains the pooler.
    assert has_pooler == (input_format != 'full_sentences')
    # The trained encoder has the counted parameters (the pooler is added at fine-tuning).
    assert _encoder_count(params) + (0 if has_pooler else pooler_parameters(model)) == expected[sharing]
    sentence_accuracy = results[cell.name]['nsp_accuracy']
    assert (sentence_accuracy != '') == has_pooler
    assert np.isfinite(float(results[cell.name]['mlm_loss']))
    assert 0.0 <= float(results[cell.name]['test_accuracy']) <= 1.0
  assert runs == RUNS
