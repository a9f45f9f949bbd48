"""Runs one model on the suite (encoders/data/suite.py) in 'probe' or 'finetune' mode, over seeds.

- 'probe': the encoder frozen, its last layer's states computed once per distinct row (tasks
  sharing rows share them); per task a linear head, trained with Adam on minibatches in one
  compiled scan (standardized features, L2): the mean-pooled row for classification (for a
  text pair, each text's mean and their product: `row_features`), each word's first sub-token
  for tagging, each context token's start / end logit for QA. A seed draws the head's
  initialisation and the minibatch order.
- 'finetune': every weight trained by encoders/adaptation/finetune.py on the same built Task, with
  the topic_tiny recipe (configs/finetune.py: mean pooling, 2 epochs or FINETUNE_MIN_ROWS rows, dev
  selection) at `learning_rate`; 'none' is the shape source's architecture re-initialised
  (config.reinit). A seed draws the head, dropout and the row order.
Search needs no training: in both modes it ranks with the frozen encoder's mean-pooled
embeddings (one number, no spread). Scores are reported in percent; `summarize` gives each
task's mean and sample standard deviation over seeds and the macro average (the mean over tasks
of each seed's primary metric, then its mean and spread over seeds).
"""
import functools
import hashlib
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from encoders.adaptation import finetune, finetune_metrics, retrieval
from encoders.analysis import hidden_states as hidden_states_lib, probing, subject as subject_lib
from encoders.configs import finetune as finetune_configs
from encoders.data import finetune_data, pairs, suite as suite_data

MODES = ('probe', 'finetune')
PROBE_STEPS = 1000
PROBE_BATCH = {'classification': 256, 'token_classification': 1024, 'qa': 64}
PROBE_LEARNING_RATE = 3e-3
PROBE_L2 = 1e-4
_HEAD_OPTIMIZER = optax.adam(PROBE_LEARNING_RATE)
FINETUNE_MIN_ROWS = 5000


def load_subject(init_from: str, shape_from: str | None = None) -> subject_lib.Subject:
  """The frozen model: a workdir or an HF directory, or ('none') `shape_from`'s architecture and
  tokenizer freshly initialised."""
  if init_from == 'none':
    if not shape_from:
      raise ValueError("init_from='none' needs shape_from: the workdir or HF directory whose "
                       'architecture and tokenizer the random-init model takes.')
    return subject_lib.reinitialized(subject_lib.load(shape_from))
  return subject_lib.load(init_from)


# --------------------------------------------------------------------------- frozen features
@functools.lru_cache(maxsize=8)
def _last_hidden_fn(model):
  def forward(params, *inputs):
    outputs = model.apply({'params': params}, *inputs)
    hidden = outputs['hidden'] if isinstance(outputs, dict) else outputs[0]
    return hidden.astype(jnp.float32)  # [batch, length, hidden]
  return jax.jit(forward)


def last_hidden(subject: subject_lib.Subject, rows: dict[str, np.ndarray],
                batch_size: int = 32) -> np.ndarray:
  """float32 [rows, L, hidden]: the last layer's states (0 at padding). Rows run sorted by
  length, cut to the smallest of 32, 64, 128, ... L that holds the batch's longest."""
  forward = _last_hidden_fn(subject.model)
  num_rows, length = rows['input_ids'].shape
  buckets = sorted({b for b in (32, 64, 128, 256) if b < length} | {length})
  real = rows['segment_ids'].sum(1)
  order = np.argsort(real, kind='stable')
  result = None
  for start in range(0, num_rows, batch_size):
    chosen = order[start:start + batch_size]
    padded = np.concatenate([chosen, np.full(batch_size - len(chosen), chosen[0])])
    cut = next(b for b in buckets if b >= real[chosen].max())
    hidden = np.asarray(forward(subject.params, *(rows[k][padded, :cut] for k in finetune.INPUTS)))
    if result is None:
      result = np.zeros((num_rows, length, hidden.shape[-1]), np.float32)
    result[chosen, :cut] = hidden[:len(chosen)] * (rows['segment_ids'][chosen, :cut, None] > 0)
  return result


