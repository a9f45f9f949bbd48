"""One ablation run and the command line shared by experiments/ablate_*.py.

A run pretrains a variant of the base config with `training.trainer.train_and_evaluate`,
optionally validates its MLM loss at a fixed masking rate (config.eval_data; Wettig et al.
evaluate every masking rate at 15%), scores the frozen encoder with the offline suite's linear
probes (encoders/adaptation/suite.py: `probe_topic` and `probe_macro` in the table, each
task's `probe_<task>` in results.csv; not at the quick scale), and fine-tunes it on the
Wikipedia topic task (encoders/adaptation/finetune.py). An ablation script is a base config
plus a list of cells (encoders/training/sweep.py), at one of four scales:

  smoke  minutes: a 1-layer width-32 model, a few steps, the first two cells, one seed.
  quick  BERT tiny (2 x 128) on the embedded corpus, 100 steps of 32 x 128 tokens, fine-tuned on
         2000 topic records: ~2 minutes per run on a quiet 2-core CPU. Too early for pretraining
         to show downstream (its topic fine-tuning is below random init's; the suite's probes
         still score 500-step encoders below random init).
  tiny   the same at TINY_STEPS steps (the main command's run): the fewest steps measured at
         which the pretrained encoder beats random init on the suite's probes by far more
         than the seeds' spread (docs/tiny_signal/). About 35 minutes per run on a quiet
         2-core CPU.
  paper  the paper's model size, batch and steps (for TPU VMs; set data.dataset to a real corpus).

All runs of a sweep share one tokenizer (trained once into <out>/tokenizer), so the tokenized
corpus cache is shared too.
"""
import dataclasses
import os
import sys
import tempfile
from typing import Callable

from absl import app, flags
from etils import epath
import ml_collections
import numpy as np

from encoders import paths
from encoders.adaptation import finetune, suite
from encoders.configs import bert
from encoders.configs import finetune as finetune_configs
from encoders.data import pipeline
from encoders.data import suite as suite_data
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import checkpointing, metrics, sweep, trainer
from encoders.training import findings as findings_lib

SCALES = ('smoke', 'quick', 'tiny', 'paper')
# Steps of the tiny scale (32 x 128 tokens each; warm-up and decay as configs/bert.py:tiny, whose
# 4,000 steps these are). The suite's probe macro average (docs/tiny_signal/, 3 head seeds):
# random init 26.7 ± 0.2; pretrained 24.6 ± 0.4 at 500 steps, 26.7 ± 0.1 at 1,000, 27.1 ± 0.1
# at 2,000 and 32.9 ± 0.1 at 4,000, the first clearly above it.
TINY_STEPS = 4000
PAIR_FORMATS = trainer.PAIR_FORMATS

# The suite's probe per scale: (training articles, dev and test articles each; 0: all), or None:
# no probe (quick: too early, see the scales above; not probed). Tiny and paper probe as
# experiments/evaluate.py's defaults do, so their scores compare with docs/evaluate.
PROBE_ARTICLES = {'smoke': (60, 40), 'quick': None, 'tiny': (2000, 0), 'paper': (2000, 0)}

SMOKE_MODEL = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                   max_position_embeddings=64)


@dataclasses.dataclass(frozen=True)
class Ablation:
  name: str
  title: str  # Table title.
  paper: str  # The paper and table the reported numbers come from.
  metrics: tuple[str, ...]  # Columns of the table, keys of a run's metrics.
  cells: Callable[[str, ml_collections.ConfigDict], list[sweep.Cell]]  # (scale, base) -> cells.
  paper_config: Callable[[ml_collections.ConfigDict], None] = lambda config: None  # Paper scale.
  eval_mask_rate: float | None = None  # Validate MLM loss at this masking rate (config.eval_data).
  base_config: Callable[[str], ml_collections.ConfigDict] | None = None  # scale -> base; None: pretrain_config.
  module: str | None = None  # The script, for --mode=subprocess/print; None: experiments.ablate_<name>.
  # (scale, base, out, seeds) -> path of a plot of its own, drawn after the report; None: none.
  extra_plot: Callable[[str, ml_collections.ConfigDict, str, list[int]], str] | None = None
  smoke_cells: int = 2  # Cells a smoke run runs (the first ones; more when cells differ in kind).
  # The papers' findings this sweep tests, each judged by `findings.verdict` under the report.
  findings: tuple[findings_lib.Finding, ...] = ()


