"""ELECTRA-tiny's discriminator through training in the two electra_vs_mlm sweeps (4,000-step cell,
3 seeds each): absolute positions at 2e-4 against relative positions at 5e-4.

  python docs/ablations_tiny/electra_vs_mlm_relative/recall.py

Reads <sweep>/metrics/ELECTRA_4000_steps__seed<s>.jsonl (each run's pretrain/metrics.jsonl, copied)
and <sweep>/diagnostics/ELECTRA_4000_steps__seed<s>.jsonl (experiments.rtd_diagnostics, see
../run.sh). Writes recall_vs_step.png here and prints recall.md's table (mean ± std over seeds).
"""
import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

HERE = pathlib.Path(__file__).parent
SWEEPS = {'electra_vs_mlm': 'absolute positions, lr 2e-4',
          'electra_vs_mlm_relative': 'relative positions (LayerNorm\'d), lr 5e-4'}
SEEDS = (0, 1, 2)
TRAIN_STEPS = (100, 200, 300, 500, 1000, 2000, 3000, 4000)


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def training_recall(sweep: str, seed: int) -> dict[int, float]:
  """{step: the discriminator's recall on that step's training batch}."""
  rows = read_jsonl(HERE.parent / sweep / 'metrics' / f'ELECTRA_4000_steps__seed{seed}.jsonl')
  return {r['step']: r['train/rtd_recall'] for r in rows if 'train/rtd_recall' in r}


def diagnostics(sweep: str, seed: int) -> dict[int, dict]:
  path = HERE.parent / sweep / 'diagnostics' / f'ELECTRA_4000_steps__seed{seed}.jsonl'
  return {r['step']: r for r in read_jsonl(path)}


def mean_std(values: list[float]) -> str:
  return f'{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}'


def main() -> None:
  figure, (ax_recall, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
  lines = ['| positions, lr | ' + ' | '.join(f'recall, step {s}' for s in TRAIN_STEPS)
           + ' | ROC AUC, step 2000 | 3000 | 4000 |', '|---|' + '---:|' * (len(TRAIN_STEPS) + 3)]
  for (sweep, label), color in zip(SWEEPS.items(), ('tab:gray', 'tab:blue')):
    recalls = [training_recall(sweep, seed) for seed in SEEDS]
    diags = [diagnostics(sweep, seed) for seed in SEEDS]
    for seed, recall in zip(SEEDS, recalls):
      steps = sorted(recall)
      ax_recall.plot(steps, [recall[s] for s in steps], color=color, alpha=0.7, lw=1,
                     label=label if seed == 0 else None)
    for seed, diag in zip(SEEDS, diags):
      steps = sorted(diag)
      ax_auc.plot(steps, [diag[s]['rtd_auc'] for s in steps], 'o-', color=color,
                  label=label if seed == 0 else None)
    cells = [mean_std([r[s] for r in recalls]) for s in TRAIN_STEPS]
    cells += [mean_std([d[s]['rtd_auc'] for d in diags]) for s in (2000, 3000, 4000)]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  ax_recall.set(xlabel='step', ylabel='replaced-token recall (training batch)', ylim=(0, 0.3),
                title='Discriminator recall, 3 seeds each (step 0: off the scale)')
  ax_auc.set(xlabel='step', ylabel='ROC AUC (validation)', title='Discriminator ROC AUC')
  ax_auc.axhline(0.5, color='k', lw=0.5, ls='--')
  for ax in (ax_recall, ax_auc):
    ax.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(HERE / 'recall_vs_step.png', dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
