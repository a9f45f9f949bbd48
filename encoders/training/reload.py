"""Reload a trained workdir for analysis: `load_workdir(workdir, step=None) -> (config, model, params)`,
`encode_texts(config, workdir, texts)` -> the model's inputs, with the workdir's tokenizer, and
`validation_batches(config, workdir)` -> the held-out batches its validation reads.

The parameters are restored onto this host's local devices (sharded over them along
the fsdp axis by the run's logical-axis rules), whatever mesh wrote the checkpoint.
"""
import itertools

import jax
import ml_collections
import numpy as np

from encoders.data import tokenizer as tokenizer_lib

from encoders.training import checkpointing, objectives, optimizer, sharding, trainer
from encoders.training import state as state_lib


def latest_step(workdir: str) -> int:
  """The last complete checkpoint's step in `workdir`."""
  manager = checkpointing.make_manager(workdir, read_only=True)
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise FileNotFoundError(f'No complete checkpoint in {checkpointing.checkpoint_dir(workdir)}.')
  return step


def load_workdir(workdir: str, step: int | None = None):
  """(config, model, params) of checkpoint `step` (default: the latest) in `workdir`.

  `model` is the flax module (e.g. EncoderForPreTraining); call it as
  `model.apply({'params': params}, input_ids, segment_ids, ...)`.
  """
  step = latest_step(workdir) if step is None else step
  manager = checkpointing.make_manager(workdir, read_only=True)
  config = checkpointing.restore_config(manager, step)
  devices = jax.local_devices()
  fsdp = int(np.gcd(len(devices), config.model.hidden_size))
  mesh_config = ml_collections.ConfigDict(dict(shape=(1, fsdp, 1), rules=config.mesh.rules))
  mesh = sharding.make_mesh(mesh_config, devices[:fsdp])
  sentence_head = config.data.input_format in trainer.PAIR_FORMATS
  objective = objectives.make_objective(config, sentence_head)
  tx, _ = optimizer.make_optimizer(config.optimizer, config.train.num_steps)
  abstract_state, _ = state_lib.state_shardings(
      objective, tx, trainer.batch_shapes(config, sentence_head), mesh, sharding.rules(mesh_config))
  state, _ = checkpointing.restore(manager, step, abstract_state, with_data=False)
  manager.close()
  return config, objective.model, state.params


def encode_texts(config, workdir: str, texts: list[str], max_length: int | None = None) -> dict:
  """Texts -> the batch contract's arrays (int32 [len(texts), length]) for `model.apply(**batch)`.

  Each row is [CLS] text [SEP], truncated to `max_length` (default: the run's seq_length)
  and right-padded; `segment_ids` is 1 on the text and 0 on padding, positions count from 0.
  """
  tokenizer = tokenizer_lib.get_tokenizer(config.data, workdir)
  max_length = max_length or config.data.seq_length
  rows = [[tokenizer.cls_id, *ids[:max_length - 2].tolist(), tokenizer.sep_id]
          for ids, _ in tokenizer.encode_batch(list(texts))]
  length = max(map(len, rows))
  input_ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    input_ids[i, :len(row)] = row
    segment_ids[i, :len(row)] = 1
  position_ids = (np.arange(length, dtype=np.int32)[None] * segment_ids).astype(np.int32)
  return dict(input_ids=input_ids, segment_ids=segment_ids, position_ids=position_ids,
              token_type_ids=np.zeros_like(input_ids))


def validation_batches(config, workdir: str):
  """(the run's tokenizer, the first config.train.eval_steps batches that its validation reads).
  A synthetic-data run has no tokenizer (None): its rows are token-id progressions."""
  tokenizer = None if config.train.synthetic_data else tokenizer_lib.get_tokenizer(config.data,
                                                                                    workdir)
  make_eval_iterator = trainer.eval_iterator_factory(
      config, workdir, config.data.input_format in trainer.PAIR_FORMATS, tokenizer)
  return tokenizer, list(itertools.islice(make_eval_iterator(), config.train.eval_steps))
