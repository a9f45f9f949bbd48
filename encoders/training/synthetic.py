"""Synthetic pretraining batches in the batch contract, for tests and for runs without data.

Each batch is a pure function of (seed, split, step): rows are arithmetic progressions
of token ids (so a masked token is predictable from its neighbours and the loss can
fall), packed two segments per row with padding at the end. The iterator's state is
just the step, so checkpoints restore it exactly.
"""
import math

import numpy as np

FIRST_TOKEN = 5  # Ids below are kept for special tokens ([PAD]=0 ... [MASK]=4 as in WordPiece).
MASK_ID = 4
SPLIT_SEEDS = {'train': 0, 'validation': 1}


def max_predictions(data_config) -> int:
  """config.data.max_predictions, or ceil(mask_rate * L) rounded up to a multiple of 8."""
  if data_config.max_predictions:
    return data_config.max_predictions
  return 8 * math.ceil(math.ceil(data_config.mask_rate * data_config.seq_length) / 8)


def make_batch(rng: np.random.Generator, batch_size: int, seq_length: int, num_predictions: int,
               vocab_size: int, pairs: bool) -> dict[str, np.ndarray]:
  B, L, P = batch_size, seq_length, num_predictions
  start = rng.integers(FIRST_TOKEN, vocab_size, (B, 1))
  stride = rng.integers(1, 3, (B, 1))
  tokens = FIRST_TOKEN + (start - FIRST_TOKEN + stride * np.arange(L)) % (vocab_size - FIRST_TOKEN)
  lengths = rng.integers(L // 2, L + 1, B)  # Real tokens per row; the rest is padding.
  splits = rng.integers(2, L // 2, B)  # Where the second packed segment starts.
  positions = np.arange(L)[None, :]
  real = positions < lengths[:, None]
  second = positions >= splits[:, None]
  segment_ids = np.where(real, 1 + second, 0).astype(np.int32)
  position_ids = np.where(real, np.where(second, positions - splits[:, None], positions), 0)
  token_type_ids = (second & real).astype(np.int32) if pairs else np.zeros((B, L), np.int32)
  input_ids = np.where(real, tokens, 0).astype(np.int32)

  # P distinct positions per row among the real tokens after the first; the last slot unused.
  scores = np.where(real & (positions > 0), rng.random((B, L)), 2.0)
  masked_positions = np.sort(np.argsort(scores, axis=1)[:, :P], axis=1).astype(np.int32)
  masked_weights = np.ones((B, P), np.float32)
  masked_weights[:, -1] = 0.0
  masked_positions[:, -1] = 0
  masked_ids = np.take_along_axis(input_ids, masked_positions, 1) * (masked_weights > 0)
  rows = np.arange(B)[:, None]
  input_ids[rows, masked_positions] = np.where(masked_weights > 0, MASK_ID,
                                               input_ids[rows, masked_positions])
  batch = dict(input_ids=input_ids, segment_ids=segment_ids,
               position_ids=position_ids.astype(np.int32), token_type_ids=token_type_ids,
               masked_positions=masked_positions, masked_ids=masked_ids.astype(np.int32),
               masked_weights=masked_weights)
  if pairs:
    batch['nsp_labels'] = rng.integers(0, 2, B).astype(np.int32)
  return batch


class SyntheticIterator:
  """This process's rows of deterministic synthetic global batches, with get/set_state."""

  def __init__(self, config, split: str, process_index: int = 0, process_count: int = 1,
               pairs: bool = False):
    self.seed = (config.seed, SPLIT_SEEDS.get(split, 2))
    self.batch_size = config.train.batch_size
    self.local_batch_size = self.batch_size // process_count
    self.process_index = process_index
    self.shape = (config.data.seq_length, max_predictions(config.data), config.model.vocab_size)
    self.pairs = pairs
    self.step = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((*self.seed, self.step))
    self.step += 1
    batch = make_batch(rng, self.batch_size, *self.shape, pairs=self.pairs)
    rows = slice(self.process_index * self.local_batch_size,
                 (self.process_index + 1) * self.local_batch_size)
    return {name: value[rows] for name, value in batch.items()}

  def get_state(self) -> dict:
    return {'step': self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state['step'])
