"""The fine-tuning loop: `finetune(config, workdir)` -> dev and test metrics.

It differs from pretraining (encoders/training/trainer.py) in what it feeds and measures: labelled
rows from encoders/data/finetune_data.py, a task head, per-task metrics on whole records, and model
selection / early stopping on the dev split. It reuses the pretraining pieces: mesh and
shardings (encoders/training/sharding.py), the AdamW/LAMB optimizer and schedule
(encoders/training/optimizer.py), the train state, metric writers and orbax checkpoints. The best
dev model is saved to <workdir>/checkpoints and its metrics to <workdir>/results.json.

Parameter-efficient fine-tuning (`config.peft`, encoders/adaptation/lora.py and
encoders/adaptation/adapters.py) trains only the method's weights, the task head and any subtree the
checkpoint lacked (a new pooler); the rest of the encoder is passed to the step as frozen arrays, so
it has no gradient and no optimizer state. The trained variables are one tree whose paths say where
each sits (module_hooks). LoRA is merged into the kernels for evaluation and the saved model
('params', plus the LoRA weights under 'lora'), and exported as a PEFT adapter directory
(<workdir>/peft_adapter) when the task model has a transformers class.
"""
import dataclasses
import functools
import logging
import os
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from encoders import bert, families, module_hooks, paths, peft_interop
from encoders.adaptation import adapters, lora
from encoders.adaptation import finetune_init, finetune_metrics, long_inputs, selection
from encoders.config import ConfigError, EncoderConfig
from encoders.data import finetune_data, imbalance, validate
from encoders.layers import unroll_layers
from encoders.training import checkpointing, metrics, optimizer, sharding
from encoders.training import state as state_lib

INPUTS = ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids')
TARGETS = {'classification': ('label',), 'token_classification': ('labels', 'label_weights'),
           'qa': ('start_positions', 'end_positions')}
SELECTION_METRIC = {'classification': 'accuracy', 'token_classification': 'entity_f1', 'qa': 'f1'}


def layer_depths(params, num_layers: int, depth_of: Callable):
  """Depth per parameter: embeddings (and their projection) 0, layers 1..num_layers, the rest num_layers + 1.

  `depth_of(names, value)` is the family's rule for its stack (`layer_depth` in
  encoders/<family>.py); it returns None outside the stack. Scanned stacks get one depth
  per slice, as an int array shaped to broadcast against the parameter.
  """
  def depth(path, value):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if names[:2] in (['encoder', 'embeddings'], ['encoder', 'embeddings_project']):
      return 0  # ELECTRA's released code also puts embeddings_project at depth 0.
    layer = depth_of(names, value)
    return num_layers + 1 if layer is None else layer
  return jax.tree_util.tree_map_with_path(depth, params)


def make_optimizer(opt_config, num_steps: int, num_layers: int, depth_of: Callable | None = None):
  """encoders/training/optimizer.py's optimizer, its updates scaled by layer_decay^(depth from the
  top).

  `depth_of` defaults to BERT's layout (`layer_{i}` is at depth i + 1).
  """
  tx, schedule = optimizer.make_optimizer(opt_config, num_steps)
  decay = opt_config.layer_decay
  if decay == 1.0:
    return tx, schedule
  if not 0.0 < decay <= 1.0:
    raise ConfigError(f'config.optimizer.layer_decay={decay}: must be in (0, 1].')
  if depth_of is None:
    depth_of = functools.partial(bert.layer_depth, config=EncoderConfig(num_layers=num_layers))

  def scale_by_depth(updates, params):
    depths = layer_depths(params, num_layers, depth_of)
    return jax.tree.map(lambda u, d: u * decay ** (num_layers + 1 - np.asarray(d)).astype(u.dtype),
                        updates, depths)
  return optax.chain(tx, optax.stateless(scale_by_depth)), schedule


def class_weights(labels: np.ndarray, num_labels: int, mode: str) -> np.ndarray:
  """Per-class loss weights: 'none' -> 1; 'balanced' -> n / (classes * count) (sklearn's)."""
  if mode == 'none':
    return np.ones(num_labels, np.float32)
  if mode == 'balanced':
    counts = np.bincount(labels, minlength=num_labels).astype(np.float32)
    return np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 0.0).astype(np.float32)
  raise ConfigError(f"config.head.class_weights={mode!r}: choose 'none' or 'balanced'.")


