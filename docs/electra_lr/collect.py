"""Collects the validation metrics of the ELECTRA-tiny runs into validation.csv and plots RTD recall,
RTD loss (against the all-original prior's entropy) and the discriminator's class-logit gap per step.

  PYTHONPATH=. python docs/electra_lr/collect.py base_5e-4 disc_layers4 emb_mlm long_5e-4 lr_2e-4
  PYTHONPATH=. python docs/electra_lr/collect.py --name=section6 deberta_v3 deberta_v3_absolute ...

writes validation.csv and rtd_vs_step.png, or with --name=X, X.csv and X.png.

Reads docs/electra_lr/runs/<name>/metrics.jsonl (copied from workdirs/electra_lr_<name>).
"""
import csv
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ('rtd_loss', 'rtd_recall', 'rtd_precision', 'replaced_fraction', 'rtd_logit_replaced',
           'rtd_logit_original', 'mlm_accuracy', 'mlm_loss')


def validation_rows(name: str) -> list[dict]:
  rows = []
  with open(os.path.join(HERE, 'runs', name, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'eval/rtd_loss' in record:
        rows.append({'run': name, 'step': record['step'],
                     **{c: record.get(f'eval/{c}', float('nan')) for c in COLUMNS}})
  return rows


def main(args):
  output = args[0].removeprefix('--name=') if args[0].startswith('--name=') else None
  names = args[1:] if output else args
  runs = {name: validation_rows(name) for name in names}
  with open(os.path.join(HERE, f'{output or "validation"}.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, ['run', 'step', *COLUMNS])
    writer.writeheader()
    for rows in runs.values():
      writer.writerows(rows)
  figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for name, rows in runs.items():
    steps = [r['step'] for r in rows]
    axes[0].plot(steps, [r['rtd_recall'] for r in rows], marker='.', label=name)
    line, = axes[1].plot(steps, [r['rtd_loss'] for r in rows], marker='.', label=name)
    fraction = np.array([r['replaced_fraction'] for r in rows])
    prior = -(fraction * np.log(fraction) + (1 - fraction) * np.log(1 - fraction))
    axes[1].plot(steps, prior, ls=':', color=line.get_color())
    axes[2].plot(steps, [r['rtd_logit_replaced'] - r['rtd_logit_original'] for r in rows],
                 marker='.', label=name)
  axes[0].set(title='validation RTD recall (step 0, random init: 0.75-0.78)', xlabel='step',
              ylim=(-0.005, max(0.1, 1.1 * max(r['rtd_recall'] for rows in runs.values()
                                               for r in rows[1:]))))
  axes[1].set(title="validation RTD loss (dotted: the all-original prior's entropy)", xlabel='step',
              ylim=(0.25, 0.5))
  axes[2].set(title='mean logit: replaced - original tokens', xlabel='step')
  axes[0].legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(os.path.join(HERE, f'{output or "rtd_vs_step"}.png'), dpi=110)


if __name__ == '__main__':
  main(sys.argv[1:])
