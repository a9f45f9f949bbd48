"""The pretraining input pipeline: tokenized corpus -> examples -> masks -> rows -> batches.

Built on grain so that the iterator state (a small dict) goes into the orbax
checkpoint and a restored iterator continues with exactly the next batch:

  it = make_pretraining_iterator(config, tokenizer, 'train')  # config.data, config.train.batch_size
  batch = next(it)                      # the batch contract (see the team brief)
  state = it.get_state(); it.set_state(state)   # or grain.checkpoint.CheckpointSave(it)

Every batch is a pure function of (shuffle_seed, position in the stream): the
examples are cut once per cached shard (encoders/data/examples.py,
encoders/data/tokenized.py); each host reads its own shards of the split (or, when the split
has fewer shards than hosts, every process_count-th example of all of them); each epoch
shuffles the host's examples anew; an example's
mask is drawn from a generator keyed by (seed, epoch, example) for dynamic
masking or (seed, epoch % dupe_factor, example) for BERT-style static masking
(the same masks BERT's dupe_factor pre-masked copies give, without storing them).
"""
import functools
from typing import Any

from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from encoders.data import examples as examples_lib
from encoders.data import masking
from encoders.data import packing
from encoders.data import validate


def max_predictions(config: ml_collections.ConfigDict) -> int:
  """P, the number of prediction slots per row."""
  if config.max_predictions is not None:
    return config.max_predictions
  return masking.default_max_predictions(config.mask_rate, config.seq_length)


def make_pretraining_iterator(
    config: ml_collections.ConfigDict, tokenizer, split: str, *,
    process_index: int | None = None, process_count: int | None = None,
    num_epochs: int | None = None, corpus=None) -> grain.DatasetIterator:
  """This host's batch iterator: see make_pretraining_dataset."""
  return iter(make_pretraining_dataset(config, tokenizer, split, process_index=process_index,
                                       process_count=process_count, num_epochs=num_epochs,
                                       corpus=corpus))


