"""The pretraining loop: `train_and_evaluate(config, workdir)`.

One jitted step of (state, batch) with explicit shardings and a donated state; the
step's dropout key is fold_in(rng, step). The loop never waits on the device: it
reads step s's metrics after dispatching step s + 1. It validates every
`eval_every` steps, checkpoints every `every_steps` (asynchronously) and resumes from
the latest complete checkpoint, data-iterator position included, so a resumed run
computes exactly the losses of an uninterrupted one.
"""
import dataclasses
import functools
import itertools
import logging
import signal
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from encoders import families
from encoders.config import ConfigError, EncoderConfig
from encoders.training import (checkpointing, flops, metrics, objectives, optimizer, sharding,
                               synthetic)
from encoders.training import state as state_lib

# Same as encoders/data/examples.py.
PAIR_FORMATS = ('segment_pair_nsp', 'sentence_pair_nsp', 'sop')


def batch_shapes(config, sentence_head: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{name: (global shape, dtype)} of the batch contract for `config`."""
  B, L = config.train.batch_size, config.data.seq_length
  P = synthetic.max_predictions(config.data)
  shapes = {name: ((B, L), np.int32)
            for name in ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids')}
  shapes.update(masked_positions=((B, P), np.int32), masked_ids=((B, P), np.int32),
                masked_weights=((B, P), np.float32))
  if sentence_head:
    shapes['nsp_labels'] = ((B,), np.int32)
  return shapes


def eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the set (non-None) fields of config.eval_data over config.data: what the
  validation iterator reads. Without eval_data, or with none set, `config` itself."""
  overrides = {k: v for k, v in (config.get('eval_data') or {}).items() if v is not None}
  unknown = sorted(set(overrides) - set(config.data.keys()))
  if unknown:
    raise ConfigError(f'config.eval_data.{unknown[0]}: not a field of config.data (config.eval_data '
                      'overrides config.data fields for validation, e.g. mask_rate).')
  if not overrides:
    return config
  result = ml_collections.ConfigDict(config.to_dict())
  result.data.update(overrides)
  if (result.data.input_format in PAIR_FORMATS) != (config.data.input_format in PAIR_FORMATS):
    raise ConfigError(f'config.eval_data.input_format={result.data.input_format!r}: validation '
                      f'must keep the sentence head of config.data.input_format='
                      f'{config.data.input_format!r} (both pair formats or neither).')
  return result


def encoder_config(config) -> EncoderConfig:
  """config.model validated by its family: the family's own config when that is an
  EncoderConfig (DeBERTa's, which allows type_vocab_size=0), else the fields all families
  have (ELECTRA's pair of configs: its discriminator's)."""
  model = families.of_config(config).model_config(config.model, prefix='config.model')
  if isinstance(model, EncoderConfig):
    return model
  return EncoderConfig.from_config(config.model, prefix='config.model')


def validate_config(config, mesh) -> None:
  """Checks what would otherwise fail deep inside JAX, or only once the corpus is built and the
  tokenizer trained (encoders/data/validate.py); the message names the field."""
  from encoders.data import validate as data_validate  # pylint: disable=g-import-not-at-top
  model = encoder_config(config)
  data_validate.check_data_config(config, eval_config(config).data)
  train = config.train
  for field in ('batch_size', 'num_steps', 'grad_accum_steps', 'log_every', 'eval_every',
                'eval_steps'):
    if train[field] <= 0:
      raise ConfigError(f'config.train.{field}={train[field]}: must be positive.')
  if config.checkpoint.every_steps <= 0:
    raise ConfigError(f'config.checkpoint.every_steps={config.checkpoint.every_steps}: '
                      'must be positive.')
  dp = sharding.data_parallel_size(mesh)
  if dp % jax.process_count():
    raise ConfigError(f'config.mesh.shape={tuple(config.mesh.shape)}: the data-parallel size '
                      f'(data*fsdp={dp}) must be a multiple of the {jax.process_count()} '
                      'processes, so that each process feeds its own rows.')
  micro = train.batch_size // train.grad_accum_steps
  if train.batch_size % train.grad_accum_steps or micro % dp:
    raise ConfigError(f'config.train.batch_size={train.batch_size}: must be divisible by '
                      f'config.train.grad_accum_steps={train.grad_accum_steps} times the '
                      f'data-parallel size (data*fsdp={dp}).')
  # Every width the mesh splits (ELECTRA's generator and shared embeddings too); the vocabulary
  # need not divide (encoders/training/sharding.py: UNEVEN_REPLICATED).
  family_config = families.of_config(config).model_config(config.model, prefix='config.model')
  sharding.check_divisible(family_config.sharded_sizes('config.model'), config.mesh, mesh)
  if config.data.seq_length + model.position_offset > model.max_position_embeddings:
    raise ConfigError(f'config.data.seq_length={config.data.seq_length} (+ position_offset '
                      f'{model.position_offset}) exceeds config.model.max_position_embeddings='
                      f'{model.max_position_embeddings}.')
  if config.optimizer.warmup_steps > train.num_steps:
    raise ConfigError(f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} exceeds '
                      f'config.train.num_steps={train.num_steps}.')
  eval_seq_length = eval_config(config).data.seq_length
  if eval_seq_length + model.position_offset > model.max_position_embeddings:
    raise ConfigError(f'config.eval_data.seq_length={eval_seq_length} exceeds '
                      f'config.model.max_position_embeddings={model.max_position_embeddings}.')


