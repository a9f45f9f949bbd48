"""Multi-task fine-tuning (MT-DNN, Liu et al. 2019): one shared encoder, one head per task.

`finetune_multitask(config, workdir)` trains the suite's tasks (encoders/data/suite.py: topic,
topic_longtail, pair, mention, qa) together. Each task keeps its family's own task model
(family.task_model: the same head, pooling and loss as single-task fine-tuning); the models
share one parameter tree, {'encoder': ..., 'heads': {task: the model's non-encoder subtrees}},
and task k's model runs on {'encoder': the shared encoder, **heads[k]} (`MultiTaskModel`).

Each step draws ONE task by the sampler, then a batch of that task's rows (epochs of
permutations per task, as finetune.py): p_k proportional to the training rows n_k
('proportional'), equal ('uniform'), or to n_k^(1/T) ('temperature', T5 / XLM; T=1 is
proportional, T -> inf uniform). The step moves the encoder and that task's head; the other
heads and their optimizer state stay bit-identical (as PyTorch's optimizers skip parameters
without a gradient); the step count, so the learning-rate schedule and Adam's bias correction,
is shared. The loss is finetune.py's `task_loss` times the task's loss weight.

Every `eval_every` steps each task is evaluated on its dev split with finetune.py's metrics; the
model is selected on the mean over tasks of the suite's primary metric (suite.score, percent).
Test metrics per task, the best model (<workdir>/checkpoints) and <workdir>/results.json at
the end. Everything else (optimizer with layer decay, mesh and shardings, train state,
initialisation from a workdir, an HF directory or none) is finetune.py's.
"""
import dataclasses
import functools
import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from encoders import families, paths
from encoders.adaptation import finetune, finetune_init, selection, suite
from encoders.config import ConfigError
from encoders.data import finetune_data, suite as suite_data
from encoders.training import checkpointing, metrics, sharding

SAMPLERS = ('proportional', 'uniform', 'temperature')
TRAINABLE = tuple(name for name in suite_data.TASKS if name != 'search')
_SAMPLER_STREAM = 1  # Seeds the task sequence apart from the row order (numpy SeedSequence).


# --------------------------------------------------------------------------- config
def task_names(config) -> list[str]:
  """config.multitask.tasks ('topic,mention,pair') as a list; ConfigError when bad."""
  names = [n.strip() for n in config.multitask.tasks.split(',') if n.strip()]
  unknown = [n for n in names if n not in TRAINABLE]
  if not names or unknown or len(set(names)) != len(names):
    raise ConfigError(f'config.multitask.tasks={config.multitask.tasks!r}: name each of '
                      f'{", ".join(TRAINABLE)} at most once (unknown: {unknown}).')
  return names


def loss_weights(config, count: int) -> list[float]:
  """config.multitask.loss_weights ('' = all 1, or one weight per task); ConfigError when bad."""
  text = config.multitask.loss_weights.strip()
  try:
    weights = [float(w) for w in text.split(',')] if text else [1.0] * count
  except ValueError:
    weights = []
  if len(weights) != count or not all(np.isfinite(w) and w >= 0 for w in weights):
    raise ConfigError(f'config.multitask.loss_weights={text!r}: give {count} comma-separated '
                      'weights >= 0 (one per task of config.multitask.tasks), or leave it empty.')
  return weights


def check_config(config) -> None:
  """ConfigError naming the field of a bad multi-task setting (before any data is read)."""
  names = task_names(config)
  loss_weights(config, len(names))
  if config.multitask.sampler not in SAMPLERS:
    raise ConfigError(f'config.multitask.sampler={config.multitask.sampler!r}: choose one of '
                      f'{SAMPLERS}.')
  if not config.multitask.temperature > 0:
    raise ConfigError(f'config.multitask.temperature={config.multitask.temperature}: must be > 0.')


# --------------------------------------------------------------------------- sampling
def task_probabilities(sizes, sampler: str, temperature: float = 1.0) -> np.ndarray:
  """p_k of drawing task k, from its training rows n_k: n_k / sum n ('proportional'), 1 / K
  ('uniform'), n_k^(1/T) / sum n^(1/T) ('temperature')."""
  sizes = np.asarray(sizes, np.float64)
  weights = {'proportional': sizes, 'uniform': np.ones_like(sizes),
             'temperature': sizes ** (1.0 / temperature)}[sampler]
  return weights / weights.sum()


