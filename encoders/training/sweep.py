"""Sweeps shared by the ablations: cells (config overrides) x seeds -> one CSV, table and plot.

  cells = [sweep.Cell('rate=0.15', {'data.mask_rate': 0.15}, paper={'MNLI': 84.2}), ...]
  sweep.run(cells, seeds=(0, 1), out_dir=OUT, run_fn=lambda cell, seed: {...metrics...})
  markdown = sweep.report(cells, seeds, OUT, metrics=('test_accuracy',), title=..., paper=...)

Each (cell, seed) writes `<out>/results/<cell>__seed<seed>.json` when it finishes, so a rerun
skips finished runs (resumable). Runs execute one after another in this process
(mode='inprocess'), each in its own subprocess (mode='subprocess', `command_fn` gives the
command, which must write that result file), or are only printed as commands for a job
launcher (mode='print'). `report` writes results.csv (one row per run), results.md
(mean ± sample std over seeds per cell, the paper's numbers beside ours) and results.png.
`out_dir` may be a URL (gs://bucket/sweep).
"""
import csv
import dataclasses
import io
import json
import logging
import os
import re
import shlex
import subprocess
import time
from typing import Callable

from absl import flags
import matplotlib
import ml_collections
import numpy as np
from etils import epath

from encoders import paths

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str  # Shown in tables; also names the result files.
  overrides: dict  # {'section.field': value} applied to the base config.
  paper: dict = dataclasses.field(default_factory=dict)  # {column: the paper's reported value}.
  # {column: value} known before any run (e.g. the parameter count), shown after the name.
  info: dict = dataclasses.field(default_factory=dict)


def define_job_flags() -> None:
  """--mode, --cell and --seed: how a sweep script runs its (cell, seed) jobs (`run`, `select`)."""
  flags.DEFINE_enum('mode', 'inprocess', ('inprocess', 'subprocess', 'print'),
                    'Run cells here, one subprocess each, or print one command per run.')
  flags.DEFINE_string('cell', None, 'Run only this cell (a job of a launched sweep).')
  flags.DEFINE_integer('seed', None, 'With --cell: run only this seed.')


def select(cells: list[Cell], seeds: list[int], cell_name: str | None,
           seed: int | None) -> tuple[list[Cell], list[int]]:
  """The (cells, seeds) a `--cell` / `--seed` job runs: all of them without `cell_name`."""
  if cell_name is None:
    return cells, seeds
  chosen = [c for c in cells if c.name == cell_name]
  if not chosen:
    raise ValueError(f'--cell={cell_name!r}: known cells are {[c.name for c in cells]}.')
  return chosen, seeds if seed is None else [seed]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with {'a.b.c': value} set; an unknown field raises (no silent typo)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    *sections, field = key.split('.')
    node = config
    for section in sections:
      if section not in node:
        raise KeyError(f'Override {key!r}: the config has no section {section!r}.')
      node = node[section]
    if field not in node:
      raise KeyError(f'Override {key!r}: the config has no field {field!r}.')
    node[field] = value
  return config


def _file_name(cell_name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.=+-]+', '_', cell_name)


def run_name(cell: Cell, seed: int) -> str:
  """'<cell as a file name>__seed<seed>': names a run's result file and work directory."""
  return f'{_file_name(cell.name)}__seed{seed}'


def result_path(out_dir: str, cell: Cell, seed: int) -> str:
  return os.path.join(out_dir, 'results', f'{run_name(cell, seed)}.json')


def write_result(out_dir: str, cell: Cell, seed: int, metrics: dict, wall_seconds: float) -> str:
  """Writes one run's result file atomically (a killed run leaves no partial result)."""
  path = result_path(out_dir, cell, seed)
  record = dict(cell=cell.name, seed=seed, overrides=cell.overrides, metrics=metrics,
                wall_seconds=wall_seconds)
  paths.write_atomic(path, json.dumps(record, indent=2, default=str))
  return path


def run(cells: list[Cell], seeds, out_dir: str, run_fn: Callable[[Cell, int], dict] | None = None,
        mode: str = 'inprocess', command_fn: Callable[[Cell, int], list[str]] | None = None
        ) -> list[str]:
  """Runs every unfinished (cell, seed); returns the printed commands (mode='print').

  mode='print' prints every (cell, seed)'s command without reading `out_dir` (a bucket
  need not be reachable from where jobs are planned); each job skips itself when run if its
  result exists.
  """
  if mode not in ('inprocess', 'subprocess', 'print'):
    raise ValueError(f"mode={mode!r}: choose 'inprocess', 'subprocess' or 'print'.")
  if mode != 'inprocess' and command_fn is None:
    raise ValueError(f'mode={mode!r} needs command_fn(cell, seed) -> command.')
  names = [cell.name for cell in cells]
  if len(set(map(_file_name, names))) != len(names):
    raise ValueError(f'Cell names must be distinct (as file names): {names}.')
  printed = []
  for cell in cells:
    for seed in seeds:
      if mode == 'print':
        printed.append(shlex.join(command_fn(cell, seed)))
        print(printed[-1])
        continue
      path = result_path(out_dir, cell, seed)
      if epath.Path(path).exists():
        logging.info('sweep: %s seed %d already done (%s), skipped.', cell.name, seed, path)
        continue
      logging.info('sweep: running %s seed %d.', cell.name, seed)
      started = time.perf_counter()
      if mode == 'inprocess':
        write_result(out_dir, cell, seed, run_fn(cell, seed), time.perf_counter() - started)
      else:
        subprocess.run(command_fn(cell, seed), check=True)
        if not epath.Path(path).exists():
          raise RuntimeError(f'{shlex.join(command_fn(cell, seed))} finished without writing {path}.')
  return printed