def pretrain_config(scale: str) -> ml_collections.ConfigDict:
  """The base pretraining config of a scale (BERT recipe; cells change what they ablate)."""
  if scale not in SCALES:
    raise ValueError(f'--scale={scale!r}: choose one of {SCALES}.')
  config = bert.get_config('base' if scale == 'paper' else 'tiny')
  train, ckpt = config.train, config.checkpoint
  train.progress_bar = False
  if scale == 'smoke':
    config.model.update(SMOKE_MODEL)
    config.data.seq_length = 32
    train.update(batch_size=8, num_steps=4, log_every=2, eval_every=1000, eval_steps=1)
    config.optimizer.warmup_steps = 1
    ckpt.every_steps = 1000
  elif scale == 'quick':
    train.update(batch_size=32, num_steps=100, log_every=20, eval_every=100, eval_steps=8)
    config.optimizer.warmup_steps = 10
    ckpt.every_steps = 100
  elif scale == 'tiny':  # configs/bert.py:tiny (the main command) at TINY_STEPS steps.
    train.update(num_steps=TINY_STEPS, log_every=50, eval_every=TINY_STEPS // 4, eval_steps=8)
    ckpt.every_steps = TINY_STEPS // 4
  ckpt.async_save = False
  return config


def on_schedule(config: ml_collections.ConfigDict, scale: str) -> ml_collections.ConfigDict:
  """A family's pretraining `config` on the ablations' schedule of `scale` (steps, checkpoints,
  warm-up, sequence length), so that its cells compare with BERT's at equal tokens."""
  schedule = pretrain_config(scale)
  config.train, config.checkpoint = schedule.train, schedule.checkpoint
  config.optimizer.warmup_steps = schedule.optimizer.warmup_steps
  config.data.seq_length = schedule.data.seq_length
  return config


def finetune_config(scale: str) -> ml_collections.ConfigDict:
  """Topic-task fine-tuning of each pretrained variant."""
  config = finetune_configs.get_config('topic')
  data, train = config.data, config.train
  if scale == 'smoke':
    data.update(max_length=32, max_windows=1, max_examples=48)
    train.update(batch_size=8, num_epochs=1.0, eval_batch_size=16, log_every=2)
    config.optimizer.learning_rate = 1e-3
  elif scale in ('quick', 'tiny'):  # The recipe that lifted BERT-tiny off chance level (lr 2e-4, 1 epoch did not).
    data.update(max_length=64, max_windows=1, max_examples=2000)
    train.update(batch_size=32, num_epochs=2.0)
    config.head.pooling = 'mean'
    config.optimizer.learning_rate = 1e-3
  return config


def shared_tokenizer(config: ml_collections.ConfigDict, out_dir: str) -> str:
  """Trains (once) or reuses <out>/tokenizer; returns its path for config.data.tokenizer_path."""
  if config.data.get('tokenizer_path'):
    return config.data.tokenizer_path
  tokenizer_lib.get_tokenizer(config.data, out_dir)
  return os.path.join(out_dir, 'tokenizer')


def mean_tokens_per_row(config: ml_collections.ConfigDict, num_batches: int = 4) -> float:
  """Average real (non-padding) tokens per row of the training batches of `config`."""
  tokenizer = tokenizer_lib.get_tokenizer(config.data, None)
  batches = pipeline.make_pretraining_iterator(config, tokenizer, config.data.train_split)
  counts = [np.sum(batch['segment_ids'] > 0, axis=1) for _, batch in zip(range(num_batches), batches)]
  return float(np.mean(np.concatenate(counts)))


def last_metrics(workdir: str, prefix: str) -> dict[str, float]:
  """The last `prefix/...` record of <workdir>/metrics.jsonl, without the prefix."""
  records = [r for r in metrics.read_jsonl(workdir) if any(k.startswith(prefix + '/') for k in r)]
  return {k.removeprefix(prefix + '/'): v for k, v in records[-1].items() if k != 'step'}


def probe(pretrain_dir: str, articles: tuple[int, int]) -> dict[str, float]:
  """{'probe_<task>': score, 'probe_macro': their mean} in percent: the suite's linear probes
  (head seed 0) on the frozen encoder of `pretrain_dir`, over suite_data.article_splits(*articles)."""
  splits = suite_data.article_splits(*articles)
  summary = suite.run(pretrain_dir, 'probe', 1, list(suite_data.TASKS), splits)['summary']
  return {f'probe_{name}': stats['mean'] for name, stats in summary.items()}


def pretrain_and_finetune(pretrain: ml_collections.ConfigDict, tune: ml_collections.ConfigDict,
                          workdir: str, seed: int, eval_mask_rate: float | None,
                          probe_articles: tuple[int, int] | None = None) -> dict:
  """Pretrains `pretrain` in <workdir>/pretrain, probes it with the suite (given
  `probe_articles`, see `probe`), fine-tunes on the topic task; returns metrics.

  With `eval_mask_rate`, validation masks at that rate with 80/10/10 (config.eval_data) and
  `train_mlm_loss` is the last logged training MLM loss at the run's own rate.
  """
  pretrain = ml_collections.ConfigDict(pretrain.to_dict())
  pretrain.seed = seed
  pretrain.data.shuffle_seed = seed
  if eval_mask_rate is not None:
    pretrain.eval_data.update(mask_rate=eval_mask_rate, mask_token_prob=0.8, random_token_prob=0.1,
                              static_masking=False)
  pretrain_dir = os.path.join(workdir, 'pretrain')
  # Empty when resumed after the last step: the last validation is in metrics.jsonl.
  validation = trainer.train_and_evaluate(pretrain, pretrain_dir) or last_metrics(pretrain_dir, 'eval')
  manager = checkpointing.make_manager(pretrain_dir, read_only=True)
  done = manager.latest_step()
  manager.close()
  if done != pretrain.train.num_steps:  # Preempted (SIGTERM): no result for a partial run.
    raise SystemExit(f'Pretraining in {pretrain_dir} stopped at step {done} of '
                     f'{pretrain.train.num_steps}; rerun the same command to resume.')
  result = {'mlm_loss': validation['mlm_loss'], 'mlm_perplexity': float(np.exp(validation['mlm_loss'])),
            'mlm_accuracy': validation['mlm_accuracy']}
  if 'sentence_accuracy' in validation:
    result['nsp_accuracy'] = validation['sentence_accuracy']
  for name in ('rtd_recall', 'rtd_precision'):  # An RTD pair's discriminator (ELECTRA, DeBERTa-v3).
    if name in validation:
      result[name] = validation[name]
  if eval_mask_rate is not None:
    tag = f'{round(100 * eval_mask_rate)}'
    result.update({f'mlm_loss_at_{tag}': validation['mlm_loss'],
                   f'mlm_accuracy_at_{tag}': validation['mlm_accuracy'],
                   'train_mlm_loss': last_metrics(pretrain_dir, 'train')['mlm_loss']})
  if probe_articles is not None:
    result.update(probe(pretrain_dir, probe_articles))
  tune = ml_collections.ConfigDict(tune.to_dict())
  tune.seed = seed
  tune.init_from = pretrain_dir
  tuned = finetune.finetune(tune, os.path.join(workdir, 'finetune'))
  result.update(test_accuracy=tuned['test']['accuracy'], test_macro_f1=tuned['test']['macro_f1'],
                dev_accuracy=tuned['dev']['accuracy'])
  return result


# --------------------------------------------------------------------------- command line
def define_flags() -> None:
  flags.DEFINE_enum('scale', 'tiny', SCALES, 'Model / data / steps scale.')
  flags.DEFINE_bool('smoke', False, 'Same as --scale=smoke: a minutes-scale check.')
  flags.DEFINE_string('out', None, 'Output directory (results, tables, plots, runs).')
  flags.DEFINE_integer('seeds', 3, 'Seeds per cell (0, 1, ...); the stored quick-scale tables '
                       'ran 2.')
  sweep.define_job_flags()
  flags.adopt_module_key_flags(sweep)  # --help lists them.
  flags.DEFINE_multi_string('set', [], 'Base pretraining override, e.g. train.num_steps=1000.')
  flags.DEFINE_multi_string('finetune_set', [], 'Fine-tuning override, e.g. train.num_epochs=2.')
  flags.mark_flag_as_required('out')


def parse_overrides(items: list[str]) -> dict:
  result = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'Override {item!r} needs the form section.field=value.')
    try:
      result[key] = eval(value, {}, {})  # Literals only: numbers, booleans, strings in quotes.
    except (NameError, SyntaxError):
      result[key] = value
  return result