def task_sequence(probabilities: np.ndarray, num_steps: int, seed: int) -> np.ndarray:
  """int [num_steps]: the task of each step, i.i.d. from `probabilities`; a function of seed."""
  rng = np.random.default_rng([seed, _SAMPLER_STREAM])
  return rng.choice(len(probabilities), size=num_steps, p=probabilities)


class RowStream:
  """One task's training rows in epochs of permutations drawn from `order` when needed: with one
  task, the rows finetune.py's stream gives from the same generator."""

  def __init__(self, num_rows: int, order: np.random.Generator):
    self.num_rows, self.order = num_rows, order
    self.pending = np.zeros(0, np.int64)

  def take(self, count: int) -> np.ndarray:
    while len(self.pending) < count:
      self.pending = np.concatenate([self.pending, self.order.permutation(self.num_rows)])
    chosen, self.pending = self.pending[:count], self.pending[count:]
    return chosen


# --------------------------------------------------------------------------- the model
def task_key(rng: jax.Array, index: int) -> jax.Array:
  """Task `index`'s initialisation key: the first task draws what single-task fine-tuning
  draws (so a one-task run is finetune.py's), the others fold their index in."""
  return rng if index == 0 else jax.random.fold_in(rng, index)


def shared_tree(params_by_task: dict[str, dict]) -> dict:
  """{task: its model's parameters} -> {'encoder': the union of their encoders (a key the
  first task has is taken from it), 'heads': {task: its model's other subtrees}}."""
  encoder = {}
  for params in params_by_task.values():
    for key, value in params['encoder'].items():
      encoder.setdefault(key, value)
  return {'encoder': encoder, 'heads': {
      name: {k: v for k, v in params.items() if k != 'encoder'}
      for name, params in params_by_task.items()}}


@dataclasses.dataclass
class MultiTaskModel:
  """Task models (family.task_model) over one parameter tree {'encoder', 'heads': {task: ...}}.

  `init` and `apply` have flax's signatures, so finetune.py's initialisation and apply_model
  take it (apply through `view(task)`). The shared encoder is the union of the task models'
  encoders (a 'cls'-pooled classifier adds BERT's pooler, shared by such tasks).
  """
  models: dict[str, nn.Module]
  encoder_keys: dict[str, tuple[str, ...]] = dataclasses.field(init=False)

  def __post_init__(self):
    ids = jnp.zeros((1, 8), jnp.int32)
    self.encoder_keys = {
        name: tuple(jax.eval_shape(lambda m=model: m.init(jax.random.key(0), ids))
                    ['params']['encoder'])
        for name, model in self.models.items()}

  def init(self, rng, *inputs) -> dict:
    return {'params': shared_tree({
        name: model.init(task_key(rng, index), *inputs)['params']
        for index, (name, model) in enumerate(self.models.items())})}

  def task_params(self, params: dict, name: str) -> dict:
    """Task `name`'s model parameters out of the shared tree."""
    encoder = {k: params['encoder'][k] for k in self.encoder_keys[name]}
    return {'encoder': encoder, **params['heads'][name]}

  def view(self, name: str) -> 'TaskView':
    return TaskView(self, name)


@dataclasses.dataclass(frozen=True)
class TaskView:
  """Task `name`'s model, applied to the shared parameter tree (flax's apply signature)."""
  model: MultiTaskModel
  name: str

  def apply(self, variables, *inputs, **kwargs):
    params = self.model.task_params(variables['params'], self.name)
    return self.model.models[self.name].apply({'params': params}, *inputs, **kwargs)


