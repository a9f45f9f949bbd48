"""Does pretraining help? Topic-task fine-tuning from our workdir, random init and an HF checkpoint.

  python -m experiments.compare_inits --pretrained workdirs/bert_tiny --out workdirs/compare_inits
  python -m experiments.compare_inits --pretrained DIR --out OUT --train_sizes=250,1000,0 --seeds=3

For each training-set size (`--train_sizes`, records of the topic task's train split; 0: all
of them) it fine-tunes three starting points with the same recipe and seeds (the ablations'
topic recipe, with more epochs for small training sets; dev selects the checkpoint):
  pretrained   the latest checkpoint of `--pretrained` (ours: BERT, RoBERTa or ELECTRA);
  random init  the same architecture and tokenizer, every weight freshly initialised;
  HF           `--hf` (default: the installed all-MiniLM-L6-v2, a real BERT checkpoint), at
               `--hf_learning_rate` (a 6-layer model pretrained for long needs a gentler rate).
Runs go through encoders/training/sweep.py (resumable; --mode=print for a job launcher) and write
results.csv, results.md and results.png into --out, plus accuracy_vs_size.png.
"""
import os
import sys

from absl import app, flags
import matplotlib

from encoders import hf_interop, paths
from encoders.adaptation import finetune, finetune_ablation
from encoders.training import sweep

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

METRICS = ('test_accuracy', 'test_macro_f1', 'dev_accuracy')


def define_flags() -> None:
  """The command line (defined when run, so that importing this module defines no flags)."""
  flags.DEFINE_string('pretrained', None, 'Our pretraining workdir (its latest checkpoint).')
  flags.DEFINE_string('hf', None, 'HF checkpoint directory; default: the installed MiniLM.')
  flags.DEFINE_float('hf_learning_rate', 1e-4, 'Peak fine-tuning learning rate of the HF model.')
  flags.DEFINE_list('train_sizes', ['500', '0'], 'Training records per cell; 0: all.')
  flags.DEFINE_integer('min_rows', 5000, 'Training rows (epochs x records) a run sees at least.')
  flags.DEFINE_string('out', None, 'Output directory (results, tables, plots, runs).')
  flags.DEFINE_integer('seeds', 2, 'Seeds per cell (0, 1, ...).')
  sweep.define_job_flags()
  flags.adopt_module_key_flags(sweep)  # --help lists them.
  flags.DEFINE_multi_string('set', [], 'Fine-tuning override of every cell, e.g. train.num_epochs=4.')
  flags.mark_flags_as_required(['pretrained', 'out'])


def size_name(size: int) -> str:
  return 'all' if size == 0 else str(size)


def make_cells(pretrained: str, hf: str | None, sizes: list[int], hf_learning_rate: float,
               num_epochs: float, min_rows: int):
  """Three sources per size; a small training set gets more epochs (min_rows rows seen at least)."""
  cells = []
  for size in sizes:
    epochs = num_epochs if size == 0 else max(num_epochs, min_rows / size)
    common = {'data.max_train_examples': size, 'train.num_epochs': epochs}
    cells.append(sweep.Cell(f'pretrained n={size_name(size)}', {**common, 'init_from': pretrained}))
    cells.append(sweep.Cell(f'random init n={size_name(size)}',
                            {**common, 'init_from': pretrained, 'reinit': True}))
    if hf:
      cells.append(sweep.Cell(f'HF n={size_name(size)}', {
          **common, 'init_from': hf, 'optimizer.learning_rate': hf_learning_rate}))
  return cells


def hf_label(path: str) -> str:
  """The checkpoint's name for the plot: its directory, or the package above `model/`."""
  parts = os.path.normpath(path).split(os.sep)
  return parts[-2] if parts[-1] == 'model' and len(parts) > 1 else parts[-1]


def plot_by_size(summary: dict, sizes: list[int], path: str, hf_name: str) -> None:
  """Test accuracy (mean ± std over seeds) against the number of training records."""
  figure, ax = plt.subplots(figsize=(6, 4))
  x = range(len(sizes))
  for source, label in (('pretrained', 'ours, pretrained'), ('random init', 'ours, random init'),
                        ('HF', hf_name)):
    stats = [summary.get(f'{source} n={size_name(s)}', {}).get('test_accuracy') for s in sizes]
    if any(stats):
      ax.errorbar([i for i, s in zip(x, stats) if s], [s[0] for s in stats if s],
                  yerr=[s[1] for s in stats if s], marker='o', capsize=3, label=label)
  ax.set_xticks(list(x), [size_name(s) for s in sizes])
  ax.set_xlabel('topic-task training records')
  ax.set_ylabel('test accuracy (12 topics)')
  ax.legend()
  ax.grid(alpha=0.3)
  figure.tight_layout()
  paths.save_figure(figure, path, dpi=120)
  plt.close(figure)


def main(argv):
  del argv
  f = flags.FLAGS
  out = paths.absolute(f.out)
  pretrained = paths.absolute(f.pretrained)
  hf = paths.absolute(f.hf) if f.hf else hf_interop.installed_minilm_dir()
  sizes = [int(s) for s in f.train_sizes]
  base = finetune_ablation.finetune_config('tiny')
  base.data.max_examples = 0  # All dev and test records; cells cap the training records.
  base = sweep.apply_overrides(base, finetune_ablation.parse_overrides(f.set))
  cells = make_cells(pretrained, hf, sizes, f.hf_learning_rate, base.train.num_epochs, f.min_rows)
  seeds = list(range(f.seeds))
  selected, seeds = sweep.select(cells, seeds, f.cell, f.seed)

  def run_fn(cell: sweep.Cell, seed: int) -> dict:
    config = sweep.apply_overrides(base, cell.overrides)
    config.seed = seed
    result = finetune.finetune(config, os.path.join(out, 'runs', sweep.run_name(cell, seed)))
    return dict(test_accuracy=result['test']['accuracy'], test_macro_f1=result['test']['macro_f1'],
                dev_accuracy=result['dev']['accuracy'], train_rows=result['train_rows'])

  def command_fn(cell: sweep.Cell, seed: int) -> list[str]:
    return [sys.executable, '-m', 'experiments.compare_inits', f'--pretrained={pretrained}',
            f'--out={out}', f'--train_sizes={",".join(f.train_sizes)}', f'--min_rows={f.min_rows}',
            f'--cell={cell.name}', f'--seed={seed}', '--mode=inprocess', *(f'--set={s}' for s in f.set),
            *([f'--hf={hf}', f'--hf_learning_rate={f.hf_learning_rate}'] if hf else [])]

  sweep.run(selected, seeds, out, run_fn, mode=f.mode, command_fn=command_fn)
  if f.mode == 'print':
    return
  title = 'Topic-task fine-tuning by initialisation'
  markdown = sweep.report(cells, list(range(f.seeds)), out, METRICS, title,
                          'none (our own comparison; the recipe is '
                          "encoders/adaptation/finetune_ablation.py 'tiny', "
                          f'HF at lr {f.hf_learning_rate:g})')
  summary = sweep.summarize(sweep.collect(cells, list(range(f.seeds)), out), METRICS)
  plot_by_size(summary, sizes, os.path.join(out, 'accuracy_vs_size.png'),
               hf_label(hf) if hf else 'HF')
  print(markdown)


if __name__ == '__main__':
  define_flags()
  app.run(main)