def mean_pooled(subject, rows) -> np.ndarray:
  """[rows, hidden]: the last layer's mean over each row's real tokens."""
  return hidden_states_lib.pool(last_hidden(subject, rows), rows['segment_ids'], 'mean')


def row_features(subject, rows) -> np.ndarray:
  """A classification row's features: its mean-pooled states [rows, hidden]; for text pairs told
  apart by token types, [u, v, u * v] [rows, 3 * hidden] with u, v each text's mean (as
  sentence-pair classifiers on embeddings; a linear head on the mean alone cannot compare)."""
  if not rows['token_type_ids'].any():
    return mean_pooled(subject, rows)
  hidden = last_hidden(subject, rows)
  first = (rows['segment_ids'] > 0) & (rows['token_type_ids'] == 0)
  u = hidden_states_lib.pool(hidden, first, 'mean')
  v = hidden_states_lib.pool(hidden, rows['token_type_ids'], 'mean')
  return np.concatenate([u, v, u * v], axis=-1)


# --------------------------------------------------------------------------- linear heads
def classification_loss(params, x, labels, weights):
  """Weighted cross-entropy of a linear head: x [n, d], labels / weights [n]."""
  kernel, bias = params
  losses = optax.softmax_cross_entropy_with_integer_labels(x @ kernel + bias, labels)
  mean_loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-9)
  return mean_loss + PROBE_L2 * jnp.sum(kernel ** 2)


def span_logits(params, x, segment_ids):
  """(start, end) logits [rows, L] of a linear head on token states x [rows, L, d]; -1e9 at
  padding."""
  kernel, bias = params
  logits = x @ kernel + bias  # [rows, L, 2]
  logits = jnp.where(segment_ids[..., None] > 0, logits, -1e9)
  return logits[..., 0], logits[..., 1]


def _span_loss(params, x, segment_ids, starts, ends):
  start_logits, end_logits = span_logits(params, x, segment_ids)
  cross_entropy = (optax.softmax_cross_entropy_with_integer_labels(start_logits, starts)
                   + optax.softmax_cross_entropy_with_integer_labels(end_logits, ends))
  return 0.5 * jnp.mean(cross_entropy) + PROBE_L2 * jnp.sum(params[0] ** 2)


@functools.partial(jax.jit, static_argnames='loss_fn')
def _train_head(params, arrays, batches, loss_fn):
  """params after one Adam step of loss_fn per row of `batches` (int [steps, batch] row indices
  into `arrays`), in one compiled scan."""
  def step(carry, chosen):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, *(a[chosen] for a in arrays))
    updates, opt_state = _HEAD_OPTIMIZER.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, _HEAD_OPTIMIZER.init(params)), batches)
  return params


def fit_head(loss_fn, arrays: list[np.ndarray], num_outputs: int, seed: int,
             batch_size: int, steps: int = PROBE_STEPS):
  """(kernel [d, outputs], bias [outputs]) minimising loss_fn(params, *batch) with Adam over
  `steps` minibatches, in one compiled scan; arrays share their leading dim, arrays[0] is the
  features [n, ..., d]. The seed draws the initial kernel (normal, std 0.01) and the minibatch
  order (epochs of permutations)."""
  rng = np.random.default_rng(seed)
  count, dim = len(arrays[0]), arrays[0].shape[-1]
  params = (jnp.asarray(rng.normal(0, 0.01, (dim, num_outputs)), jnp.float32),
            jnp.zeros(num_outputs, jnp.float32))
  batch_size = min(batch_size, count)
  epochs = int(np.ceil(steps * batch_size / count))
  stream = np.concatenate([rng.permutation(count) for _ in range(epochs)])
  batches = stream[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)
  return _train_head(params, tuple(jnp.asarray(a) for a in arrays), batches, loss_fn)


# --------------------------------------------------------------------------- probe mode
def _row_digest(rows: dict[str, np.ndarray], i: int) -> bytes:
  """A digest of row i's model inputs: rows equal in every input share it."""
  digest = hashlib.sha1()
  for name in finetune.INPUTS:
    digest.update(rows[name][i].tobytes())
  return digest.digest()


