"""The grain pipeline (encoders/data/pipeline.py): batch contract, determinism, resume, hosts,
epochs."""
import collections
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from encoders.data import examples
from encoders.data import pipeline
from tests import data_testing

L = 64
TOKENIZER = data_testing.TOKENIZER


def _iterator(config, corpus, batch_size=4, **kwargs):
  kwargs = dict(process_index=0, process_count=1) | kwargs
  return pipeline.make_pretraining_iterator(data_testing.full_config(config, batch_size), TOKENIZER,
                                            'train', corpus=corpus, **kwargs)


def _take(iterator, num):
  return [next(iterator) for _ in range(num)]


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _segments(batches, original=True):
  """Every packed example of the batches (token tuples), in order."""
  out = []
  for batch in batches:
    input_ids = data_testing.unmasked(batch) if original else batch['input_ids']
    for row in range(len(input_ids)):
      out.extend(data_testing.row_segments(batch, row, input_ids))
  return out


@pytest.mark.parametrize('input_format', examples.INPUT_FORMATS)
def test_batch_contract(input_format):
  corpus = data_testing.random_corpus()
  config = data_testing.data_config(input_format=input_format)
  p = pipeline.max_predictions(config)
  assert p == 16  # ceil(0.15 * 64) = 10 -> 16
  pair = input_format in examples.PAIR_FORMATS
  for batch in _take(_iterator(config, corpus), 3):
    shapes = dict(input_ids=(4, L), segment_ids=(4, L), position_ids=(4, L), token_type_ids=(4, L),
                  masked_positions=(4, p), masked_ids=(4, p), masked_weights=(4, p))
    if pair:
      shapes['nsp_labels'] = (4,)
    assert {k: v.shape for k, v in batch.items()} == shapes
    for key, value in batch.items():
      assert value.dtype == (np.float32 if key == 'masked_weights' else np.int32), key
    original = data_testing.unmasked(batch)
    for row in range(4):
      for tokens in data_testing.row_segments(batch, row, original):
        assert tokens[0] == TOKENIZER.cls_id and tokens[-1] == TOKENIZER.sep_id
        assert not set(tokens[1:-1]) & {TOKENIZER.cls_id, TOKENIZER.pad_id, TOKENIZER.mask_id}
      unused = batch['masked_weights'][row] == 0
      assert np.all(batch['masked_positions'][row][unused] == 0)
      assert np.all(batch['masked_ids'][row][unused] == 0)
      if pair:  # [CLS] A [SEP] B [SEP]: types 0 then 1, one segment.
        real = batch['segment_ids'][row] > 0
        assert set(batch['segment_ids'][row][real]) == {1}
        types = batch['token_type_ids'][row][real]
        seps = np.flatnonzero(original[row][real] == TOKENIZER.sep_id)
        assert len(seps) == 2 and not types[:seps[0] + 1].any() and types[seps[0] + 1:].all()
      else:
        assert not batch['token_type_ids'][row].any()


@pytest.mark.parametrize('field,value,message', [
    ('mask_rate', 1.5, 'data.mask_rate=1.5: must be in (0, 1)'),
    ('input_format', 'pairs', "data.input_format='pairs': must be one of"),
    ('random_token_prob', 0.3, 'data.random_token_prob=0.3: must be in [0, 1 - mask_token_prob = 0.2]'),
    ('masking', 'word', "data.masking='word'"),
    ('max_predictions', 100, 'data.max_predictions=100'),
    ('seq_length', 4, 'data.seq_length=4'),
])
def test_bad_config_is_rejected_at_construction(field, value, message):
  config = data_testing.data_config(**{field: value})
  with pytest.raises(ValueError) as error:
    _iterator(config, data_testing.random_corpus(num_documents=2))
  assert message in str(error.value)


@pytest.mark.parametrize('mask_prob,random_prob', [(0.8, 0.2), (0.7, 0.3), (0.9, 0.1), (0.0, 1.0)])
def test_corruption_split_summing_to_one_is_accepted(mask_prob, random_prob):
  # Each pair sums to 1 in decimal; for 0.8 and 0.9, 1 - mask_prob rounds below random_prob.
  config = data_testing.data_config(mask_token_prob=mask_prob, random_token_prob=random_prob)
  batch = next(_iterator(config, data_testing.random_corpus(num_documents=4)))
  rows, slots = np.nonzero(batch['masked_weights'])
  inputs = batch['input_ids'][rows, batch['masked_positions'][rows, slots]]
  kept = inputs == batch['masked_ids'][rows, slots]
  assert kept.mean() < 0.05  # No share is left to keep: only a random draw of the same token.
  if mask_prob == 0:
    assert not np.any(inputs == TOKENIZER.mask_id)


def test_empty_corpus_fails_at_start():
  empty = data_testing.corpus_from_documents([])
  with pytest.raises(ValueError, match='has no tokens'):
    _iterator(data_testing.data_config(), empty)