def train_step(state: state_lib.TrainState, batch, *, objective, tx, schedule,
               grad_accum_steps: int, skip_nonfinite: bool, mesh):
  """One optimizer step on a global batch, split into `grad_accum_steps` micro-batches."""
  rng = jax.random.fold_in(state.rng, state.step)
  denominators = objective.denominators(batch)  # Over the whole batch: micro-batches add up.

  def grads_and_metrics(microbatch, micro_rng):
    (loss, sums), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        state.params, microbatch, micro_rng, denominators, frozen=state.frozen)
    # With the whole batch's denominators, a micro-batch's loss is its share of the batch
    # loss: the shares add up to it. Its count is one per step (set below), not one per
    # micro-batch, or the logged loss would be divided by grad_accum_steps.
    sums['loss'] = (loss, jnp.zeros((), jnp.float32))
    return grads, sums

  if grad_accum_steps == 1:
    grads, sums = grads_and_metrics(batch, rng)
  else:
    def split(x):  # [batch, ...] -> [accum, batch / accum, ...]; micro-batch i = rows i::accum.
      x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(
          x, NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES)))

    def accumulate(total, inputs):
      microbatch, index = inputs
      return jax.tree.map(jnp.add, total, grads_and_metrics(microbatch, jax.random.fold_in(rng, index))), None

    microbatches = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], microbatches)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads_and_metrics, first, rng))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros,
                                    (microbatches, jnp.arange(grad_accum_steps)))
  sums['loss'] = (sums['loss'][0], jnp.ones((), jnp.float32))

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(sums['loss'][0]) & jnp.isfinite(grad_norm)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if skip_nonfinite:
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = new_state.replace(step=state.step + 1)
  # No norm of the parameters or of the update here: reading the parameters once more
  # beside the update that overwrites them in place made XLA copy every parameter first
  # (15% of a BERT-base step on CPU). The loop takes param_norm on logged steps only.
  sums.update(grad_norm=grad_norm, learning_rate=schedule(state.step), finite=finite)
  return new_state, sums


def eval_step(params, frozen, batch, *, objective):
  """Metric sums of one held-out batch (no dropout)."""
  _, sums = objective.loss(params, batch, None, objective.denominators(batch), deterministic=True,
                           frozen=frozen)
  return sums


class _Preemption:
  """SIGTERM sets a flag that the loop checks between steps (one process); with several
  processes, JAX's preemption sync point makes all of them stop at the same step."""

  def __init__(self, enabled: bool):
    self.flag = False
    self.previous = signal.signal(signal.SIGTERM, self._handle) if enabled else None

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint and stopping after this step.')
    self.flag = True

  def reached(self, step: int, manager) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.flag

  def restore(self):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


