"""Input formats: structure of the examples cut from a corpus (encoders/data/examples.py)."""
import numpy as np
import pytest

from encoders.data import examples
from tests import data_testing

L = 64
# Binomial tolerance for a fair coin over n draws: 4.5 standard deviations
# (a false alarm about once in 150,000 runs).
SIGMAS = 4.5


def _pieces(index, i):
  span = range(index.piece_offsets[i], index.piece_offsets[i + 1])
  return [(int(index.piece_starts[p]), int(index.piece_ends[p]), int(index.piece_types[p]))
          for p in span]


def _document_of_token(corpus):
  sentence_of_doc_start = corpus.document_offsets
  token_of_doc_start = corpus.sentence_offsets[sentence_of_doc_start]
  return lambda token: int(np.searchsorted(token_of_doc_start, token, side='right') - 1)


def _sentence_bounds(corpus):
  return set(int(x) for x in corpus.sentence_offsets)


def _assert_coin(num_heads, n):
  assert abs(num_heads / n - 0.5) <= SIGMAS * np.sqrt(0.25 / n), (num_heads, n)


@pytest.mark.parametrize('input_format', ['full_sentences', 'doc_sentences'])
def test_single_segment_formats_cover_the_corpus_in_order(input_format):
  corpus = data_testing.random_corpus(num_documents=80)
  index = examples.build_examples(corpus, input_format, L, short_seq_prob=0.0, seed=1)
  doc_of = _document_of_token(corpus)
  bounds = _sentence_bounds(corpus)
  covered = []
  for i in range(len(index)):
    pieces = _pieces(index, i)
    assert 1 + sum(e - s + 1 for s, e, _ in pieces) <= L
    assert all(t == 0 for _, _, t in pieces)
    docs = [doc_of(s) for s, _, _ in pieces]
    assert all(doc_of(e - 1) == d for (_, e, _), d in zip(pieces, docs))  # A piece is one document.
    assert len(set(docs)) == len(docs)  # A new document starts a new piece (an extra [SEP]).
    if input_format == 'doc_sentences':
      assert len(pieces) == 1
    # Full sentences: no sentence here is longer than a row, so none is cut.
    assert all(s in bounds and e in bounds for s, e, _ in pieces)
    covered.extend(range(s, e) for s, e, _ in pieces)
  covered = np.concatenate([np.arange(r.start, r.stop) for r in covered])
  np.testing.assert_array_equal(covered, np.arange(len(corpus.token_ids)))
  assert index.stats['split_sentences'] == 0


def test_full_sentences_fill_rows_and_cross_documents():
  corpus = data_testing.random_corpus(num_documents=80, sentences=(1, 3))
  index = examples.build_examples(corpus, 'full_sentences', L, short_seq_prob=0.0, seed=1)
  sentence_lengths = np.diff(corpus.sentence_offsets)
  next_sentence = {int(s): int(n) for s, n in zip(corpus.sentence_offsets[:-1], sentence_lengths)}
  doc_starts = set(int(x) for x in corpus.sentence_offsets[corpus.document_offsets])
  lengths = index.num_tokens()
  assert np.mean(np.diff(index.piece_offsets) > 1) > 0.5  # Most rows hold several documents.
  for i in range(len(index) - 1):
    following = int(index.piece_starts[index.piece_offsets[i + 1]])
    # The next sentence did not fit (one more [SEP] if it starts a new document).
    assert lengths[i] + next_sentence[following] + (following in doc_starts) > L


def test_long_document_and_sentence_are_split_not_dropped():
  long_sentence = list(range(10, 10 + 3 * L))
  corpus = data_testing.corpus_from_documents([[long_sentence], [[7, 8, 9]], [[], [5, 6]]])
  for input_format in examples.INPUT_FORMATS:
    index = examples.build_examples(corpus, input_format, L, short_seq_prob=0.0, seed=0)
    assert index.stats['split_sentences'] == 1, input_format
    assert index.stats['empty_sentences'] == 1, input_format
    assert index.num_tokens().max() <= L
    if input_format in examples.SINGLE_SEGMENT_FORMATS:
      tokens = np.concatenate([corpus.token_ids[s:e] for s, e in
                               zip(index.piece_starts, index.piece_ends)])
      np.testing.assert_array_equal(tokens, corpus.token_ids)