def initial_params(source: finetune_init.Source, model: MultiTaskModel, fresh: dict,
                   rng: jax.Array, reinit: bool = False) -> tuple[dict, list[str]]:
  """finetune_init.initial_params for the shared tree: each task model is filled from `source`
  (its encoder read, its head new) and the results merged; names of new subtrees are paths in
  the shared tree ('heads/topic/classifier')."""
  filled, new = {}, set()
  for index, name in enumerate(model.models):
    filled[name], task_new = finetune_init.initial_params(
        source, model.models[name], model.task_params(fresh, name), task_key(rng, index), reinit)
    new |= {n if n.startswith('encoder') or n == 'all' else f'heads/{name}/{n}' for n in task_new}
  return shared_tree(filled), sorted(new)


def keep_other_heads(new, old, name: str):
  """`new` (params, optimizer state or a whole TrainState) with every leaf under another task's
  head ('heads/<other>/...') taken from `old`."""
  def pick(path, new_leaf, old_leaf):
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return old_leaf if keys[:1] == ['heads'] and keys[1] != name else new_leaf
  return jax.tree_util.tree_map_with_path(pick, new, old)


def train_step(state, batch, *, view: TaskView, tx, schedule, kind: str, num_labels: int,
               loss_weight: float):
  """One update on one task's batch (see the module docstring)."""
  rng = jax.random.fold_in(state.rng, state.step)
  no_class_weights = jnp.ones(num_labels, jnp.float32)

  def loss_fn(params):
    outputs = finetune.apply_model(view, None, params, batch, rng, False)
    return loss_weight * finetune.task_loss(outputs, batch, kind, no_class_weights)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  return keep_other_heads(new_state, state, view.name), dict(
      loss=loss, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))


# --------------------------------------------------------------------------- the loop
def build_tasks(config, tokenizer, pair_types: bool) -> dict[str, finetune_data.Task]:
  """{name: Task} of config.multitask.tasks, built by encoders/data/suite.py from one article
  split (config.data.max_train / max_eval articles)."""
  splits = suite_data.article_splits(config.data.max_train, config.data.max_eval,
                                     config.data.dev_fraction)
  return {name: suite_data.build_task(name, splits, tokenizer, config.data.max_length, pair_types)
          for name in task_names(config)}


def selection_score(dev: dict[str, dict]) -> float:
  """The mean over tasks of the suite's primary metric, in percent."""
  return float(np.mean([suite.score(name, task_metrics) for name, task_metrics in dev.items()]))