def main(ablation: Ablation) -> str:
  """Runs the ablation's sweep per the flags and writes its report; returns the markdown."""
  f = flags.FLAGS
  scale = 'smoke' if f.smoke else f.scale
  out = paths.absolute(f.out)  # A gs:// bucket stays a URL.
  base = (ablation.base_config or pretrain_config)(scale)
  if scale == 'paper':
    ablation.paper_config(base)
  base = sweep.apply_overrides(base, parse_overrides(f.set))
  tune = sweep.apply_overrides(finetune_config(scale), parse_overrides(f.finetune_set))
  if f.mode == 'print':  # Printing writes nothing to --out: cells measure data in a scratch dir.
    with tempfile.TemporaryDirectory() as scratch:
      measured = sweep.apply_overrides(base, {'data.cache_dir': scratch})
      measured.data.tokenizer_path = shared_tokenizer(measured, scratch)
      all_cells = ablation.cells(scale, measured)
    if not base.data.get('tokenizer_path'):
      print(f'# The jobs train {out}/tokenizer on first use; to run them in parallel, train it '
            f'once first: python -m experiments.train_tokenizer ... --workdir {out}', file=sys.stderr)
  else:
    base.data.tokenizer_path = shared_tokenizer(base, out)  # Before cells: some measure the data.
    all_cells = ablation.cells(scale, base)
  cells = all_cells
  seeds = list(range(f.seeds))
  if scale == 'smoke':
    cells, seeds = cells[:ablation.smoke_cells], [0]
  cells, seeds = sweep.select(cells, seeds, f.cell, f.seed)

  def run_fn(cell: sweep.Cell, seed: int) -> dict:
    config = sweep.apply_overrides(base, cell.overrides)
    workdir = os.path.join(out, 'runs', sweep.run_name(cell, seed))
    return pretrain_and_finetune(config, tune, workdir, seed, ablation.eval_mask_rate,
                                 PROBE_ARTICLES[scale])

  def command_fn(cell: sweep.Cell, seed: int) -> list[str]:
    script = ablation.module or f'experiments.ablate_{ablation.name}'
    extra = [f'--set={s}' for s in f.set] + [f'--finetune_set={s}' for s in f.finetune_set]
    return [sys.executable, '-m', script, f'--scale={scale}', f'--out={out}',
            f'--cell={cell.name}', f'--seed={seed}', '--mode=inprocess', *extra]

  sweep.run(cells, seeds, out, run_fn, mode=f.mode, command_fn=command_fn)
  if f.mode == 'print':
    return ''
  all_cells = cells if scale == 'smoke' else all_cells
  report_seeds = seeds if scale == 'smoke' else list(range(f.seeds))
  # The topic probe: what the findings' downstream verdicts read (segment-pair encoders lift it
  # above random init where their macro average stays below it).
  probed = ('probe_topic', 'probe_macro') if PROBE_ARTICLES[scale] else ()
  markdown = sweep.report(all_cells, report_seeds, out, (*ablation.metrics, *probed),
                          f'{ablation.title} (scale={scale})', ablation.paper)
  if ablation.findings:
    records = sweep.collect(all_cells, report_seeds, out)
    markdown += '\n' + findings_lib.rule() + '\n' + findings_lib.markdown(
        [findings_lib.verdict(f, records) for f in ablation.findings])
    epath.Path(out, 'results.md').write_text(markdown)
  print(markdown)
  if ablation.extra_plot:
    print('Wrote', ablation.extra_plot(scale, base, out, report_seeds))
  return markdown


def run_script(ablation: Ablation) -> None:
  """An ablation script's entry point: defines the flags, runs the sweep, exits 0."""
  define_flags()

  def run_main(argv):
    del argv  # main() prints the report; app.run would sys.exit with a returned string.
    main(ablation)

  app.run(run_main)