def make_iterators(config, workdir: str, sentence_head: bool):
  """(train iterator, function returning a fresh eval iterator) for this process; the eval
  iterator reads config.data with config.eval_data's overrides."""
  index, count = jax.process_index(), jax.process_count()
  if config.train.synthetic_data:
    return (synthetic.SyntheticIterator(config, 'train', index, count, sentence_head),
            eval_iterator_factory(config, workdir, sentence_head))
  # pylint: disable-next=g-import-not-at-top
  from encoders.data import pipeline, tokenizer as tokenizer_lib
  tokenizer = tokenizer_lib.get_tokenizer(config.data, workdir)
  if tokenizer.vocab_size != config.model.vocab_size:
    raise ConfigError(f'config.model.vocab_size={config.model.vocab_size} but the tokenizer has '
                      f'{tokenizer.vocab_size} tokens: set --config.model.vocab_size='
                      f'{tokenizer.vocab_size} (and config.data.vocab_size).')
  make_eval_iterator = eval_iterator_factory(config, workdir, sentence_head, tokenizer)
  train_iterator = pipeline.make_pretraining_iterator(
      config, tokenizer, config.data.train_split, process_index=index, process_count=count)
  return train_iterator, make_eval_iterator


def eval_iterator_factory(config, workdir: str, sentence_head: bool, tokenizer=None) -> Callable:
  """A function returning a fresh iterator over this process's validation batches: config.data
  with config.eval_data's overrides (or the synthetic validation data of a synthetic run)."""
  index, count = jax.process_index(), jax.process_count()
  validation = eval_config(config)
  if config.train.synthetic_data:
    return lambda: synthetic.SyntheticIterator(validation, 'validation', index, count, sentence_head)
  # pylint: disable-next=g-import-not-at-top
  from encoders.data import pipeline, tokenizer as tokenizer_lib
  if tokenizer is None:
    tokenizer = tokenizer_lib.get_tokenizer(config.data, workdir)
  make = functools.partial(pipeline.make_pretraining_iterator, tokenizer=tokenizer,
                           process_index=index, process_count=count)
  check_eval_split(validation, make)
  # Built once: every validation iterates the same examples afresh, without cutting them again.
  eval_dataset = pipeline.make_pretraining_dataset(
      validation, tokenizer, validation.data.eval_split, process_index=index,
      process_count=count, num_epochs=1)
  return lambda: iter(eval_dataset)


def check_eval_split(validation: ml_collections.ConfigDict, make: Callable) -> None:
  """Raises ConfigError, before training, when the validation split does not fill one batch.

  The eval iterator drops a last partial batch, so such a split gives no batch at all.
  `make(config, split=..., num_epochs=...)` is this process's iterator; its rows are counted
  one per process (a batch of config.train.batch_size = process count), up to one batch.
  """
  count = jax.process_count()
  needed = validation.train.batch_size // count  # Rows of one eval batch on each process.
  one_row = ml_collections.ConfigDict(validation.to_dict())
  one_row.train.batch_size = count
  one_row.data.update(num_workers=0, prefetch=0)
  rows = sum(1 for _ in itertools.islice(
      make(one_row, split=validation.data.eval_split, num_epochs=1), needed))
  if count > 1:  # All processes raise, or none.
    rows = int(np.min(multihost_utils.process_allgather(np.int32(rows))))
  if rows < needed:
    data = validation.data
    where = ' per process' if count > 1 else ''
    raise ConfigError(
        f'The validation split (config.data.eval_split={data.eval_split!r} of {data.dataset!r}) '
        f'gives {rows} row{"" if rows == 1 else "s"} of {data.seq_length} tokens{where}, '
        f'fewer than one validation batch of config.train.batch_size={validation.train.batch_size} '
        f'rows{f" ({needed} per process)" if count > 1 else ""}. Validation batches have the '
        'training batch size: add text (text_files and wiki_offline put about 5% '
        'of the documents in validation, by a hash of their title), lower '
        'config.train.batch_size, or validate on a larger split with '
        '--config.eval_data.eval_split.')


# The time estimate is printed once at least ETA_STEPS steps after the first (which compiles)
# and ETA_MIN_SECONDS of them are timed: a few steps of a slow run, enough of a fast one.
ETA_STEPS = 3
ETA_MIN_SECONDS = 10.0