def collect(cells: list[Cell], seeds, out_dir: str) -> list[dict]:
  """The finished runs' records, in cell then seed order."""
  records = []
  for cell in cells:
    for seed in seeds:
      path = result_path(out_dir, cell, seed)
      if epath.Path(path).exists():
        records.append(paths.read_json(path))
  return records


def summarize(records: list[dict], metrics) -> dict[str, dict[str, tuple[float, float, int]]]:
  """{cell: {metric: (mean, sample std (ddof=1; 0 for one seed), number of seeds)}}."""
  values = {}
  for record in records:
    for metric in metrics:
      if metric in record['metrics']:
        values.setdefault(record['cell'], {}).setdefault(metric, []).append(
            float(record['metrics'][metric]))
  return {cell: {m: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                 for m, v in per_metric.items()}
          for cell, per_metric in values.items()}


def write_csv(records: list[dict], path: str) -> None:
  metric_names = sorted({m for r in records for m in r['metrics']})
  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(['cell', 'seed', *metric_names, 'wall_seconds', 'overrides'])
  for r in records:
    writer.writerow([r['cell'], r['seed'], *(r['metrics'].get(m, '') for m in metric_names),
                     f'{r["wall_seconds"]:.1f}', json.dumps(r['overrides'], default=str)])
  epath.Path(path).write_text(text.getvalue())


def markdown_table(cells: list[Cell], summary: dict, metrics, title: str, paper: str) -> str:
  """Ours (mean ± std over seeds) beside the paper's numbers for each cell."""
  info_columns = list(dict.fromkeys(k for cell in cells for k in cell.info))
  paper_columns = list(dict.fromkeys(k for cell in cells for k in cell.paper))
  header = ['cell', *info_columns, *metrics, 'seeds', *(f'paper: {c}' for c in paper_columns)]
  lines = [f'### {title}', '', f'Paper numbers: {paper}.', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for cell in cells:
    stats = summary.get(cell.name, {})
    ours = [f'{stats[m][0]:.4f} ± {stats[m][1]:.4f}' if m in stats else '—' for m in metrics]
    seeds = max((s[2] for s in stats.values()), default=0)
    info = [str(cell.info.get(c, '—')) for c in info_columns]
    reported = [str(cell.paper.get(c, '—')) for c in paper_columns]
    lines.append('| ' + ' | '.join([cell.name, *info, *ours, str(seeds), *reported]) + ' |')
  return '\n'.join(lines) + '\n'


def plot(cells: list[Cell], summary: dict, metrics, path: str, title: str) -> None:
  """One panel per metric: the mean per cell with sample-std error bars."""
  figure, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(cells) * len(metrics) / 2, 4),
                              squeeze=False)
  x = np.arange(len(cells))
  for ax, metric in zip(axes[0], metrics):
    means = [summary.get(c.name, {}).get(metric, (np.nan, 0, 0))[0] for c in cells]
    stds = [summary.get(c.name, {}).get(metric, (np.nan, 0, 0))[1] for c in cells]
    ax.bar(x, means, yerr=stds, capsize=3, color='tab:blue', alpha=0.8)
    ax.set_xticks(x, [c.name for c in cells], rotation=45, ha='right', fontsize=8)
    ax.set_title(metric)
    finite = [m for m in means if np.isfinite(m)]
    if finite:
      low, high = min(finite), max(finite)
      pad = 0.1 * (high - low) + 1e-6 + max(stds)
      ax.set_ylim(low - pad, high + pad)
  figure.suptitle(title)
  figure.tight_layout()
  paths.save_figure(figure, path, dpi=100)
  plt.close(figure)


def report(cells: list[Cell], seeds, out_dir: str, metrics, title: str, paper: str) -> str:
  """Writes results.csv, results.md and results.png in out_dir; returns the markdown."""
  records = collect(cells, seeds, out_dir)
  summary = summarize(records, metrics)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  write_csv(records, os.path.join(out_dir, 'results.csv'))
  markdown = markdown_table(cells, summary, metrics, title, paper)
  epath.Path(out_dir, 'results.md').write_text(markdown)
  plot(cells, summary, metrics, os.path.join(out_dir, 'results.png'), title)
  return markdown
