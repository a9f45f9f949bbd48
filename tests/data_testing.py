"""Small synthetic corpora and tokenizer ids for the pipeline tests."""
import dataclasses
import types

import ml_collections
import numpy as np

from encoders.configs import data as data_config_lib

SPECIAL_IDS = (0, 1, 2, 3, 4)
TOKENIZER = types.SimpleNamespace(vocab_size=1000, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4,
                                  special_ids=list(SPECIAL_IDS))


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """Same fields as data.tokenized.TokenizedCorpus."""
  token_ids: np.ndarray
  word_starts: np.ndarray
  sentence_offsets: np.ndarray
  document_offsets: np.ndarray
  document_labels: np.ndarray | None = None


def corpus_from_documents(documents, word_starts=None) -> TokenizedCorpus:
  """documents: list of documents, each a list of sentences (lists of token ids)."""
  sentences = [s for doc in documents for s in doc]
  token_ids = np.array([t for s in sentences for t in s], np.int32)
  sentence_offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])]).astype(np.int64)
  document_offsets = np.concatenate([[0], np.cumsum([len(d) for d in documents])]).astype(np.int64)
  if word_starts is None:
    word_starts = np.ones(len(token_ids), bool)
  return TokenizedCorpus(token_ids, np.asarray(word_starts, bool), sentence_offsets, document_offsets)


def random_corpus(seed=0, num_documents=60, sentences=(1, 12), sentence_length=(3, 30),
                  word_start_prob=0.6) -> TokenizedCorpus:
  """Documents of random sentences of random non-special tokens; words of 1+ tokens."""
  rng = np.random.default_rng(seed)
  documents = [[list(rng.integers(len(SPECIAL_IDS), TOKENIZER.vocab_size,
                                  size=rng.integers(*sentence_length)))
                for _ in range(rng.integers(*sentences))]
               for _ in range(num_documents)]
  corpus = corpus_from_documents(documents)
  word_starts = rng.random(len(corpus.token_ids)) < word_start_prob
  word_starts[corpus.sentence_offsets[:-1]] = True  # A sentence starts a word.
  return dataclasses.replace(corpus, word_starts=word_starts)


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = data_config_lib.get_data_config()
  config.update(dict(prefetch=0, seq_length=64, packing_buffer=32))
  config.update(overrides)
  return config


def full_config(data: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  """The sections make_pretraining_iterator reads: config.data and config.train.batch_size."""
  return ml_collections.ConfigDict(dict(data=data, train=dict(batch_size=batch_size)))


def unmasked(batch):
  """The original input_ids: masked_ids scattered back at masked_positions."""
  input_ids = batch['input_ids'].copy()
  rows, slots = np.nonzero(batch['masked_weights'])
  input_ids[rows, batch['masked_positions'][rows, slots]] = batch['masked_ids'][rows, slots]
  return input_ids


def row_segments(batch, row, input_ids=None):
  """The token tuples of the packed examples of one row, in order."""
  input_ids = batch['input_ids'] if input_ids is None else input_ids
  segment_ids = batch['segment_ids'][row]
  return [tuple(input_ids[row][segment_ids == s]) for s in range(1, segment_ids.max() + 1)]