def peft_method(peft_config) -> lora.LoRA | adapters.Adapters | None:
  """config.peft -> the method's LoRA / Adapters, or None for full fine-tuning."""
  targets = tuple(t.strip() for t in peft_config.targets.split(',') if t.strip())
  if peft_config.method == 'none':
    return None
  if peft_config.method == 'lora':
    return lora.LoRA(peft_config.rank, peft_config.alpha, peft_config.dropout,
                     targets or lora.LoRA.targets, peft_config.rslora)
  if peft_config.method in adapters.PLACEMENTS:
    return adapters.Adapters(peft_config.method, peft_config.adapter_size,
                             peft_config.adapter_activation, targets)
  raise ConfigError(f"config.peft.method={peft_config.method!r}: choose 'none', 'lora' or one "
                    f'of {tuple(adapters.PLACEMENTS)}.')


def is_trained(path: tuple[str, ...], method, new: list[str]) -> bool:
  """Whether the model parameter at `path` is trained: all of them without a PEFT method;
  with one, the task head, the new subtrees (not 'all') and what the method trains."""
  if method is None or path[0] != 'encoder':
    return True
  return method.trains(path) or any('/'.join(path).startswith(f'{n}/') for n in new)


def apply_model(model, method, params, batch, rng=None, deterministic=True):
  """The model's outputs; `params` holds the method's weights too (module_hooks.union)."""
  inputs = [batch[k] for k in INPUTS]
  rngs = None if deterministic else {'dropout': rng}
  if method is None:
    return model.apply({'params': params}, *inputs, deterministic=deterministic, rngs=rngs)
  params, extra = module_hooks.split_extra(params, method.key)
  return module_hooks.apply(method, model, params, extra, *inputs, deterministic=deterministic,
                            rngs=rngs)


def inference_method(method):
  """The method evaluation and the saved model run with: none for LoRA (`for_inference`)."""
  return None if isinstance(method, lora.LoRA) else method


def for_inference(method, params):
  """The parameters to predict with: LoRA merged into the kernels (a plain model)."""
  if isinstance(method, lora.LoRA):
    return method.merge(*module_hooks.split_extra(params, method.key))
  return params


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float) -> jax.Array:
  """-(1 - p_t)^gamma log p_t per example (Lin et al. 2017, softmax form); gamma 0 is the
  cross-entropy. logits [..., classes], labels [...] -> [...]."""
  log_pt = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[..., None],
                               axis=-1)[..., 0]
  return -(-jnp.expm1(log_pt)) ** gamma * log_pt


def task_loss(outputs, batch, kind: str, weights_per_class, focal_gamma: float | None = None):
  """Weighted mean cross-entropy of the task (the focal loss with `focal_gamma`, classification
  kinds); rows with row_weight 0 are padding."""
  row_weight = batch['row_weight']
  per_label = (optax.softmax_cross_entropy_with_integer_labels if focal_gamma is None
               else functools.partial(focal_loss, gamma=focal_gamma))
  if kind == 'classification':
    cross_entropy = per_label(outputs, batch['label'])
    weight = row_weight * weights_per_class[batch['label']]
  elif kind == 'token_classification':
    cross_entropy = per_label(outputs, batch['labels'])
    weight = batch['label_weights'] * row_weight[:, None]  # [batch, length]
  else:
    start_logits, end_logits = outputs
    cross_entropy = 0.5 * (
        optax.softmax_cross_entropy_with_integer_labels(start_logits, batch['start_positions'])
        + optax.softmax_cross_entropy_with_integer_labels(end_logits, batch['end_positions']))
    weight = row_weight
  return jnp.sum(cross_entropy * weight) / jnp.maximum(jnp.sum(weight), 1e-9)


def train_step(state, frozen, batch, *, model, method, tx, schedule, kind, weights_per_class,
               focal_gamma=None):
  """One update of the trained variables (state.params); `frozen` parameters get no gradient."""
  rng = jax.random.fold_in(state.rng, state.step)
  loss_fn = lambda p: task_loss(apply_model(model, method, module_hooks.union(frozen, p), batch,
                                            rng, False), batch, kind, weights_per_class,
                                focal_gamma)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  return new_state, dict(loss=loss, grad_norm=optax.global_norm(grads),
                         learning_rate=schedule(state.step))


def take(rows: dict, indices: np.ndarray, valid: np.ndarray | None = None) -> dict:
  """A batch of rows (model inputs and targets) with row_weight (0 for padding rows)."""
  batch = {k: v[indices] for k, v in rows.items() if k in INPUTS or k in sum(TARGETS.values(), ())}
  batch['row_weight'] = (np.ones(len(indices)) if valid is None else valid).astype(np.float32)
  return batch


