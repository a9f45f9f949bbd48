"""DistilBERT's question at tiny scale: how much of its teacher does a distilled student keep,
and at what speed? (Sanh et al. 2019, Tables 1, 3 and 4.)

  python -m experiments.distill_vs_teacher --out /tmp/distill_vs_teacher          # tiny, 3 seeds
  python -m experiments.distill_vs_teacher --out /tmp/distill_smoke --smoke       # minutes

The teacher is configs/distilbert.py:distil_minilm's (all-MiniLM-L6-v2, installed from PyPI: 6 x 384);
the student has half its layers at its width, starts from teacher layers [0, 3, 5] and reads
its vocabulary. Every row is fine-tuned on the topic task with one recipe
(encoders/adaptation/finetune_ablation.py 'tiny' on 1000 records: mean pooling, L=64, 2 epochs) at
lr 1e-4, the README's MiniLM rate, with each seed; a pretrained row pretrains once (seed 0), so the
spread is fine-tuning's. Rows:

  teacher                        the teacher itself, fine-tuned
  distilled                      the recipe's loss (alpha_ce x KL when the teacher has an MLM
                                 head) + alpha_mlm x MLM + alpha_cos x cosine
  - L_ce / - L_cos / - L_mlm     one term off (Table 4; L_ce only with a teacher MLM head)
  MLM only, teacher init         the teacher's layers, then MLM without the teacher's outputs
                                 (without teacher logits this is also '- L_cos')
  MLM only, random init          the same student trained without the teacher, equal steps
  no pretraining                 the student's architecture, random init, fine-tuned

Each row shows encoder parameters (transformers' count: embeddings + layers, no heads) and the
inference throughput of our jitted forward (sequences/s, length 128, batch 32 and 1, float32
on this machine's CPU), measured once per architecture before the sweep.
"""
import dataclasses
import functools
import os
import sys
import time

from absl import app, flags
import flax.linen as nn
import matplotlib
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from encoders import families, paths
from encoders.adaptation import finetune, finetune_ablation
from encoders.configs import distilbert as distilbert_configs
from encoders.training import distillation, sweep, trainer

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('teacher', None, 'Teacher workdir or HF directory (default: the config\'s).')
flags.DEFINE_bool('report_only', False, 'Write the table and plots from the finished runs; run nothing.')

# Sanh et al. 2019 (arXiv 1910.01108v4): Table 1 (GLUE macro-score, dev), Table 3 (parameters,
# CPU inference seconds for a full pass of STS-B at batch 1), Table 4 (ablation, GLUE macro-score
# change from the full distillation).
PAPER = {
    'teacher': {'GLUE': '79.5 (BERT-base)', 'params': '110M', 'CPU s': 668},
    'distilled': {'GLUE': '77.0 (97%)', 'params': '66M', 'CPU s': 410},
    '- L_cos': {'GLUE': '-1.38'},
    '- L_mlm': {'GLUE': '-0.41'},
    '- L_ce': {'GLUE': '-2.96'},
    'MLM only, random init': {'GLUE': '-3.69 (random init, triple loss)'},
}
METRICS = ('test_accuracy', 'test_macro_f1', 'mlm_loss', 'cos_loss')
NOT_PRETRAINED = ('teacher', 'no pretraining')
FINETUNE_LR = 1e-4  # README's topic_minilm rate; kept for every row.


def base_config(scale: str, teacher: str | None) -> ml_collections.ConfigDict:
  """configs/distilbert.py:distil_minilm on a schedule this CPU affords: smoke is 1 layer and
  a few steps; tiny 150 steps of 16 x 64 tokens (~6 s a step at load ~6 on 2 cores), and quick
  the same run."""
  config = distilbert_configs.get_config('distil_minilm')
  # Quick's settings (logging, warm-up 10) under its own steps below, at tiny too.
  schedule = finetune_ablation.pretrain_config('smoke' if scale == 'smoke' else 'quick')
  config.train, config.checkpoint = schedule.train, schedule.checkpoint
  config.optimizer.warmup_steps = schedule.optimizer.warmup_steps
  config.train.progress_bar = False
  if teacher:
    config.distill.teacher = config.data.tokenizer_path = teacher
  if scale == 'smoke':
    config.model.num_layers = 1
    config.data.seq_length = 32
  else:
    config.data.seq_length = 64  # Fine-tuning reads 64 tokens; the summaries' median is ~70.
    config.train.update(batch_size=16, num_steps=150, eval_every=150, eval_steps=8)
    config.checkpoint.every_steps = 150
  return config


