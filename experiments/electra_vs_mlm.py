"""ELECTRA vs BERT-MLM at equal pretraining compute (Clark et al. 2020, Table 1).

  python -m experiments.electra_vs_mlm --out /tmp/electra_vs_mlm               # tiny, 3 seeds
  python -m experiments.electra_vs_mlm --out /tmp/evm_smoke --smoke             # minutes
  python -m experiments.electra_vs_mlm --out DIR --scale=paper --mode=print    # ELECTRA-Small

Both models have the same discriminator-sized encoder (ELECTRA's, embeddings included) and
the same data, optimizer and masking budget (configs/electra.py); BERT trains it with MLM
(80/10/10, no NSP), ELECTRA with a generator + replaced-token detection. Each compute budget
gives ELECTRA a number of steps and BERT as many steps as make its training FLOPs (as the
trainer counts them: `flops_per_sequence` of each objective, ELECTRA's generator included)
equal to ELECTRA's. Every (cell, seed) pretrains and fine-tunes on the topic task with the
ablations' recipe (encoders/adaptation/finetune_ablation.py); the seed seeds both. Writes
results.csv, results.md, results.png (per cell) and accuracy_vs_flops.png.
"""
import os

import matplotlib

from encoders import paths
from encoders.adaptation import finetune_ablation
from encoders.configs import electra as electra_configs
from encoders.training import findings, objectives, sweep, synthetic

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

# ELECTRA steps per compute budget. Paper: ELECTRA-Small's 1M steps (1.4e18 FLOPs) and two
# earlier budgets of the same recipe.
BUDGETS = {'smoke': (4,), 'quick': (100, 200),
           'tiny': (finetune_ablation.TINY_STEPS // 2, finetune_ablation.TINY_STEPS),
           'paper': (250_000, 500_000, 1_000_000)}
# BERT-MLM on the same model and data: BERT's corruption of the predicted tokens, no NSP.
BERT = {'model.family': 'bert', 'data.mask_token_prob': 0.8, 'data.random_token_prob': 0.1}
PAPER_COLUMN = 'GLUE dev, Small, 1.4e18 FLOPs'
PAPER = {'ELECTRA': 79.9, 'BERT (MLM)': 75.1}

FINDINGS = tuple(
    findings.Finding(f'ELECTRA beats MLM at equal compute ({steps} ELECTRA steps)',
                     'ELECTRA Table 1 (Small: 79.9 against 75.1 GLUE)',
                     better=rf'ELECTRA, {steps} steps, (?P<flops>.+) FLOPs',
                     worse=r'BERT \(MLM\), \d+ steps, $flops FLOPs', metric='probe_topic')
    for steps in BUDGETS['tiny'])


def base_config(scale: str, positions: str = 'absolute'):
  """ELECTRA's recipe (configs/electra.py with `positions`) at the scale's size, on the
  ablations' schedule (its steps per cell: BUDGETS)."""
  schedule = finetune_ablation.pretrain_config(scale)
  size = 'small' if scale == 'paper' else 'tiny'
  config = electra_configs.get_config(f'size={size},positions={positions}')
  if scale != 'paper':
    config.train, config.checkpoint = schedule.train, schedule.checkpoint
  if scale == 'smoke':
    config.model.update(finetune_ablation.SMOKE_MODEL, embedding_size=16)
    config.data.seq_length = schedule.data.seq_length
  return config


def flops_per_sequence(config) -> float:
  """Training FLOPs of one sequence, as the trainer counts them for `config`'s objective."""
  objective = objectives.make_objective(config, sentence_head=False)
  return objective.flops_per_sequence(config.data.seq_length, synthetic.max_predictions(config.data))


def cells(scale, base):
  electra_flops = flops_per_sequence(base)
  bert_flops = flops_per_sequence(sweep.apply_overrides(base, BERT))
  result = []
  for budget in BUDGETS[scale]:
    total = budget * base.train.batch_size * electra_flops
    for name, overrides, steps in (('ELECTRA', {}, budget),
                                   ('BERT (MLM)', BERT, round(budget * electra_flops / bert_flops))):
      paper = {PAPER_COLUMN: PAPER[name]} if budget == BUDGETS[scale][-1] else {}
      warmup = min(base.optimizer.warmup_steps, max(1, steps // 10))
      result.append(sweep.Cell(f'{name}, {steps} steps, {total:.2g} FLOPs',
                               {**overrides, 'train.num_steps': steps,
                                'optimizer.warmup_steps': warmup}, paper))
  return result


def plot_against_flops(scale: str, base, out: str, seeds) -> str:
  """accuracy_vs_flops.png: topic test accuracy (mean ± std over seeds) against each run's FLOPs."""
  all_cells = cells(scale, base)
  summary = sweep.summarize(sweep.collect(all_cells, seeds, out), ('test_accuracy',))
  figure, ax = plt.subplots(figsize=(6, 4))
  for model in PAPER:
    points = []
    for cell in all_cells:
      if cell.name.startswith(model) and cell.name in summary:
        config = sweep.apply_overrides(base, cell.overrides)
        flops = config.train.num_steps * config.train.batch_size * flops_per_sequence(config)
        points.append((flops, *summary[cell.name]['test_accuracy'][:2]))
    if points:
      flops, means, stds = zip(*points)
      ax.errorbar(flops, means, yerr=stds, marker='o', capsize=3,
                  label=f'{model} (paper, {PAPER_COLUMN}: {PAPER[model]})')
  ax.set_xscale('log')
  ax.set_xlabel('pretraining FLOPs (generator included)')
  ax.set_ylabel('topic test accuracy')
  positions = base.model.position_embedding_type
  ax.set_title(f'ELECTRA vs BERT-MLM at equal compute (scale={scale}, {positions} positions)')
  ax.legend(fontsize=7)
  figure.tight_layout()
  path = os.path.join(out, 'accuracy_vs_flops.png')
  paths.save_figure(figure, path, dpi=100)
  plt.close(figure)
  return path


ABLATION = finetune_ablation.Ablation(
    name='electra_vs_mlm', title='ELECTRA vs BERT-MLM at equal pretraining FLOPs, topic task',
    paper='Clark et al. 2020, ELECTRA, Table 1 (GLUE dev at equal train FLOPs 1.4e18: '
          'ELECTRA-Small 79.9 vs BERT-Small 75.1); mlm_accuracy is the generator\'s for ELECTRA',
    metrics=('mlm_accuracy', 'test_accuracy', 'test_macro_f1'), cells=cells,
    base_config=base_config, module='experiments.electra_vs_mlm',
    extra_plot=plot_against_flops, findings=FINDINGS)


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