class FrozenFeatures:
  """The frozen model's features of each split's rows. A row's are computed once: rows equal in
  every model input share them (topic_longtail's training rows, a subsample of topic's, and its
  dev and test rows, the same as topic's)."""

  def __init__(self, subject):
    self.subject = subject
    self._splits = {}  # (id(split), pooled) -> features [rows, ...]
    self._rows = {}  # (_row_digest, pooled) -> one row's features (a view into a split's)

  def __call__(self, split: finetune_data.Split, pooled: bool) -> np.ndarray:
    key = (id(split), pooled)
    if key not in self._splits:
      self._splits[key] = self._features(split.rows, pooled)
    return self._splits[key]

  def _features(self, rows: dict[str, np.ndarray], pooled: bool) -> np.ndarray:
    keys = [(_row_digest(rows, i), pooled) for i in range(len(rows['input_ids']))]
    first_new = {}  # Key of a row not computed yet -> its first row.
    for i, key in enumerate(keys):
      if key not in self._rows:
        first_new.setdefault(key, i)
    if first_new:
      chosen = np.fromiter(first_new.values(), np.int64, len(first_new))
      compute = row_features if pooled else last_hidden
      computed = compute(self.subject, {name: rows[name][chosen] for name in finetune.INPUTS})
      self._rows.update(zip(first_new, computed))
      if len(chosen) == len(keys):  # Every row new and distinct: no copy.
        return computed
    return np.stack([self._rows[key] for key in keys])


def probe_task(features: FrozenFeatures, task: finetune_data.Task, seed: int) -> dict:
  """Test metrics of a linear head on `task` (a finetune_data.Task), trained on 'train'."""
  train, test = task.splits['train'], task.splits['test']
  if task.kind == 'classification':
    scale = probing.standardizer(features(train, True))
    labels = np.asarray(train.rows['label'], np.int32)
    weights = finetune.class_weights(labels, len(task.label_names), 'balanced')[labels]
    params = fit_head(classification_loss, [scale(features(train, True)), labels, weights],
                      len(task.label_names), seed, PROBE_BATCH[task.kind])
    logits = np.asarray(scale(features(test, True)) @ params[0] + params[1])
    labels = np.asarray(test.references)
    result = finetune_metrics.classification_metrics(logits, test.example_index, labels,
                                                     len(task.label_names))
    if len(task.label_names) == 2:  # MRPC / QQP style: F1 of the positive class (label 1).
      predictions = finetune_metrics.aggregate_windows(logits, test.example_index,
                                                       len(labels)).argmax(-1)
      result['f1'] = finetune_metrics.class_f1(predictions, labels, 1) or 0.0
    return result
  hidden = features(train, False)
  real = train.rows['segment_ids'] > 0
  scale = probing.standardizer(hidden[real])
  if task.kind == 'token_classification':
    tagged = train.rows['label_weights'] > 0
    params = fit_head(classification_loss, [scale(hidden[tagged]), train.rows['labels'][tagged],
                             np.ones(int(tagged.sum()), np.float32)],
                      len(task.label_names), seed, PROBE_BATCH[task.kind])
    logits = np.asarray(scale(features(test, False)) @ params[0] + params[1])  # [rows, L, tags]
    return finetune_metrics.tagging_metrics(logits, test.rows['word_index'], test.example_index,
                                            test.references, task.label_names)
  params = fit_head(_span_loss, [scale(hidden) * real[..., None], train.rows['segment_ids'],
                                 train.rows['start_positions'], train.rows['end_positions']],
                    2, seed, PROBE_BATCH[task.kind])
  start_logits, end_logits = span_logits(params, scale(features(test, False)),
                                         test.rows['segment_ids'])
  return finetune_metrics.qa_metrics(np.asarray(start_logits), np.asarray(end_logits), test)


