"""Packing (encoders/data/packing.py): first-fit rows, segment and position ids, efficiency."""
import numpy as np

from encoders.data import examples
from encoders.data import packing
from encoders.data import pipeline
from encoders.data import tokenized
from tests import data_testing

L = 64


def _reference_first_fit(sizes, predictions, capacity, max_predictions):
  rows, room = [], []
  for i, (size, count) in enumerate(zip(sizes, predictions)):
    for row, (tokens_left, predictions_left) in enumerate(room):
      if size <= tokens_left and count <= predictions_left:
        rows[row].append(i)
        room[row] = (tokens_left - size, predictions_left - count)
        break
    else:
      rows.append([i])
      room.append((capacity - size, max_predictions - count))
  return rows


def test_first_fit_matches_a_plain_reference():
  rng = np.random.default_rng(0)
  for _ in range(20):
    sizes = rng.integers(3, L + 1, size=100)
    predictions = rng.integers(0, 6, size=100)
    rows = packing.first_fit(sizes, predictions, L, 10)
    assert rows == _reference_first_fit(sizes, predictions, L, 10)
    assert sorted(i for row in rows for i in row) == list(range(100))


def _batches(config, corpus, num, batch_size=4):
  it = pipeline.make_pretraining_iterator(data_testing.full_config(config, batch_size),
                                          data_testing.TOKENIZER, 'train', process_index=0,
                                          process_count=1, corpus=corpus)
  return [next(it) for _ in range(num)]


def test_packed_rows_keep_examples_apart():
  corpus = data_testing.random_corpus(num_documents=80, sentences=(1, 6))
  config = data_testing.data_config(input_format='doc_sentences', packing=True)
  index = examples.build_examples(corpus, 'doc_sentences', L, config.short_seq_prob,
                                  config.shuffle_seed)
  masked = pipeline.MaskedExamples([tokenized.Shard(0, 1, corpus, None)], [index], None,
                                   data_testing.TOKENIZER.cls_id, data_testing.TOKENIZER.sep_id,
                                   0, len(index), None)
  known = {tuple(masked.tokens(0, i)[0]) for i in range(len(index))}
  p = pipeline.max_predictions(config)
  num_segments = []
  for batch in _batches(config, corpus, 10):
    original = data_testing.unmasked(batch)
    for row in range(len(batch['input_ids'])):
      segment_ids = batch['segment_ids'][row]
      real = segment_ids > 0
      num_segments.append(segment_ids.max())
      # Segments are consecutive blocks 1..k, then padding.
      assert np.all(np.diff(segment_ids[real]) >= 0) and np.array_equal(real, np.arange(L) < real.sum())
      np.testing.assert_array_equal(np.unique(segment_ids[real]), np.arange(1, segment_ids.max() + 1))
      for segment, tokens in enumerate(data_testing.row_segments(batch, row, original), start=1):
        positions = batch['position_ids'][row][segment_ids == segment]
        np.testing.assert_array_equal(positions, np.arange(len(tokens)))  # Restart at 0.
        assert tokens in known  # Exactly one example (so one document) per segment.
      assert np.all(batch['input_ids'][row][~real] == data_testing.TOKENIZER.pad_id)
      assert np.all(batch['position_ids'][row][~real] == 0)
      weights = batch['masked_weights'][row] > 0
      assert weights.sum() <= p
      assert np.all(real[batch['masked_positions'][row][weights]])
  assert np.mean(np.array(num_segments) > 1) > 0.3  # Packing happened.


def test_packing_raises_efficiency():
  corpus = data_testing.random_corpus(num_documents=200, sentences=(1, 6))
  efficiency = {}
  for packed in (False, True):
    config = data_testing.data_config(input_format='doc_sentences', packing=packed)
    batches = _batches(config, corpus, 10, batch_size=8)
    efficiency[packed] = np.mean([packing.packing_efficiency(b) for b in batches])
    reference = np.mean([np.count_nonzero(b['segment_ids']) / b['segment_ids'].size for b in batches])
    assert abs(efficiency[packed] - reference) < 1e-9
  assert efficiency[True] > 0.85 > 0.6 > efficiency[False], efficiency
