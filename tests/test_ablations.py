"""Ablation scripts: their cells follow the papers' settings; each smoke run writes its outputs."""
import csv
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from encoders.adaptation import finetune_ablation
from encoders.configs import bert as bert_configs
from encoders.training import checkpointing, findings, sweep
from experiments import ablate_batch_size, ablate_masking_rate, ablate_masking_strategy, ablate_nsp
from tests import training_util


def test_masking_rate_cells():
  cells = ablate_masking_rate.cells('tiny', finetune_ablation.pretrain_config('tiny'))
  rates = sorted({c.overrides['data.mask_rate'] for c in cells})
  assert rates == [0.15, 0.30, 0.40, 0.60, 0.80] and len(cells) == 12
  corruption = {(c.overrides['data.mask_rate'], c.overrides['data.mask_token_prob'],
                 c.overrides['data.random_token_prob']) for c in cells}
  assert corruption == ({(r, 0.8, 0.1) for r in rates} | {(r, 1.0, 0.0) for r in rates}
                        | {(0.15, 0.8, 0.2), (0.15, 0.8, 0.0)})  # BERT Table 8's two other splits.
  assert ablate_masking_rate.ABLATION.eval_mask_rate == 0.15
  assert ablate_masking_rate.ABLATION.metrics[:2] == ('mlm_loss_at_15', 'train_mlm_loss')


def test_masking_rate_by_rate_plot_reads_each_corruption_and_rate(tmp_path):
  cells = ablate_masking_rate.cells('tiny', None)
  losses = {}  # (corruption, rate): the two seeds' losses.
  rng = np.random.default_rng(0)
  for cell in cells[::3]:  # A partial sweep: some cells of both corruptions unfinished.
    key = (cell.name.split(' ', 1)[1], cell.overrides['data.mask_rate'])
    losses[key] = rng.uniform(6, 8, size=2)
    for seed, loss in enumerate(losses[key]):
      sweep.write_result(str(tmp_path), cell, seed, {'mlm_loss_at_15': loss, 'test_accuracy': 0.5}, 1.0)
  summary = sweep.summarize(sweep.collect(cells, [0, 1], str(tmp_path)), ('mlm_loss_at_15',))
  series = ablate_masking_rate.series_by_rate(summary, 'mlm_loss_at_15')
  assert {(c, r) for c, points in series.items() for r, _, _ in points} == set(losses)
  for corruption, points in series.items():
    assert [r for r, _, _ in points] == sorted(r for r, _, _ in points)
    for rate, mean, std in points:
      np.testing.assert_allclose((mean, std), (losses[corruption, rate].mean(),
                                               losses[corruption, rate].std(ddof=1)))
  path = ablate_masking_rate.plot_by_rate('tiny', None, str(tmp_path), [0, 1])
  assert os.path.getsize(path) > 1000


def test_tiny_is_the_main_command_at_tiny_steps():
  """docs/tiny_signal measured configs/bert.py:tiny run for TINY_STEPS steps: tiny is that run."""
  tiny, main = finetune_ablation.pretrain_config('tiny'), bert_configs.get_config('tiny')
  for section in ('model', 'data', 'optimizer'):
    assert tiny[section].to_dict() == main[section].to_dict(), section
  assert (tiny.train.num_steps, tiny.train.batch_size) == (finetune_ablation.TINY_STEPS, 32)
  assert finetune_ablation.pretrain_config('quick').train.num_steps == 100


@pytest.mark.parametrize('scale', ['quick', 'tiny', 'paper'])
def test_batch_size_cells_train_on_equal_tokens(scale):
  base = finetune_ablation.pretrain_config(scale)
  cells = ablate_batch_size.cells(scale, base)
  rows = [c.overrides['train.batch_size'] * c.overrides['train.num_steps'] for c in cells]
  batches = [c.overrides['train.batch_size'] for c in cells]
  lrs = [c.overrides['optimizer.learning_rate'] for c in cells]
  assert np.allclose(np.array(batches) / batches[0], [1, 8, 32])
  assert max(rows) / min(rows) < 1.03  # Paper: 256 x 1M = 2K x 125K ~ 8K x 31K.
  assert np.allclose(np.array(lrs) / lrs[0], [1, 7, 10])
  for cell in cells:
    config = sweep.apply_overrides(base, cell.overrides)
    micro = config.train.batch_size // config.train.grad_accum_steps
    assert config.train.batch_size % config.train.grad_accum_steps == 0 and micro <= max(64, batches[0])


