"""Masking-rate ablation (Wettig et al. 2022, "Should You Mask 15% in Masked Language Modeling?").

  python -m experiments.ablate_masking_rate --out /tmp/ablate_masking_rate            # tiny, 3 seeds
  python -m experiments.ablate_masking_rate --out /tmp/ablate_mr_smoke --smoke         # minutes
  python -m experiments.ablate_masking_rate --out gs://... --scale=paper --mode=print  # one job per run

Rates 0.15 / 0.30 / 0.40 / 0.60 / 0.80, each with BERT's 80/10/10 corruption and with every
predicted token replaced by [MASK], and at 15% the two other splits of BERT's Table 8 (80%
[MASK] with 20% random tokens, 80% [MASK] with 20% kept); dynamic masking over FULL-SENTENCES
rows (no NSP), as the paper. Reported: MLM validation loss at a fixed 15% (config.eval_data;
the paper evaluates all rates at 15%), the training MLM loss at each run's own rate, and
topic-task accuracy / macro-F1 after fine-tuning. Besides the sweep's results.{csv,md,png},
by_rate.png plots the MLM loss at 15% and the test accuracy against the masking rate, a line
per corruption scheme.
mlm_loss_at_15 pools all predictions: a model trained with kept tokens copies the 10% that
validation keeps (~0.5 nats there against ~6.9 for a [MASK]-only model), so it compares rates
within one corruption scheme, not across schemes; docs/ablations_tiny/masking_rate/
loss_by_kind.py splits it by what each predicted position shows.
Anchor (paper, BERT-large): 40% >= 15% on GLUE and SQuAD; 80% keeps ~95% of the fine-tuning
performance. At tiny scale smaller models favour lower rates (the paper's Section 4 trend).
"""

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from encoders import paths
from encoders.adaptation import finetune_ablation
from encoders.training import findings, sweep

RATES = (0.15, 0.30, 0.40, 0.60, 0.80)
CORRUPTIONS = {'80/10/10': (0.8, 0.1), '[MASK] only': (1.0, 0.0)}  # name: (mask, random) probs.
# BERT's Appendix C.2 (Table 8) rows that 80/10/10 is made of, at 15% only: no kept tokens,
# no random tokens. The frozen-feature probe is the paper's feature-based column.
SPLITS_AT_15 = {'80/0/20': (0.8, 0.2), '80/20/0': (0.8, 0.0)}
PLOTTED = {'mlm_loss_at_15': 'validation MLM loss at 15% masking', 'test_accuracy': 'topic test accuracy'}
PAPER = {0.15: '100% (reference)', 0.40: '> 15% (best)', 0.80: '~95% of 15%'}

FINDINGS = (  # BERT-large's result; Section 4: smaller models prefer lower rates.
    findings.Finding('Masking 40% beats 15%', 'Wettig et al. 2022, abstract',
                     better=r'rate=0\.40 80/10/10', worse=r'rate=0\.15 80/10/10',
                     metric='probe_topic'),
    findings.Finding('Masking 80% falls below 15% (paper: keeps 95% of its performance)',
                     'Wettig et al. 2022, abstract', better=r'rate=0\.15 80/10/10',
                     worse=r'rate=0\.80 80/10/10', metric='probe_topic'),
    findings.Finding('[MASK] only hurts the frozen features (the mismatch with unmasked text)',
                     'BERT Appendix C.2, Table 8 (feature-based NER)', better=r'rate=0\.15 80/10/10',
                     worse=r'rate=0\.15 \[MASK\] only', metric='probe_topic'),
)


def paper_config(config) -> None:
  """BERT-large with the efficient recipe the paper trains with (Izsak et al. 2021), as we read
  the paper: check batch / steps / lr against its appendix before a paper-scale run."""
  config.model.update(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096)
  config.data.seq_length = 128
  config.train.update(batch_size=4096, num_steps=23_000)
  config.optimizer.update(learning_rate=2e-3, warmup_steps=1_380, b2=0.98)


def cells(scale, base):
  del scale, base
  result = []
  splits = [(corruption, probs, RATES) for corruption, probs in CORRUPTIONS.items()]
  splits += [(corruption, probs, (0.15,)) for corruption, probs in SPLITS_AT_15.items()]
  for corruption, probs, rates in splits:
    for rate in rates:
      paper = {'downstream vs 15% (BERT-large, GLUE/SQuAD)': PAPER.get(rate, '—')} \
          if corruption == '80/10/10' else {}
      result.append(sweep.Cell(
          f'rate={rate:.2f} {corruption}',
          {'data.mask_rate': rate, 'data.mask_token_prob': probs[0],
           'data.random_token_prob': probs[1], 'data.input_format': 'full_sentences',
           'data.static_masking': False}, paper))
  return result


def series_by_rate(summary: dict, metric: str) -> dict[str, list[tuple[float, float, float]]]:
  """{corruption: [(rate, mean, std), ...]} over the finished cells of `summary`."""
  result = {}
  for cell in cells('tiny', None):
    if metric in summary.get(cell.name, {}):
      corruption = cell.name.split(' ', 1)[1]
      result.setdefault(corruption, []).append(
          (cell.overrides['data.mask_rate'], *summary[cell.name][metric][:2]))
  return result


def plot_by_rate(scale: str, base, out: str, seeds) -> str:
  """by_rate.png: each PLOTTED metric (mean ± std over seeds) against the masking rate."""
  del base
  summary = sweep.summarize(sweep.collect(cells(scale, None), seeds, out), tuple(PLOTTED))
  figure, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 3.8))
  for ax, (metric, label) in zip(axes, PLOTTED.items()):
    for corruption, points in series_by_rate(summary, metric).items():
      rates, means, stds = zip(*points)
      ax.errorbar(rates, means, yerr=stds, marker='o', capsize=3, label=corruption)
    ax.set_xticks(RATES)
    ax.set_xlabel('training masking rate')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  figure.suptitle(f'Masking rate (scale={scale}, {len(seeds)} seed(s))')
  figure.tight_layout()
  path = os.path.join(out, 'by_rate.png')
  paths.save_figure(figure, path, dpi=110)
  plt.close(figure)
  return path


ABLATION = finetune_ablation.Ablation(
    name='masking_rate', title='Masking rate: MLM loss at 15% and topic accuracy',
    paper='Wettig et al. 2022, "Should You Mask 15% in Masked Language Modeling?" (abstract, '
          'Sec. 3 / Table 1: BERT-large, efficient recipe); relative fine-tuning performance',
    metrics=('mlm_loss_at_15', 'train_mlm_loss', 'test_accuracy', 'test_macro_f1'), cells=cells,
    paper_config=paper_config, eval_mask_rate=0.15, extra_plot=plot_by_rate, findings=FINDINGS)


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
