"""Packs masked examples into fixed-size rows (the batch contract's per-row arrays).

Each example keeps its own [CLS] ... [SEP], gets its own segment id (1..k in the
row) and position ids restarting at 0; attention never crosses segment ids.
Packing is a deterministic greedy first-fit over a window of examples: an
example goes into the first row with room for its tokens and its predictions.
"""
import itertools
from typing import Any

from absl import logging
import grain
import numpy as np

ROW_KEYS = ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids')


def first_fit(num_tokens: np.ndarray, num_predictions: np.ndarray,
              seq_length: int, max_predictions: int) -> list[list[int]]:
  """Example indices of each row, rows in order of creation."""
  token_room = np.zeros(len(num_tokens), np.int64)  # Rows created so far come first.
  prediction_room = np.zeros(len(num_tokens), np.int64)
  rows: list[list[int]] = []
  for i, (tokens, predictions) in enumerate(zip(num_tokens, num_predictions)):
    fits = (token_room[:len(rows)] >= tokens) & (prediction_room[:len(rows)] >= predictions)
    row = int(np.argmax(fits)) if fits.any() else len(rows)
    if row == len(rows):
      rows.append([])
      token_room[row], prediction_room[row] = seq_length, max_predictions
    rows[row].append(i)
    token_room[row] -= tokens
    prediction_room[row] -= predictions
  return rows


def assemble_row(examples: list[dict], seq_length: int, max_predictions: int,
                 pad_id: int) -> dict[str, np.ndarray]:
  """One row of the batch contract from examples that fit (see first_fit)."""
  row = {key: np.zeros(seq_length, np.int32) for key in ROW_KEYS}
  row['input_ids'][:] = pad_id
  row['masked_positions'] = np.zeros(max_predictions, np.int32)
  row['masked_ids'] = np.zeros(max_predictions, np.int32)
  row['masked_weights'] = np.zeros(max_predictions, np.float32)
  offset = num_predicted = 0
  for segment, example in enumerate(examples, start=1):
    length = len(example['input_ids'])
    span = slice(offset, offset + length)
    row['input_ids'][span] = example['input_ids']
    row['token_type_ids'][span] = example['token_type_ids']
    row['segment_ids'][span] = segment
    row['position_ids'][span] = np.arange(length)
    predictions = slice(num_predicted, num_predicted + len(example['masked_positions']))
    row['masked_positions'][predictions] = example['masked_positions'] + offset
    row['masked_ids'][predictions] = example['masked_ids']
    row['masked_weights'][predictions] = 1.0
    offset, num_predicted = offset + length, predictions.stop
  if 'nsp_label' in examples[0]:
    row['nsp_labels'] = np.int32(examples[0]['nsp_label'])
  return row


def packing_efficiency(batch: dict[str, np.ndarray]) -> float:
  """Fraction of non-padding tokens in a batch (or row)."""
  return float(np.mean(batch['segment_ids'] > 0))


class PackedRowsIterDataset(grain.IterDataset):
  """Packs a stream of masked examples into rows, window by window."""

  def __init__(self, parent: grain.IterDataset, seq_length: int, max_predictions: int,
               pad_id: int, window: int, log_every: int = 10_000):
    super().__init__(parent)
    self._args = (seq_length, max_predictions, pad_id, window, log_every)

  def __iter__(self) -> grain.DatasetIterator:
    return _PackedRowsIterator(self._parent.__iter__(), *self._args)


class _PackedRowsIterator(grain.DatasetIterator):
  """State = the parent's state at the start of the current window + rows already emitted.

  Restoring re-reads and re-packs that window (packing is deterministic) and
  skips the rows already emitted, so the next row is exactly the one that
  would have come next.
  """

  def __init__(self, parent, seq_length, max_predictions, pad_id, window, log_every):
    super().__init__(parent)
    self._seq_length, self._max_predictions, self._pad_id = seq_length, max_predictions, pad_id
    self._window, self._log_every = window, log_every
    self._window_state = parent.get_state()
    self._rows: list[dict[str, np.ndarray]] = []
    self._next_row = 0
    self._real_tokens = self._num_rows = 0

  def _pack_window(self):
    self._window_state = self._parent.get_state()
    examples = list(itertools.islice(self._parent, self._window))
    num_tokens = np.array([len(e['input_ids']) for e in examples], np.int64)
    num_predictions = np.array([len(e['masked_positions']) for e in examples], np.int64)
    self._rows = [
        assemble_row([examples[i] for i in row], self._seq_length, self._max_predictions, self._pad_id)
        for row in first_fit(num_tokens, num_predictions, self._seq_length, self._max_predictions)]
    self._next_row = 0

  def __next__(self) -> dict[str, np.ndarray]:
    if self._next_row >= len(self._rows):
      self._pack_window()
      if not self._rows:
        raise StopIteration
    row = self._rows[self._next_row]
    self._next_row += 1
    self._real_tokens += int(np.count_nonzero(row['segment_ids']))
    self._num_rows += 1
    if self._num_rows % self._log_every == 0:
      logging.info('Packing efficiency (non-padding fraction) over %d rows: %.3f',
                   self._num_rows, self._real_tokens / (self._num_rows * self._seq_length))
    return row

  def get_state(self) -> dict[str, Any]:
    return {'window_start': self._window_state, 'rows_emitted': self._next_row}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['window_start'])
    self._rows, self._next_row = [], 0
    if state['rows_emitted']:
      self._pack_window()
      self._next_row = state['rows_emitted']