def test_short_seq_prob_shortens_some_examples():
  corpus = data_testing.random_corpus(num_documents=100, sentences=(20, 40), sentence_length=(2, 6))
  full = examples.build_examples(corpus, 'doc_sentences', L, 0.0, seed=0).num_tokens()
  short = examples.build_examples(corpus, 'doc_sentences', L, 0.5, seed=0).num_tokens()
  assert np.median(short) < np.median(full) - 10
  assert short.max() <= L


@pytest.mark.parametrize('input_format', ['segment_pair_nsp', 'sentence_pair_nsp'])
def test_nsp_pairs(input_format):
  corpus = data_testing.random_corpus(num_documents=400, sentences=(6, 20), sentence_length=(3, 12))
  index = examples.build_examples(corpus, input_format, L, short_seq_prob=0.1, seed=3)
  doc_of = _document_of_token(corpus)
  bounds = _sentence_bounds(corpus)
  for i in range(len(index)):
    (a0, a1, ta), (b0, b1, tb) = _pieces(index, i)
    assert (ta, tb) == (0, 1) and a1 > a0 and b1 > b0
    assert (a1 - a0) + (b1 - b0) <= L - 3
    assert doc_of(a0) == doc_of(a1 - 1) and doc_of(b0) == doc_of(b1 - 1)
    truncated = (a1 - a0) + (b1 - b0) == L - 3
    if index.nsp_labels[i] == 0:
      assert b0 == a1 or truncated  # B continues A.
    else:
      assert doc_of(b0) != doc_of(a0)  # B from another document.
    if input_format == 'sentence_pair_nsp' and not truncated:
      # Untruncated: A and B are single whole sentences.
      assert {a0, a1, b0, b1} <= bounds
      inside = np.searchsorted(corpus.sentence_offsets, [a1, b1]) - np.searchsorted(
          corpus.sentence_offsets, [a0, b0], side='right')
      assert not inside.any()
  forced = index.stats['forced_random_next']
  n = len(index) - forced
  assert n > 500
  _assert_coin(int(index.nsp_labels.sum()) - forced, n)


def test_sop_pairs_are_consecutive_and_swapped_half_the_time():
  corpus = data_testing.random_corpus(num_documents=400, sentences=(1, 20), sentence_length=(3, 12))
  index = examples.build_examples(corpus, 'sop', L, short_seq_prob=0.1, seed=4)
  doc_of = _document_of_token(corpus)
  for i in range(len(index)):
    (a0, a1, _), (b0, b1, _) = _pieces(index, i)
    assert doc_of(a0) == doc_of(b1 - 1)  # One document.
    if index.nsp_labels[i] == 0:
      assert a1 == b0 or (a1 - a0) + (b1 - b0) == L - 3  # In order (up to truncation).
    else:
      assert b1 == a0 or (a1 - a0) + (b1 - b0) == L - 3  # Swapped.
      assert b0 < a0
  assert len(index) > 500
  _assert_coin(int(index.nsp_labels.sum()), len(index))


def test_examples_are_deterministic_given_the_seed():
  corpus = data_testing.random_corpus()
  first = examples.build_examples(corpus, 'segment_pair_nsp', L, 0.1, seed=5)
  again = examples.build_examples(corpus, 'segment_pair_nsp', L, 0.1, seed=5)
  other = examples.build_examples(corpus, 'segment_pair_nsp', L, 0.1, seed=6)
  np.testing.assert_array_equal(first.piece_starts, again.piece_starts)
  np.testing.assert_array_equal(first.nsp_labels, again.nsp_labels)
  assert not np.array_equal(first.nsp_labels, other.nsp_labels)
