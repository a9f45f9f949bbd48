"""Class imbalance: cross-entropy, class weights, focal loss and class-balanced sampling on a
long-tailed subsample of the topic task, read by macro-F1.

  python -m experiments.class_imbalance --init_from workdirs/bert_tiny --out workdirs/class_imbalance

Every cell fine-tunes `--init_from` (our workdir or an HF directory) with the README's topic recipe
(configs/finetune.py:topic_tiny: mean pooling, 64 tokens, lr 1e-3, batch 32, 2 epochs, dev picks
the checkpoint by accuracy) on the same long-tailed subsample of the training records
(encoders/data/imbalance.py, `--ratio` = largest / smallest class; 50 keeps 4,863 of 8,103 records,
the smallest class 30) at the same number of steps; dev and test keep their natural distribution.
Cells differ only in the loss, its class weights and the row order:
  cross-entropy                    the baseline
  class weights                    cross-entropy weighted n / (classes * count) per class
  focal                            Lin et al. 2017, gamma 2
  focal + class weights            the alpha-balanced focal loss of the same paper
  balanced sampling                every draw a uniform class, then a uniform row of it
Runs go through encoders/training/sweep.py (resumable; --mode=print for a job launcher) and write
results.csv, results.md and results.png into --out.
"""
import os
import sys

from absl import app, flags

from encoders import paths
from encoders.adaptation import finetune, finetune_ablation
from encoders.configs import finetune as finetune_configs
from encoders.training import sweep

METRICS = ('test_macro_f1', 'test_accuracy', 'dev_macro_f1')
CELLS = [
    sweep.Cell('cross-entropy', {}),
    sweep.Cell('class weights', {'head.class_weights': 'balanced'}),
    sweep.Cell('focal', {'head.loss': 'focal', 'head.focal_gamma': 2.0}),
    sweep.Cell('focal + class weights', {'head.loss': 'focal', 'head.focal_gamma': 2.0,
                                         'head.class_weights': 'balanced'}),
    sweep.Cell('balanced sampling', {'data.sampling': 'balanced'}),
]


def define_flags() -> None:
  """The command line (defined when run, so that importing this module defines no flags)."""
  flags.DEFINE_string('init_from', None, 'Our pretraining workdir or an HF checkpoint directory.')
  flags.DEFINE_string('out', None, 'Output directory (results, tables, plots, runs).')
  flags.DEFINE_float('ratio', 50.0, 'Largest / smallest class of the long-tailed training records.')
  flags.DEFINE_integer('seeds', 3, 'Seeds per cell (0, 1, ...): the subsample is drawn per seed.')
  sweep.define_job_flags()
  flags.adopt_module_key_flags(sweep)  # --help lists them.
  flags.DEFINE_multi_string('set', [], 'Fine-tuning override of every cell, e.g. train.num_epochs=4.')
  flags.mark_flags_as_required(['init_from', 'out'])


def base_config(init_from: str, ratio: float, overrides: dict):
  config = finetune_configs.get_config('topic_tiny')
  config.init_from = init_from
  config.data.long_tail_ratio = ratio
  return sweep.apply_overrides(config, overrides)


def main(argv):
  del argv
  f = flags.FLAGS
  out = paths.absolute(f.out)
  init_from = paths.absolute(f.init_from)
  base = base_config(init_from, f.ratio, finetune_ablation.parse_overrides(f.set))
  seeds = list(range(f.seeds))
  selected, seeds = sweep.select(CELLS, seeds, f.cell, f.seed)

  def run_fn(cell: sweep.Cell, seed: int) -> dict:
    config = sweep.apply_overrides(base, cell.overrides)
    config.seed = seed
    result = finetune.finetune(config, os.path.join(out, 'runs', sweep.run_name(cell, seed)))
    return dict(test_macro_f1=result['test']['macro_f1'], test_accuracy=result['test']['accuracy'],
                dev_macro_f1=result['dev']['macro_f1'], train_rows=result['train_rows'])

  def command_fn(cell: sweep.Cell, seed: int) -> list[str]:
    return [sys.executable, '-m', 'experiments.class_imbalance', f'--init_from={init_from}',
            f'--out={out}', f'--ratio={f.ratio}', f'--cell={cell.name}', f'--seed={seed}',
            '--mode=inprocess', *(f'--set={s}' for s in f.set)]

  sweep.run(selected, seeds, out, run_fn, mode=f.mode, command_fn=command_fn)
  if f.mode == 'print':
    return
  title = f'Topic-task fine-tuning on a long-tailed subsample (largest / smallest class = {f.ratio:g})'
  print(sweep.report(CELLS, seeds, out, METRICS, title,
                     'none (the methods: Lin et al. 2017 focal loss; class weights as sklearn '
                     "'balanced'; class-balanced sampling)"))


if __name__ == '__main__':
  define_flags()
  app.run(main)