def search(subject, articles: list[dict], max_length: int) -> dict:
  """Description -> summary retrieval over `articles` (of the test split) with mean-pooled,
  unit-length embeddings."""
  def embed(texts, progress=False):
    del progress
    split = finetune_data.classification_split(texts, np.zeros(len(texts)), subject.tokenizer,
                                               max_length, max_length // 2, max_windows=1)
    pooled = mean_pooled(subject, split.rows)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
  return retrieval.evaluate(embed, pairs.make_pairs('description', 'test'), articles)


# --------------------------------------------------------------------------- finetune mode
def finetune_config(init_from: str, shape_from: str | None, task_name: str, seed: int,
                    learning_rate: float, max_length: int, train_rows: int):
  """configs/finetune.py's topic_tiny recipe for one suite task and seed, with the epochs that
  show it FINETUNE_MIN_ROWS training rows at least (as experiments/compare_inits.py)."""
  config = finetune_configs.get_config('topic_tiny')
  config.train.num_epochs = max(config.train.num_epochs, FINETUNE_MIN_ROWS / train_rows)
  config.task = f'suite/{task_name}'  # A label only: the Task is built by encoders/data/suite.py.
  config.seed = seed
  config.init_from = shape_from if init_from == 'none' else init_from
  config.reinit = init_from == 'none'
  config.optimizer.learning_rate = learning_rate
  config.data.max_length = max_length
  config.train.progress_bar = False
  if task_name == 'topic_longtail':
    config.head.class_weights = 'balanced'
  return config


# --------------------------------------------------------------------------- the suite
def build_tasks(subject, names: list[str], splits: dict, max_length: int) -> dict:
  """{name: finetune_data.Task} of the suite tasks in `names` (not 'search')."""
  pair_types = subject.model.config.type_vocab_size > 1
  return {name: suite_data.build_task(name, splits, subject.tokenizer, max_length, pair_types)
          for name in names if name != 'search'}


def score(name: str, metrics: dict) -> float:
  """The task's primary metric in percent (SQuAD's F1 already is)."""
  value = metrics[suite_data.TASKS[name][1]]
  return value if name == 'qa' else 100 * value


def run(init_from: str, mode: str, seeds: int, names: list[str], splits: dict,
        shape_from: str | None = None, max_length: int = 128, learning_rate: float = 1e-3,
        workdir: str | None = None) -> dict:
  """{'model', 'mode', 'runs': [{'seed', 'tasks': {name: metrics}}], 'summary', 'sizes',
  'wall_seconds'} of one model on the suite."""
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}: choose one of {MODES}.')
  started = time.perf_counter()
  subject = load_subject(init_from, shape_from)
  tasks = build_tasks(subject, names, splits, max_length)
  features = FrozenFeatures(subject)
  searched = search(subject, splits['test'], max_length) if 'search' in names else None
  runs = []
  for seed in range(seeds):
    results = {}
    for name in names:
      task_started = time.perf_counter()
      if name == 'search':
        results[name] = searched
      elif mode == 'probe':
        results[name] = probe_task(features, tasks[name], seed)
      else:
        config = finetune_config(init_from, shape_from, name, seed, learning_rate, max_length,
                                 len(tasks[name].splits['train']))
        tuned = finetune.finetune(config, os.path.join(workdir, f'{name}_seed{seed}'),
                                  task=tasks[name])
        results[name] = tuned['test']
      logging.info('%s %s seed %d %s: %.2f (%.0f s)', subject.name, mode, seed, name,
                   score(name, results[name]), time.perf_counter() - task_started)
    runs.append(dict(seed=seed, tasks=results))
  sizes = {name: {s: split.num_examples for s, split in task.splits.items()}
           for name, task in tasks.items()}
  return dict(model=subject.name, init_from=init_from, shape_from=shape_from, mode=mode,
              runs=runs, summary=summarize(runs, names), sizes=sizes,
              wall_seconds=time.perf_counter() - started)


def mean_std(values) -> dict:
  """Mean and sample standard deviation (ddof 1; 0 for one value)."""
  values = np.asarray(values, np.float64)
  return dict(mean=float(values.mean()),
              std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
              values=[float(v) for v in values])


def summarize(runs: list[dict], names: list[str]) -> dict:
  """{task: mean_std of its score over seeds, ..., 'macro': mean_std of each seed's mean score}."""
  scores = np.asarray([[score(name, r['tasks'][name]) for name in names] for r in runs])
  summary = {name: mean_std(scores[:, i]) for i, name in enumerate(names)}
  summary['macro'] = mean_std(scores.mean(1))
  return summary