def finetune_multitask(config, workdir: str,
                       tasks: dict[str, finetune_data.Task] | None = None) -> dict:
  """Fine-tunes one encoder on config.multitask.tasks in `workdir`; returns the results dict.

  `tasks` ({name: Task}, names as config.multitask.tasks) replaces the built suite tasks; tests
  pass small built tasks this way.
  """
  started = time.perf_counter()
  jax.config.update('jax_threefry_partitionable', True)
  check_config(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  sharding.initialize_distributed(config.mesh)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.mesh)
  finetune.check_config(config, mesh)
  names = task_names(config)
  weights = loss_weights(config, len(names))
  source = finetune_init.resolve(config, workdir)
  family = families.finetuning(families.get(source.model_config.get('family', 'bert')))
  model_config = family.model_config(source.model_config)
  if tasks is None:
    tasks = build_tasks(config, source.tokenizer, model_config.type_vocab_size > 1)
  if list(tasks) != names:
    raise ConfigError(f'config.multitask.tasks={config.multitask.tasks!r} but the given tasks '
                      f'are {list(tasks)}.')
  length = max(t.splits['train'].rows['input_ids'].shape[1] for t in tasks.values())
  if length + model_config.position_offset > model_config.max_position_embeddings:
    raise ConfigError(f"config.data.max_length={length} exceeds the model's "
                      f'{model_config.max_position_embeddings} positions.')
  model = MultiTaskModel({
      name: family.task_model(task.kind, model_config,
                              len(task.label_names) if task.label_names else None,
                              config.head.pooling)
      for name, task in tasks.items()})

  sizes = [len(task.splits['train']) for task in tasks.values()]
  batch_size = config.train.batch_size
  num_steps = max(1, int(np.ceil(config.train.num_epochs * sum(sizes) / batch_size)))
  eval_every = config.train.eval_every or max(1, int(np.ceil(sum(sizes) / batch_size)))
  probabilities = task_probabilities(sizes, config.multitask.sampler, config.multitask.temperature)
  sequence = task_sequence(probabilities, num_steps, config.seed)
  opt_config = config.optimizer.copy_and_resolve_references()
  with opt_config.unlocked():
    opt_config.warmup_steps = int(opt_config.warmup_fraction * num_steps)
  tx, schedule = finetune.make_optimizer(opt_config, num_steps, model_config.num_layers,
                                         functools.partial(family.models.layer_depth,
                                                           config=model_config))
  state, _, param_shardings, state_shardings, new = finetune.initial_state(
      model, None, source, config, tx, tasks[names[0]].splits['train'].rows, mesh, rules,
      initial_params=initial_params)
  logging.info('Multi-task fine-tuning %s from %s (%s); p = %s; new: %s', names, source.kind,
               source.path, np.round(probabilities, 4).tolist(), new)

  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = sharding.batch_sharding(mesh)
  step_fns, predict_fns = {}, {}
  for name, weight in zip(names, weights):
    task = tasks[name]
    step_fns[name] = jax.jit(
        functools.partial(train_step, view=model.view(name), tx=tx, schedule=schedule,
                          kind=task.kind, num_labels=len(task.label_names or [None]),
                          loss_weight=weight),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    predict_fns[name] = jax.jit(functools.partial(finetune.apply_model, model.view(name), None),
                                in_shardings=(param_shardings, batch_sharding),
                                out_shardings=replicated)

  def evaluate(params, split_name):
    return {name: finetune.evaluate(predict_fns[name], params, tasks[name], split_name, config,
                                    mesh) for name in names}

  is_main = jax.process_index() == 0
  writer = metrics.MetricWriter(workdir, is_main)
  order = np.random.default_rng(config.seed)
  streams = {name: RowStream(size, order) for name, size in zip(names, sizes)}

  def take_step(state, step):
    name = names[sequence[step]]
    rows = finetune.take(tasks[name].splits['train'].rows, streams[name].take(batch_size))
    state, step_metrics = step_fns[name](state, sharding.global_batch(
        sharding.process_rows(rows), mesh))
    return state, step_metrics, name

  def evaluate_dev(params):
    dev = evaluate(params, 'dev')
    score = selection_score(dev)
    return selection.DevResult(
        {f'{n}/{k}': v for n, m in dev.items() for k, v in m.items()} | {'mean_score': score},
        score, f'mean score {score:.2f}; ' + '; '.join(f'{n} {suite.score(n, m):.2f}'
                                                      for n, m in dev.items()), dev)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # Activation constraints on.
    state, best, done = selection.train(
        state, take_step, evaluate_dev, num_steps=num_steps, eval_every=eval_every,
        train_config=config.train, writer=writer,
        description=f'multi-task fine-tuning {"+".join(names)}')
    best_params = jax.device_put(best.params, state_shardings.params)
    test = evaluate(best_params, 'test')
  writer.write(best.step, {f'{n}/{k}': v for n, m in test.items() for k, v in m.items()}
               | {'mean_score': selection_score(test)}, 'test')
  writer.close()

  manager = checkpointing.make_manager(workdir, ml_collections.ConfigDict(dict(keep=1, async_save=False)))
  checkpointing.save(manager, best.step, {'params': best_params}, {'tasks': names}, config)
  manager.wait_until_finished()
  manager.close()
  drawn = np.bincount(sequence[:done], minlength=len(names))
  result = dict(tasks=names, init_from=source.kind, reinit=bool(config.reinit),
                sampler=config.multitask.sampler, temperature=config.multitask.temperature,
                probabilities=dict(zip(names, probabilities.tolist())),
                loss_weights=dict(zip(names, weights)),
                steps_per_task=dict(zip(names, drawn.tolist())),
                train_rows=dict(zip(names, sizes)), best_step=best.step, steps_run=done,
                num_steps=num_steps, new_parameters=new, dev_score=best.score, dev=best.dev,
                test_score=selection_score(test), test=test,
                wall_seconds=time.perf_counter() - started)
  if is_main:
    paths.write_json(os.path.join(workdir, 'results.json'), result, indent=2)
  logging.info('Multi-task fine-tuning results: %s', result)
  return result