def run_plan(config, params) -> dict[str, int]:
  """What the run will do: parameter count (every trainable array), tokens per step, steps, tokens.

  `params` may be arrays or ShapeDtypeStructs (the trainer passes its abstract state's).
  """
  tokens_per_step = config.train.batch_size * config.data.seq_length
  return dict(parameters=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
              tokens_per_step=tokens_per_step, steps=config.train.num_steps,
              total_tokens=tokens_per_step * config.train.num_steps)


def _count(n: int) -> str:
  """1234567 -> '1,234,567 (1.23M)'; under 10,000 the plain number."""
  if n < 10_000:
    return f'{n:,}'
  for size, suffix in ((1e12, 'T'), (1e9, 'B'), (1e6, 'M'), (1e3, 'k')):
    if n >= size:
      return f'{n:,} ({n / size:.3g}{suffix})'


def duration(seconds: float) -> str:
  """A wall time a person reads at a glance: '45 s', '26 min', '3 h 05 min', '11.6 days'."""
  if seconds < 90:
    return f'{seconds:.0f} s'
  if seconds < 90 * 60:
    return f'{seconds / 60:.0f} min'
  if seconds < 48 * 3600:
    return f'{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min'
  return f'{seconds / 86400:.1f} days'


def describe_plan(config, plan: dict[str, int], start_step: int) -> str:
  """The line printed before the first step: model size, tokens per step, steps, total tokens."""
  model = config.model
  left = f' ({plan["steps"] - start_step:,} left)' if start_step else ''
  return (f'Plan: {model.family} L{model.num_layers}/H{model.hidden_size}, '
          f'{_count(plan["parameters"])} parameters; '
          f'{config.train.batch_size} x {config.data.seq_length} = {plan["tokens_per_step"]:,} '
          f'tokens per step; {plan["steps"]:,} steps{left} = {_count(plan["total_tokens"])} '
          f'tokens. The time estimate follows the first timed steps.')


def describe_eta(seconds_per_step: float, steps_timed: int, steps_left: int) -> str:
  """The time-estimate line: measured seconds per step times the steps left."""
  seconds = seconds_per_step * steps_left
  ends = time.strftime('%Y-%m-%d %H:%M', time.localtime(time.time() + seconds))
  return (f'Time estimate: {seconds_per_step:.3g} s per step (timed over {steps_timed} steps) x '
          f'{steps_left:,} steps left = {duration(seconds)}, ending around {ends}.')