def finetune_config(scale: str) -> ml_collections.ConfigDict:
  """encoders/adaptation/finetune_ablation.py's recipe of `scale` (tiny: 1000 records) at
  FINETUNE_LR."""
  tune = finetune_ablation.finetune_config(scale)
  tune.optimizer.learning_rate = FINETUNE_LR
  if scale != 'smoke':
    tune.data.max_examples = 1000
  return tune


def cells(config: ml_collections.ConfigDict, teacher_has_head: bool) -> list[sweep.Cell]:
  """The rows (module docstring). Without teacher logits, '- L_cos' is 'MLM only, teacher init'
  (Adam does not see alpha_mlm's scale), so it is one row."""
  d = config.distill
  full = {'distill.alpha_ce': d.alpha_ce if teacher_has_head else 0.0,
          'distill.alpha_mlm': d.alpha_mlm, 'distill.alpha_cos': d.alpha_cos}
  mlm_only = {'distill.alpha_ce': 0.0, 'distill.alpha_mlm': 1.0, 'distill.alpha_cos': 0.0}
  rows = [sweep.Cell('teacher', {}), sweep.Cell('distilled', full)]
  if teacher_has_head:
    rows += [sweep.Cell('- L_ce', {**full, 'distill.alpha_ce': 0.0}),
             sweep.Cell('- L_cos', {**full, 'distill.alpha_cos': 0.0}),
             sweep.Cell('- L_mlm', {**full, 'distill.alpha_mlm': 0.0}),
             sweep.Cell('MLM only, teacher init', mlm_only)]
  else:
    rows += [sweep.Cell('- L_mlm', {**full, 'distill.alpha_mlm': 0.0}),
             sweep.Cell('MLM only, teacher init (= - L_cos)', mlm_only, PAPER['- L_cos'])]
  rows += [sweep.Cell('MLM only, random init', {**mlm_only, 'distill.init_from_teacher': False}),
           sweep.Cell('no pretraining', {})]
  return [c if c.paper else dataclasses.replace(c, paper=PAPER.get(c.name.split(' (')[0], {}))
          for c in rows]


def encoder_parameters(encoder: nn.Module) -> int:
  """Embeddings + layers, as transformers' *Model counts them without the pooler."""
  shapes = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


def throughput(encoder: nn.Module, batch_size: int, length: int = 128, repeats: int = 5) -> float:
  """Sequences/s of the jitted forward (random weights), best of `repeats` after one warm-up."""
  ids = jnp.ones((batch_size, length), jnp.int32)
  params = jax.jit(encoder.init)(jax.random.key(0), ids)
  forward = jax.jit(lambda p, x: encoder.apply(p, x)[0])
  forward(params, ids).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    forward(params, ids).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return batch_size / best


def architecture_info(encoder: nn.Module) -> dict:
  return {'params': f'{encoder_parameters(encoder) / 1e6:.1f}M',
          'seq/s b32': round(throughput(encoder, 32), 1),
          'seq/s b1': round(throughput(encoder, 1), 1)}


def run_cell(cell: sweep.Cell, seed: int, *, base, tune, out: str) -> dict:
  """One row, one fine-tuning seed. A pretrained row pretrains once (seed 0, shared by its
  fine-tuning seeds: the spread is fine-tuning's), in <out>/runs/<row>/pretrain."""
  tune = ml_collections.ConfigDict(tune.to_dict())
  tune.seed = seed
  result = {}
  if cell.name == 'teacher':
    tune.init_from = base.distill.teacher
  elif cell.name == 'no pretraining':
    tune.model = ml_collections.ConfigDict(base.model.to_dict())
    tune.data.tokenizer_path = base.data.tokenizer_path
  else:
    pretrain_dir = os.path.join(out, 'runs', sweep.run_name(cell, 0).removesuffix('__seed0'),
                                'pretrain')
    validation = (trainer.train_and_evaluate(sweep.apply_overrides(base, cell.overrides), pretrain_dir)
                  or finetune_ablation.last_metrics(pretrain_dir, 'eval'))
    result = {key: validation[key] for key in ('mlm_loss', 'cos_loss') if key in validation}
    tune.init_from = pretrain_dir
  tuned = finetune.finetune(tune, os.path.join(out, 'runs', sweep.run_name(cell, seed), 'finetune'))
  return dict(result, test_accuracy=tuned['test']['accuracy'],
              test_macro_f1=tuned['test']['macro_f1'], dev_accuracy=tuned['dev']['accuracy'])


