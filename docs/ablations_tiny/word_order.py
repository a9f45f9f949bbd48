"""Which tiny-scale pretraining runs read word order? `encoders/analysis/word_order.py` on the
last checkpoint of every finished run (a stored results/<run>.json) of the given sweeps whose
checkpoints are in WORK (runs made on another machine are skipped): the run's validation MLM
loss as is and with each row's words shuffled within their segment.
Writes word_order.jsonl (one line per run) and word_order.md (per run, then per cell over seeds).
A run already in word_order.jsonl at the same step keeps its line (the measure is deterministic),
and so do the lines of sweeps not named.

  PYTHONPATH=. python docs/ablations_tiny/word_order.py workdirs/ablations_tiny nsp batch_size ...
"""
import json
import pathlib
import sys

import numpy as np

from encoders.analysis import word_order
from encoders.training import reload

HERE = pathlib.Path(__file__).parent


def main(work: str, sweeps: list[str]) -> None:
  stored_rows = HERE / 'word_order.jsonl'
  measured = {}  # (sweep, cell, seed, step): row, from an earlier call.
  if stored_rows.exists():
    for line in stored_rows.read_text().splitlines():
      row = json.loads(line)
      measured[row['sweep'], row['cell'], row['seed'], row['step']] = row
  rows = [row for row in measured.values() if row['sweep'] not in sweeps]  # Kept as they are.
  for sweep in sweeps:
    for stored in sorted((HERE / sweep / 'results').glob('*.json')):
      run = json.loads(stored.read_text())
      workdir = f'{work}/{sweep}/runs/{stored.stem}/pretrain'
      try:
        step = reload.latest_step(workdir)
        key = (sweep, run['cell'], run['seed'], step)
        if key not in measured:
          result = word_order.measure(workdir, step)
          measured[key] = dict(sweep=sweep, cell=run['cell'], seed=run['seed'], step=step,
                               as_is=result['as_is'], shuffled=result['shuffled'])
      except FileNotFoundError as error:  # Runs made on another machine keep no checkpoint here.
        print(f'skipped: {error}', file=sys.stderr)
        continue
      rows.append(measured[key])
      print(json.dumps(rows[-1]), flush=True)
  stored_rows.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  gap = lambda row, key: row['shuffled'][key] - row['as_is'][key]
  auc = lambda row: (f'{row["as_is"]["rtd_auc"]:.3f} / {row["shuffled"]["rtd_auc"]:.3f}'
                     if 'rtd_auc' in row['as_is'] else '')
  lines = ['| sweep | cell | seed | step | MLM loss as is | shuffled | shuffled - as is | '
           'RTD ROC AUC: as is / shuffled |', '|---|---|---:|---:|---:|---:|---:|---|']
  lines += [f'| {r["sweep"]} | {r["cell"]} | {r["seed"]} | {r["step"]} | {r["as_is"]["mlm_loss"]:.3f} '
            f'| {r["shuffled"]["mlm_loss"]:.3f} | {gap(r, "mlm_loss"):+.3f} | {auc(r)} |' for r in rows]
  lines += ['', '| sweep | cell | seeds | MLM loss: shuffled - as is (mean ± std) |', '|---|---|---:|---|']
  cells = dict.fromkeys((r['sweep'], r['cell']) for r in rows)
  for sweep, cell in cells:
    gaps = [gap(r, 'mlm_loss') for r in rows if (r['sweep'], r['cell']) == (sweep, cell)]
    spread = f' ± {np.std(gaps, ddof=1):.3f}' if len(gaps) > 1 else ''
    lines.append(f'| {sweep} | {cell} | {len(gaps)} | {np.mean(gaps):+.3f}{spread} |')
  (HERE / 'word_order.md').write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:])