def test_global_batch_must_divide_among_hosts():
  with pytest.raises(ValueError, match='config.train.batch_size=3 must be divisible'):
    _iterator(data_testing.data_config(), data_testing.random_corpus(), batch_size=3,
              process_index=0, process_count=2)


def test_same_seed_same_batches_other_seed_other_batches():
  corpus = data_testing.random_corpus()
  config = data_testing.data_config(masking='whole_word')
  first = _take(_iterator(config, corpus), 5)
  _assert_same_batches(first, _take(_iterator(config, corpus), 5))
  other = _take(_iterator(data_testing.data_config(masking='whole_word', shuffle_seed=1), corpus), 5)
  assert not np.array_equal(first[0]['input_ids'], other[0]['input_ids'])


@pytest.mark.parametrize('input_format,packing,prefetch', [
    ('doc_sentences', True, 2), ('full_sentences', False, 0), ('segment_pair_nsp', False, 2)])
def test_resume_from_state_continues_batch_for_batch(input_format, packing, prefetch):
  corpus = data_testing.random_corpus(num_documents=30)
  config = data_testing.data_config(input_format=input_format, packing=packing, prefetch=prefetch,
                                    packing_buffer=16)
  # 40 batches of 4 rows run over several packing windows and epochs.
  straight = _take(_iterator(config, corpus), 40)
  for stop in (0, 7, 23):
    iterator = _iterator(config, corpus)
    _take(iterator, stop)
    state = json.loads(json.dumps(iterator.get_state()))  # A checkpoint holds JSON.
    resumed = _iterator(config, corpus)
    _take(resumed, 3)  # A restored iterator may have run ahead.
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 40 - stop), straight[stop:])


def test_resume_through_an_orbax_checkpoint(tmp_path):
  corpus = data_testing.random_corpus(num_documents=30)
  config = data_testing.data_config(input_format='doc_sentences', packing_buffer=16)
  iterator = _iterator(config, corpus)
  _take(iterator, 5)
  manager = ocp.CheckpointManager(tmp_path, item_names=('data',))
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = _take(iterator, 4)
  restored = _iterator(config, corpus)
  manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same_batches(_take(restored, 4), expected)


@pytest.mark.parametrize('packing', [False, True])
def test_two_hosts_partition_the_examples(packing):
  corpus = data_testing.random_corpus(num_documents=40)
  config = data_testing.data_config(input_format='doc_sentences', packing=packing)
  one_host = _segments(_iterator(config, corpus, batch_size=1, num_epochs=1), original=False)
  hosts = [_segments(_iterator(config, corpus, batch_size=2, num_epochs=1, process_index=i,
                               process_count=2), original=False)
           for i in range(2)]
  assert min(len(h) for h in hosts) >= len(one_host) // 2 - 1
  assert not set(hosts[0]) & set(hosts[1])
  # Same examples with the same masks (masks depend on the example, not the host).
  assert collections.Counter(hosts[0] + hosts[1]) == collections.Counter(one_host)


def test_epochs_cover_every_example_once_and_reshuffle():
  corpus = data_testing.random_corpus(num_documents=40)
  config = data_testing.data_config(packing=False)
  num_examples = len(examples.build_examples(corpus, config.input_format, L, config.short_seq_prob,
                                             config.shuffle_seed))
  rows = _segments(_take(_iterator(config, corpus, batch_size=1), 3 * num_examples))
  epochs = [rows[e * num_examples:(e + 1) * num_examples] for e in range(3)]
  assert len(set(epochs[0])) == num_examples
  assert set(epochs[0]) == set(epochs[1]) == set(epochs[2])
  assert epochs[0] != epochs[1] != epochs[2]


def _masks_per_epoch(config, corpus, num_epochs):
  """{example tokens: [masked input of epoch 0, 1, ...]} through the whole pipeline."""
  num_examples = len(examples.build_examples(corpus, config.input_format, L, config.short_seq_prob,
                                             config.shuffle_seed))
  batches = _take(_iterator(config, corpus, batch_size=1), num_epochs * num_examples)
  masks = collections.defaultdict(list)
  for original, masked in zip(_segments(batches), _segments(batches, original=False)):
    masks[original].append(masked)
  assert all(len(m) == num_epochs for m in masks.values())
  return list(masks.values())


def test_static_masks_repeat_every_dupe_factor_epochs_dynamic_ones_never():
  corpus = data_testing.random_corpus(num_documents=30)
  static = _masks_per_epoch(
      data_testing.data_config(packing=False, static_masking=True, dupe_factor=2), corpus, 3)
  assert all(m[0] == m[2] for m in static)
  assert np.mean([m[0] != m[1] for m in static]) > 0.9
  dynamic = _masks_per_epoch(data_testing.data_config(packing=False), corpus, 3)
  assert np.mean([m[0] != m[1] and m[0] != m[2] and m[1] != m[2] for m in dynamic]) > 0.9