def _check_batch(batch: dict, expected: dict) -> None:
  local = {k: ((v[0][0] // jax.process_count(),) + v[0][1:], np.dtype(v[1]))
           for k, v in expected.items()}
  got = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
  if got != local:
    raise ValueError(f'The input pipeline yields {got}, but the trainer expects {local} per '
                     'process (config.train.batch_size / processes, config.data.seq_length, '
                     'max_predictions).')


def evaluate(eval_fn, state, make_eval_iterator, num_batches: int, mesh) -> dict[str, float]:
  """MLM loss, accuracy and perplexity (and NSP/SOP) of `state` over `num_batches` held-out batches.

  With several processes, each host's shard of the split may end after a different number of
  batches; every host then runs the largest count, a host that ran out feeding padding rows
  (all zeros: no example, no prediction, weight 0 in every metric), so no host waits forever in
  a collective and the metrics are those of the real rows.
  """
  batches = itertools.islice(make_eval_iterator(), num_batches)  # Streamed: none is held.
  padding = total = None
  while True:
    batch = next(batches, None)
    if jax.process_count() > 1:  # Whether any host still has a batch: all go on, or all stop.
      if not np.max(multihost_utils.process_allgather(np.int32(batch is not None))):
        break
      if batch is None:  # check_eval_split gave this host one batch at least: padding is set.
        batch = padding
    elif batch is None:
      break
    if padding is None:
      padding = {name: np.zeros_like(value) for name, value in batch.items()}
    sums = eval_fn(state.params, state.frozen, sharding.global_batch(batch, mesh))
    total = metrics.add_sums(total, jax.device_get(sums))
  if total is None:  # check_eval_split stops such runs at start.
    raise ValueError('The validation split gave no batch (see check_eval_split).')
  result = metrics.summarize(total)
  result['mlm_perplexity'] = float(np.exp(result['mlm_loss']))
  return result


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything the loop needs that depends only on the config and the mesh."""
  mesh: Mesh
  rules: tuple
  sentence_head: bool
  objective: objectives.MaskedLanguageModeling
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shapes: dict  # {name: (global shape, dtype)} of a batch.
  abstract_state: state_lib.TrainState  # ShapeDtypeStructs with shardings.
  state_shardings: state_lib.TrainState
  step_fn: Callable  # (state, global batch) -> (state, metric sums); donates state.
  eval_fn: Callable  # (params, frozen, global batch) -> metric sums.
  param_norm_fn: Callable  # params -> their global L2 norm (replicated scalar).

  def init_state(self, seed: int) -> state_lib.TrainState:
    return state_lib.init_state(self.objective, self.tx, self.shapes, seed, self.state_shardings)


def setup(config, mesh: Mesh) -> Setup:
  """Objective, optimizer, shardings and the jitted step / eval functions for `config` on `mesh`."""
  validate_config(config, mesh)
  rules = sharding.rules(config.mesh)
  sentence_head = config.data.input_format in PAIR_FORMATS
  objective = objectives.make_objective(config, sentence_head)
  tx, schedule = optimizer.make_optimizer(config.optimizer, config.train.num_steps)
  shapes = batch_shapes(config, sentence_head)
  abstract_state, state_shardings = state_lib.state_shardings(objective, tx, shapes, mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  step_fn = jax.jit(
      functools.partial(train_step, objective=objective, tx=tx, schedule=schedule,
                        grad_accum_steps=config.train.grad_accum_steps,
                        skip_nonfinite=config.train.skip_nonfinite_updates, mesh=mesh),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(eval_step, objective=objective),
                    in_shardings=(state_shardings.params, state_shardings.frozen, batch_sharding),
                    out_shardings=replicated)
  param_norm_fn = jax.jit(optax.tree.norm, in_shardings=(state_shardings.params,),
                          out_shardings=replicated)
  return Setup(mesh, rules, sentence_head, objective, tx, schedule, shapes, abstract_state,
               state_shardings, step_fn, eval_fn, param_norm_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains per `config` in `workdir` (resuming there); returns the last validation metrics."""
  sharding.initialize_distributed(config.mesh)
  jax.config.update('jax_threefry_partitionable', True)
  mesh = sharding.make_mesh(config.mesh)
  run = setup(config, mesh)
  is_main = jax.process_index() == 0
  train = config.train
  train_iter, make_eval_iterator = make_iterators(config, workdir, run.sentence_head)

  manager = checkpointing.make_manager(workdir, config.checkpoint)
  latest = manager.latest_step()
  if latest is None:
    state = run.init_state(config.seed)
    start_step = 0
  else:
    state, data_state = checkpointing.restore(manager, latest, run.abstract_state)
    train_iter.set_state(data_state)
    start_step = latest

  writer = metrics.MetricWriter(workdir, is_main, start_step)
  model_flops = train.batch_size * run.objective.flops_per_sequence(
      config.data.seq_length, run.shapes['masked_ids'][0][1])
  peak_flops = flops.peak_flops_total(encoder_config(config).compute_dtype)
  # With several processes JAX's preemption service (started by jax.distributed) owns SIGTERM.
  preemption = _Preemption(config.checkpoint.save_on_preemption and jax.process_count() == 1)
  progress = tqdm.tqdm(total=train.num_steps, initial=start_step, unit='step', dynamic_ncols=True,
                       disable=not (is_main and train.progress_bar))
  if start_step:
    progress.write(f'Resumed from {checkpointing.checkpoint_dir(workdir)} at step {start_step}.')
  if is_main:
    progress.write(describe_plan(config, run_plan(config, run.abstract_state.params), start_step))
  interval = dict(sums=None, steps=0, start=None)
  eta = dict(start=None, done=not is_main)  # Times the steps after start_step + 1.
  eval_metrics = {}

  def run_eval(step):
    nonlocal eval_metrics
    start = time.perf_counter()
    eval_metrics = evaluate(run.eval_fn, state, make_eval_iterator, train.eval_steps, mesh)
    writer.write(step, eval_metrics, 'eval')
    progress.write(f'step {step}: validation ' + ', '.join(
        f'{k}={v:.4f}' for k, v in eval_metrics.items()))
    for timer in (interval, eta):  # Validation time is not training step time.
      if timer['start'] is not None:
        timer['start'] += time.perf_counter() - start

  def logs_at(step):
    """Whether step `step` writes train metrics: the first of this run, every log_every, the last."""
    return step in (start_step + 1, train.num_steps) or step % train.log_every == 0

  def finish_step(step, device_metrics):
    """Host side of step `step` (1-based count of steps done): checks, logs."""
    values = jax.device_get(device_metrics)
    if not values.pop('finite') and not train.skip_nonfinite_updates:
      raise FloatingPointError(
          f'Non-finite loss or gradient at step {step} (loss={float(values["loss"][0])}, '
          f'grad_norm={float(values["grad_norm"])}); the last good checkpoint is '
          f'{manager.latest_step()} in {checkpointing.checkpoint_dir(workdir)}. Lower '
          'config.optimizer.learning_rate, or set config.train.skip_nonfinite_updates=True.')
    pairs = {k: v for k, v in values.items() if isinstance(v, tuple)}
    interval['sums'] = metrics.add_sums(interval['sums'], pairs)
    interval['steps'] += 1
    progress.set_postfix(loss=f'{float(values["loss"][0]):.3f}', refresh=False)
    first = interval['start'] is None  # The first step (after a start) includes compilation.
    if not eta['done']:
      timed = step - (start_step + 1)
      if timed == 0:
        eta['start'] = time.perf_counter()
      elif timed >= ETA_STEPS and time.perf_counter() - eta['start'] >= ETA_MIN_SECONDS:
        eta['done'] = True
        if step < train.num_steps:
          progress.write(describe_eta((time.perf_counter() - eta['start']) / timed, timed,
                                      train.num_steps - step))
    if logs_at(step):
      scalars = metrics.summarize(interval['sums'])
      scalars.update({k: float(values[k]) for k in
                      ('grad_norm', 'param_norm', 'learning_rate')})
      if not first:
        seconds = (time.perf_counter() - interval['start']) / interval['steps']
        scalars.update(step_time_s=seconds,
                       tokens_per_s=train.batch_size * config.data.seq_length / seconds)
        if peak_flops:
          scalars['mfu'] = model_flops / seconds / peak_flops
      writer.write(step, scalars, 'train')
      interval.update(sums=None, steps=0, start=time.perf_counter())

  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):  # Activation constraints on.
      if start_step == 0:
        run_eval(0)
      pending = None
      for step in range(start_step, train.num_steps):
        local_batch = next(train_iter)
        if step == start_step:
          _check_batch(local_batch, run.shapes)
        state, step_metrics = run.step_fn(state, sharding.global_batch(local_batch, mesh))
        if logs_at(step + 1):  # Dispatched before the next step overwrites these parameters.
          step_metrics['param_norm'] = run.param_norm_fn(state.params)
        if pending is not None:
          finish_step(*pending)  # Step s's metrics, fetched after step s + 1 was dispatched.
        pending = (step + 1, step_metrics)
        progress.update(1)
        done = step + 1
        preempted = preemption.reached(done, manager)
        saved = preempted or done % config.checkpoint.every_steps == 0 or done == train.num_steps
        if saved:
          finish_step(*pending)  # Never checkpoint a state whose loss was not checked.
          pending = None
          checkpointing.save(manager, done, state, train_iter.get_state(), config)
        if preempted:
          logging.warning('Preempted: saved step %d, stopping.', done)
          break
        if done % train.eval_every == 0 or done == train.num_steps:
          run_eval(done)
        if saved:  # A URL's metrics.jsonl then holds every line up to the checkpoint (eval too).
          writer.flush()
      if pending is not None:
        finish_step(*pending)
  finally:
    progress.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    preemption.restore()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('train_and_evaluate done')
  return eval_metrics