def main(argv):
  del argv
  f = flags.FLAGS
  scale = 'smoke' if f.smoke else f.scale
  if scale == 'paper':
    raise app.UsageError('--scale=paper: run configs/distilbert.py:base with experiments.pretrain '
                         '(a BERT-base teacher) and fine-tune it; this script is the tiny study.')
  base = sweep.apply_overrides(base_config(scale, f.teacher),
                               finetune_ablation.parse_overrides(f.set))
  tune = sweep.apply_overrides(finetune_config(scale),
                               finetune_ablation.parse_overrides(f.finetune_set))
  teacher = distillation.load_teacher(base.distill.teacher, base.model)
  student = families.of_config(base)
  rows = cells(base, teacher.has_mlm_head)
  seeds = [0] if scale == 'smoke' else list(range(f.seeds))
  rows, seeds = sweep.select(rows, seeds, f.cell, f.seed)
  if f.mode != 'print' and f.cell is None:  # Measured for the report, not per job.
    teacher_info = architecture_info(families.get(teacher.family).models.Encoder(teacher.config))
    student_info = architecture_info(student.models.Encoder(student.model_config(base.model)))
    rows = [dataclasses.replace(c, info=teacher_info if c.name == 'teacher' else student_info)
            for c in rows]

  def command_fn(cell: sweep.Cell, seed: int) -> list[str]:
    extra = [f'--set={s}' for s in f.set] + [f'--finetune_set={s}' for s in f.finetune_set]
    extra += [f'--teacher={f.teacher}'] if f.teacher else []
    return [sys.executable, '-m', 'experiments.distill_vs_teacher', f'--scale={scale}',
            f'--out={f.out}', f'--cell={cell.name}', f'--seed={seed}', '--mode=inprocess', *extra]

  if not f.report_only:
    run_fn = functools.partial(run_cell, base=base, tune=tune, out=f.out)
    sweep.run(rows, seeds, f.out, run_fn, mode=f.mode, command_fn=command_fn)
  if f.mode == 'print' or f.cell is not None:
    return
  title = (f'Distillation of a {teacher.config.num_layers}-layer teacher into a '
           f'{base.model.num_layers}-layer student (scale={scale})')
  print(sweep.report(rows, seeds, f.out, METRICS, title, 'Sanh et al. 2019, Tables 1, 3 and 4'))
  print('Wrote', plot_speed_vs_accuracy(rows, seeds, f.out))


def plot_speed_vs_accuracy(rows: list[sweep.Cell], seeds, out: str) -> str:
  """Test accuracy (mean ± std over seeds) against batch-32 throughput, one point per row."""
  summary = sweep.summarize(sweep.collect(rows, seeds, out), ('test_accuracy',))
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for row in rows:
    if row.name in summary and 'test_accuracy' in summary[row.name]:
      mean, std, _ = summary[row.name]['test_accuracy']
      speed = row.info['seq/s b32']
      axes.errorbar(speed, mean, yerr=std, fmt='o', capsize=3)
      axes.annotate(row.name, (speed, mean), textcoords='offset points', xytext=(5, 4), fontsize=8)
  axes.set_xlabel('sequences/s, batch 32 x 128 tokens (jitted forward, this CPU)')
  axes.set_ylabel('topic test accuracy')
  axes.grid(alpha=0.3)
  path = os.path.join(out, 'accuracy_vs_speed.png')
  figure.tight_layout()
  paths.save_figure(figure, path, dpi=120)
  plt.close(figure)
  return path


if __name__ == '__main__':
  finetune_ablation.define_flags()
  app.run(main)