def predict(predict_fn, params, split: finetune_data.Split, batch_size: int, mesh):
  """Model outputs for every row of `split` (numpy), in batches padded to `batch_size`."""
  outputs = []
  for start in range(0, len(split), batch_size):
    indices = np.arange(start, min(start + batch_size, len(split)))
    padded = np.concatenate([indices, np.zeros(batch_size - len(indices), np.int64)])
    batch = sharding.process_rows({k: split.rows[k][padded] for k in INPUTS})
    out = jax.device_get(predict_fn(params, sharding.global_batch(batch, mesh)))
    outputs.append(jax.tree.map(lambda x: x[:len(indices)], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def evaluate(predict_fn, params, task: finetune_data.Task, split_name: str, config, mesh):
  split = task.splits[split_name]
  outputs = predict(predict_fn, params, split, config.train.eval_batch_size, mesh)
  if task.kind == 'classification':
    return finetune_metrics.classification_metrics(
        outputs, split.example_index, np.asarray(split.references), len(task.label_names))
  if task.kind == 'token_classification':
    return finetune_metrics.tagging_metrics(outputs, split.rows['word_index'], split.example_index,
                                            split.references, task.label_names)
  return finetune_metrics.qa_metrics(*outputs, split, config.data.max_answer_length)


def check_config(config, mesh) -> None:
  """Raises ConfigError for training and head settings fine-tuning cannot run with."""
  dp = sharding.data_parallel_size(mesh)
  for field in ('batch_size', 'eval_batch_size'):
    if config.train[field] <= 0 or config.train[field] % dp:
      raise ConfigError(f'config.train.{field}={config.train[field]}: must be a positive multiple '
                        f'of the data-parallel size {dp}.')
  if config.train.num_epochs <= 0:
    raise ConfigError(f'config.train.num_epochs={config.train.num_epochs}: must be positive.')
  if config.head.pooling not in ('cls', 'mean', 'max'):
    raise ConfigError(f"config.head.pooling={config.head.pooling!r}: choose 'cls', 'mean' or 'max'.")
  if config.head.get('loss', 'cross_entropy') not in ('cross_entropy', 'focal'):
    raise ConfigError(f"config.head.loss={config.head.loss!r}: choose 'cross_entropy' or 'focal'.")
  if config.head.get('loss') == 'focal' and config.head.focal_gamma < 0:
    raise ConfigError(f'config.head.focal_gamma={config.head.focal_gamma}: must be >= 0.')
  if config.data.get('sampling', 'shuffle') not in ('shuffle', 'balanced'):
    raise ConfigError(f"config.data.sampling={config.data.sampling!r}: choose 'shuffle' or "
                      "'balanced'.")


@dataclasses.dataclass
class _InitAdapter:
  """The `init(rng, batch)` that encoders/training/state.py's sharded initialisation calls: the
  trained model parameters (boxed, with their logical axes) and the method's weights
  (replicated)."""
  model: nn.Module
  trained: Callable = lambda path: True
  init_extra: Callable = lambda rng: {}

  def params(self, rng, batch):
    return self.model.init(rng, *(batch[k] for k in INPUTS))['params']

  def init(self, rng, batch):
    trained, _ = module_hooks.split(self.params(rng, batch), self.trained)
    return module_hooks.union(trained, self.init_extra(rng))


def initial_state(model, method, source, config, tx, train_rows, mesh, rules,
                   initial_params=finetune_init.initial_params):
  """(sharded TrainState of the trained variables, the frozen parameters, shardings of the
  model's parameters and of the state, names of new subtrees): the model's own init gives
  shapes, logical axes and the new head; the source fills in the encoder (`initial_params`:
  finetune_init's, or multi-task fine-tuning's for its shared tree)."""
  init_rng, head_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  shapes = {k: ((config.train.batch_size,) + train_rows[k].shape[1:], np.int32) for k in INPUTS}
  example = state_lib.example_batch(shapes)
  init_model = _InitAdapter(model)
  boxed = jax.eval_shape(init_model.params, init_rng, example)
  param_shardings = sharding.logical_shardings(boxed, mesh, rules)
  fresh = jax.jit(lambda rng: nn.unbox(init_model.params(rng, example)),
                  out_shardings=param_shardings)(init_rng)
  params, new = initial_params(source, model, fresh, head_rng, config.reinit)
  if method is not None:
    modules = module_hooks.target_modules(model, nn.unbox(boxed), method.module_targets)
    init_model = _InitAdapter(model, functools.partial(is_trained, method=method, new=new),
                              functools.partial(method.init, modules=modules))
  _, state_shardings = state_lib.state_shardings(init_model, tx, shapes, mesh, rules)
  trained, frozen = module_hooks.split(params, init_model.trained)
  extra = init_model.init_extra(jax.random.fold_in(init_rng, 1))
  make_state = lambda p, rng: state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                   opt_state=tx.init(p), rng=rng)
  state = jax.jit(make_state, out_shardings=state_shardings)(
      jax.device_put(module_hooks.union(trained, extra), state_shardings.params), dropout_rng)
  frozen = jax.device_put(frozen, module_hooks.split(param_shardings, init_model.trained)[1])
  return state, frozen, param_shardings, state_shardings, new


def _num_elements(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _export_peft(out_dir, model, family, method, trained, source) -> str | None:
  """Writes LoRA's PEFT adapter directory; None (logged) when the task model has no
  transformers class (e.g. mean pooling)."""
  head, extra = module_hooks.split_extra(trained, method.key)
  try:
    architecture = peft_interop.save(
        out_dir, model, family, method, extra, head,
        base_model_name_or_path=source.path if source.kind == 'hf' else None)
  except ValueError as error:  # ConfigError too: a family or model transformers cannot hold.
    logging.warning('No PEFT adapter directory: %s', error)
    return None
  logging.info('PEFT adapter for %s written to %s.', architecture, out_dir)
  return out_dir


def finetune(config, workdir: str, task: finetune_data.Task | None = None) -> dict:
  """Fine-tunes per `config` in `workdir`; returns {'dev': ..., 'test': ..., ...} metrics.

  `task` (built by encoders/data/finetune_data.py) replaces the one config.task names; tests pass
  small built tasks this way.
  """
  started = time.perf_counter()
  jax.config.update('jax_threefry_partitionable', True)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # A gs:// workdir stays a URL.
  sharding.initialize_distributed(config.mesh)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.mesh)
  check_config(config, mesh)
  if task is None:  # A given task was built by the caller; config.data only describes a built one.
    validate.check_data_config(config)
  source = finetune_init.resolve(config, workdir)
  method = peft_method(config.peft)
  family = families.finetuning(families.get(source.model_config.get('family', 'bert')))
  source = long_inputs.extend(source, family, config.long_inputs)
  model_config = family.model_config(source.model_config)
  if method is not None and model_config.scan_layers:  # PEFT finds modules by their layer_{i} path.
    model_config = dataclasses.replace(model_config, scan_layers=False)
    if source.pretrained is not None:
      source = dataclasses.replace(source, pretrained=unroll_layers(source.pretrained))
  if task is None:
    task = finetune_data.build_task(config, source.tokenizer, model_config.type_vocab_size > 1)
  length = task.splits['train'].rows['input_ids'].shape[1]
  if length + model_config.position_offset > model_config.max_position_embeddings:
    raise ConfigError(f'config.data.max_length={length} exceeds the model\'s '
                      f'{model_config.max_position_embeddings} positions: extend them '
                      '(config.long_inputs.max_positions) or read windows (data.max_windows).')
  num_labels = len(task.label_names) if task.label_names else None
  model = family.task_model(task.kind, model_config, num_labels, config.head.pooling)
  train_rows = task.splits['train'].rows
  if task.kind != 'classification' and (config.data.get('sampling', 'shuffle') == 'balanced'
                                        or config.data.get('long_tail_ratio', 0)):
    raise ConfigError(f'config.data.sampling / long_tail_ratio: for classification tasks only, '
                      f'not {task.kind} ({config.task}).')
  focal = config.head.get('loss') == 'focal'
  if focal and task.kind == 'qa':
    raise ConfigError("config.head.loss='focal': for classification and token classification, "
                      f'not {config.task} (span selection).')
  focal_gamma = float(config.head.focal_gamma) if focal else None
  weights_per_class = jnp.asarray(class_weights(train_rows['label'], num_labels, config.head.class_weights)
                                  if task.kind == 'classification' else np.ones(1, np.float32))

  num_train = len(task.splits['train'])
  batch_size = config.train.batch_size
  num_steps = max(1, int(np.ceil(config.train.num_epochs * num_train / batch_size)))
  steps_per_epoch = max(1, int(np.ceil(num_train / batch_size)))
  eval_every = config.train.eval_every or steps_per_epoch
  opt_config = config.optimizer.copy_and_resolve_references()
  with opt_config.unlocked():
    opt_config.warmup_steps = int(opt_config.warmup_fraction * num_steps)
  tx, schedule = make_optimizer(opt_config, num_steps, model_config.num_layers,
                                 functools.partial(family.models.layer_depth, config=model_config))

  state, frozen, param_shardings, state_shardings, new = initial_state(
      model, method, source, config, tx, train_rows, mesh, rules)
  sizes = dict(trainable_parameters=_num_elements(state.params),
               frozen_parameters=_num_elements(frozen),
               optimizer_state_bytes=int(sum(x.nbytes for x in jax.tree.leaves(state.opt_state))))
  logging.info('Fine-tuning %s from %s (%s); new: %s; %s', task.kind, source.kind, source.path,
               new, sizes)

  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = sharding.batch_sharding(mesh)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  step_fn = jax.jit(functools.partial(train_step, model=model, method=method, tx=tx,
                                      schedule=schedule, kind=task.kind,
                                      weights_per_class=weights_per_class,
                                      focal_gamma=focal_gamma),
                    in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                    out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  # Evaluation and the saved model use the inference form (LoRA merged into the kernels).
  evaluated_method = inference_method(method)
  inference_shardings = param_shardings
  if evaluated_method is not None:
    inference_shardings = module_hooks.union(
        param_shardings, module_hooks.split_extra(state_shardings.params, method.key)[1])
  to_inference = jax.jit(lambda p, f: for_inference(method, module_hooks.union(f, p)),
                         in_shardings=(state_shardings.params, frozen_shardings),
                         out_shardings=inference_shardings)
  predict_fn = jax.jit(lambda p, batch: apply_model(model, evaluated_method, p, batch),
                       in_shardings=(inference_shardings, batch_sharding), out_shardings=replicated)

  writer = metrics.MetricWriter(workdir, jax.process_index() == 0)
  selection_metric = SELECTION_METRIC[task.kind]
  order = np.random.default_rng(config.seed)
  if config.data.get('sampling', 'shuffle') == 'balanced':
    stream = imbalance.balanced_stream(train_rows['label'], num_steps * batch_size, order)
  else:
    stream = np.concatenate([order.permutation(num_train)
                             for _ in range(int(np.ceil(num_steps * batch_size / num_train)))])

  def take_step(state, step):
    batch = sharding.process_rows(take(train_rows, stream[step * batch_size:(step + 1) * batch_size]))
    state, step_metrics = step_fn(state, frozen, sharding.global_batch(batch, mesh))
    return state, step_metrics, None

  def evaluate_dev(params):
    dev = evaluate(predict_fn, to_inference(params, frozen), task, 'dev', config, mesh)
    return selection.DevResult(dev, dev[selection_metric],
                               ', '.join(f'{k}={v:.4f}' for k, v in dev.items()), dev)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # Activation constraints on.
    state, best, done = selection.train(
        state, take_step, evaluate_dev, num_steps=num_steps, eval_every=eval_every,
        train_config=config.train, writer=writer, description=f'fine-tuning {config.task}')
    best_trained = jax.device_put(best.params, state_shardings.params)
    best_params = to_inference(best_trained, frozen)
    test = evaluate(predict_fn, best_params, task, 'test', config, mesh)
  writer.write(best.step, test, 'test')
  writer.close()

  saved = {'params': best_params}
  if method is not None:  # The model's parameters (LoRA merged) and the method's weights apart.
    saved['params'], _ = module_hooks.split_extra(best_params, method.key)
    saved[method.key] = module_hooks.split_extra(best_trained, method.key)[1]
  manager = checkpointing.make_manager(workdir, ml_collections.ConfigDict(dict(keep=1, async_save=False)))
  checkpointing.save(manager, best.step, saved, {'task': config.task}, config)
  manager.wait_until_finished()
  manager.close()
  adapter_dir = None
  if isinstance(method, lora.LoRA) and jax.process_index() == 0:
    adapter_dir = _export_peft(os.path.join(workdir, 'peft_adapter'), model, family.name, method,
                               jax.device_get(best_trained), source)
  result = dict(task=config.task, init_from=source.kind, reinit=bool(config.reinit),
                peft=config.peft.method, best_step=best.step, steps_run=done,
                num_steps=num_steps, train_rows=num_train, new_parameters=new, **sizes,
                peft_adapter=adapter_dir, dev=best.dev, test=test,
                wall_seconds=time.perf_counter() - started)
  if jax.process_index() == 0:
    paths.write_json(os.path.join(workdir, 'results.json'), result, indent=2)
  logging.info('Fine-tuning results: %s', result)
  return result