def make_pretraining_dataset(
    config: ml_collections.ConfigDict, tokenizer, split: str, *,
    process_index: int | None = None, process_count: int | None = None,
    num_epochs: int | None = None, corpus=None) -> grain.IterDataset:
  """Batches of config.train.batch_size / process_count rows for this host.

  Args:
    config: the whole config; reads `config.data` and the global batch size
      `config.train.batch_size` (rows per step over all hosts).
    tokenizer: a data.tokenizer.Tokenizer (its special ids and vocab_size).
    split: corpus split, e.g. 'train'.
    process_index, process_count: this host and the number of hosts (default:
      jax.process_index() / jax.process_count()).
    num_epochs: None repeats forever, reshuffling every epoch.
    corpus: a TokenizedCorpus to read instead of this host's cached shards of the split
      (tokenized.load_shards).
  """
  global_batch_size = config.train.batch_size
  data_config = config.data
  validate.check_pipeline(data_config)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f'config.train.batch_size={global_batch_size} must be divisible by the '
                     f'number of hosts ({process_count}).')
  from encoders.data import tokenized  # pylint: disable=g-import-not-at-top
  if corpus is None:
    shards = tokenized.load_shards(data_config, tokenizer, split, process_index, process_count)
  else:
    shards = [tokenized.Shard(0, 1, corpus, folder=None)]
  if not sum(len(shard.corpus.token_ids) for shard in shards):
    raise ValueError(f'The {split!r} split of the corpus has no tokens: check the corpus '
                     'fields of config.data and rebuild the tokenized cache.')
  indexes = [tokenized.load_examples(shard, data_config) for shard in shards]
  num_examples = sum(len(index) for index in indexes)
  logging.info('%s %s: %d examples from %d documents in %d of %d shards.', split,
               data_config.input_format, num_examples,
               sum(len(shard.corpus.document_offsets) - 1 for shard in shards), len(shards),
               shards[0].num_shards)
  own_shards = shards[0].num_shards >= process_count  # tokenized.host_shard_ids
  if not own_shards and num_examples < process_count:
    raise ValueError(f'The {split!r} split gives {num_examples} {data_config.input_format} '
                     f'examples, fewer than the {process_count} hosts: use a larger corpus.')
  if not num_examples:
    raise ValueError(f'The {split!r} shards {[s.shard_id for s in shards]} of this host give no '
                     f'{data_config.input_format} example: lower config.data.shard_documents '
                     'to balance the shards.')

  num_predictions = max_predictions(data_config)
  replacement_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), tokenizer.special_ids)
  spec = masking.MaskingSpec(
      mask_rate=data_config.mask_rate, mask_token_prob=data_config.mask_token_prob,
      random_token_prob=data_config.random_token_prob, unit=data_config.masking,
      max_predictions=num_predictions, mask_id=tokenizer.mask_id,
      replacement_ids=replacement_ids.astype(np.int32))
  # Positions in the concatenation of this host's shards' examples: all of them when the host
  # owns its shards, else every process_count-th (every host reads the same few shards).
  example_ids = (grain.MapDataset.range(num_examples) if own_shards
                 else grain.MapDataset.range(process_index, num_examples, process_count))
  masked = MaskedExamples(shards, indexes, spec, tokenizer.cls_id, tokenizer.sep_id,
                          data_config.shuffle_seed, len(example_ids),
                          data_config.dupe_factor if data_config.static_masking else None)
  dataset = (example_ids.shuffle(seed=data_config.shuffle_seed)
             .repeat(num_epochs)
             .map_with_index(masked))
  row = functools.partial(packing.assemble_row, seq_length=data_config.seq_length,
                          max_predictions=num_predictions, pad_id=tokenizer.pad_id)
  read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  if data_config.packing and data_config.input_format in examples_lib.SINGLE_SEGMENT_FORMATS:
    rows = packing.PackedRowsIterDataset(
        dataset.to_iter_dataset(read_options), data_config.seq_length, num_predictions,
        tokenizer.pad_id, window=data_config.packing_buffer)
  else:
    rows = dataset.map(functools.partial(_single_row, row)).to_iter_dataset(read_options)
  batches = rows.batch(global_batch_size // process_count, drop_remainder=True)
  if data_config.num_workers:
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  if data_config.prefetch:
    batches = grain.experimental.ThreadPrefetchIterDataset(
        batches, prefetch_buffer_size=data_config.prefetch)
  return batches


def _single_row(assemble, example):
  return assemble([example])


class MaskedExamples:
  """(stream position, example id) -> one masked example (grain map_with_index).

  Example ids number the examples of `shards` one shard after the other. An example's mask is
  drawn from (seed, epoch's draw, shard, example within the shard), whichever host reads it.
  """

  def __init__(self, shards, indexes: list[examples_lib.ExampleIndex], spec: masking.MaskingSpec,
               cls_id: int, sep_id: int, seed: int, epoch_length: int, dupe_factor: int | None):
    self._shards, self._indexes, self._spec = shards, indexes, spec
    self._first_ids = np.cumsum([0] + [len(index) for index in indexes])
    self._cls_id, self._sep_id, self._seed = cls_id, sep_id, seed
    self._epoch_length, self._dupe_factor = epoch_length, dupe_factor

  def __call__(self, position: int, example_id: int) -> dict[str, Any]:
    epoch = position // self._epoch_length
    mask_draw = epoch % self._dupe_factor if self._dupe_factor else epoch
    part = int(np.searchsorted(self._first_ids, example_id, side='right')) - 1
    local_id = example_id - self._first_ids[part]
    shard_id = self._shards[part].shard_id
    # Shard 0 keeps the key of the unsharded pipeline: earlier runs replay exactly.
    rng = np.random.default_rng([self._seed, 1, mask_draw, local_id] + ([shard_id] if shard_id else []))
    token_ids, word_starts, token_type_ids, candidates = self.tokens(part, local_id)
    input_ids, masked_positions, masked_ids = masking.mask_example(
        token_ids, candidates, word_starts, self._spec, rng)
    example = dict(input_ids=input_ids, token_type_ids=token_type_ids,
                   masked_positions=masked_positions, masked_ids=masked_ids)
    if self._indexes[part].nsp_labels is not None:
      example['nsp_label'] = self._indexes[part].nsp_labels[local_id]
    return example

  def tokens(self, part: int, example_id: int):
    """[CLS] piece [SEP] piece [SEP] ... of example `example_id` of the part-th shard:
    (token_ids, word_starts, token_type_ids, candidates), each [n]."""
    index, corpus = self._indexes[part], self._shards[part].corpus
    pieces = range(index.piece_offsets[example_id], index.piece_offsets[example_id + 1])
    length = 1 + sum(int(index.piece_ends[p] - index.piece_starts[p]) + 1 for p in pieces)
    token_ids = np.empty(length, np.int32)
    word_starts = np.ones(length, bool)
    token_type_ids = np.zeros(length, np.int32)
    candidates = np.ones(length, bool)
    token_ids[0], candidates[0] = self._cls_id, False
    offset = 1
    for p in pieces:
      start, end = index.piece_starts[p], index.piece_ends[p]
      stop = offset + end - start
      token_ids[offset:stop] = corpus.token_ids[start:end]
      word_starts[offset:stop] = corpus.word_starts[start:end]
      token_type_ids[offset:stop + 1] = index.piece_types[p]
      token_ids[stop], candidates[stop] = self._sep_id, False
      offset = stop + 1
    return token_ids, word_starts, token_type_ids, candidates