def test_masking_strategy_and_nsp_cells(monkeypatch):
  base = finetune_ablation.pretrain_config('tiny')
  strategy = {c.name: c.overrides for c in ablate_masking_strategy.cells('tiny', base)}
  assert strategy['dynamic']['data.static_masking'] is False
  assert strategy['static (dupe_factor=10)']['data.dupe_factor'] == 10
  # The same epochs over the corpus at both small scales: its fraction grows with the steps.
  quick = finetune_ablation.pretrain_config('quick')
  fractions = {scale: ablate_masking_strategy.cells(scale, config)[1].overrides['data.train_split']
               for scale, config in (('quick', quick), ('tiny', base))}
  assert fractions == {'quick': 'train[:1.5%]',
                       'tiny': f'train[:{1.5 * finetune_ablation.TINY_STEPS / 100:g}%]'}
  tokens = {'segment_pair_nsp': 120.0, 'sentence_pair_nsp': 40.0}
  monkeypatch.setattr(finetune_ablation, 'mean_tokens_per_row',
                      lambda config: tokens[config.data.input_format])
  nsp = {c.name: c.overrides for c in ablate_nsp.cells('tiny', base)}
  assert len(nsp) == 5
  assert nsp['SENTENCE-PAIR + NSP']['train.batch_size'] == 3 * base.train.batch_size
  assert nsp['SEGMENT-PAIR, No NSP (BERT)'] == {'data.input_format': 'segment_pair_nsp',
                                                'train.sentence_loss_weight': 0.0,
                                                'data.static_masking': False}
  assert {o['data.input_format'] for o in nsp.values()} == {
      'segment_pair_nsp', 'sentence_pair_nsp', 'full_sentences', 'doc_sentences'}


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for the smoke runs: their cells compile the same steps."""
  return str(tmp_path_factory.mktemp('xla_cache'))


def _smoke(name, out_dir, cache_dir):
  command = [sys.executable, '-m', f'experiments.ablate_{name}', '--smoke', f'--out={out_dir}']
  env = dict(training_util.env(1), JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return subprocess.run(command, cwd=training_util.ROOT, env=env, capture_output=True, text=True,
                        timeout=1500)


@pytest.mark.slow
@pytest.mark.parametrize('name,paper', [
    ('masking_rate', 'Wettig et al. 2022'), ('nsp', 'RoBERTa, Table 2'),
    ('batch_size', 'RoBERTa, Table 3'), ('masking_strategy', 'RoBERTa, Table 1')])
def test_smoke_run_writes_csv_table_and_plot(name, paper, tmp_path, compilation_cache):
  result = _smoke(name, tmp_path, compilation_cache)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2  # Smoke: the first two cells, one seed.
  for row in rows:
    assert 0.0 <= float(row['test_accuracy']) <= 1.0 and np.isfinite(float(row['mlm_loss']))
    assert 0.0 < float(row['probe_macro']) < 100.0  # The suite's linear probes ran on the encoder.
  markdown = (tmp_path / 'results.md').read_text()
  assert paper in markdown and 'paper: ' in markdown
  assert findings.rule() in markdown and '**pending**' in markdown  # One seed: no verdict yet.
  assert '| probe_topic | probe_macro |' in markdown  # The findings' downstream metric is a column.
  assert (tmp_path / 'results.png').stat().st_size > 1000
  if name == 'masking_rate':
    assert (tmp_path / 'by_rate.png').stat().st_size > 1000
  assert len(os.listdir(tmp_path / 'results')) == 2


def test_a_preempted_pretraining_writes_no_result(monkeypatch, tmp_path):
  """SIGTERM makes train_and_evaluate return early (checkpoint saved); the run must not go on
  to fine-tune the partial model and record it as finished."""
  def preempted(config, workdir):  # Saved step 1 of num_steps, then stopped.
    manager = checkpointing.make_manager(workdir, ml_collections.ConfigDict(dict(keep=1, async_save=False)))
    checkpointing.save(manager, 1, {'params': {'w': np.zeros(2)}}, {'step': 1}, config)
    manager.wait_until_finished()
    manager.close()
    return {'mlm_loss': 7.0, 'mlm_accuracy': 0.1}
  monkeypatch.setattr(finetune_ablation.trainer, 'train_and_evaluate', preempted)
  monkeypatch.setattr(finetune_ablation.finetune, 'finetune', lambda *a: pytest.fail('fine-tuned'))
  pretrain = finetune_ablation.pretrain_config('smoke')
  with pytest.raises(SystemExit, match='stopped at step 1 of 4'):
    finetune_ablation.pretrain_and_finetune(pretrain, finetune_ablation.finetune_config('smoke'),
                                            str(tmp_path), 0, None)


@pytest.mark.slow
def test_print_mode_writes_nothing_to_out(tmp_path):
  # ablate_nsp's cells measure tokens per row, so printing builds a tokenizer: in a scratch dir.
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.ablate_nsp', '--smoke', f'--out={out}', '--mode=print'],
      cwd=training_util.ROOT, env=training_util.env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines and lines[0].strip() and all('experiments.ablate_nsp' in line for line in lines)
  assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.mark.slow
def test_print_mode_keeps_a_bucket_out_as_a_url(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.ablate_nsp', '--smoke', '--out=gs://bucket/nsp',
       '--mode=print'], cwd=tmp_path, env=training_util.env(), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count('--out=gs://bucket/nsp ') == len(result.stdout.splitlines()) > 0
  assert not os.path.exists(tmp_path / 'gs:')
