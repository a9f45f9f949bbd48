"""Masking (data/masking.py): rates, the 80/10/10 split, whole words, spans."""
import numpy as np
import pytest

from data import corpus as corpus_lib
from data import masking
from data import tokenized
from data import tokenizer as tokenizer_lib
from tests import data_testing

MASK_ID = data_testing.TOKENIZER.mask_id
REPLACEMENTS = np.arange(len(data_testing.SPECIAL_IDS), data_testing.TOKENIZER.vocab_size,
                         dtype=np.int32)
# Tolerance of every count below: 5 standard deviations (a false alarm less than
# once in a million runs per check).
SIGMAS = 5.0


def _spec(unit='token', rate=0.15, mask_prob=0.8, random_prob=0.1, max_predictions=1000):
  return masking.MaskingSpec(rate, mask_prob, random_prob, unit, max_predictions, MASK_ID,
                             REPLACEMENTS)


def _examples(num, rng, length=(20, 120), word_start_prob=0.6):
  """[CLS] a [SEP] b [SEP] examples: (token_ids, candidates, word_starts)."""
  for _ in range(num):
    n = int(rng.integers(*length))
    token_ids = rng.integers(REPLACEMENTS[0], REPLACEMENTS[-1] + 1, size=n).astype(np.int32)
    candidates = np.ones(n, bool)
    seps = [n // 2, n - 1]
    token_ids[0], candidates[0] = data_testing.TOKENIZER.cls_id, False
    token_ids[seps], candidates[seps] = data_testing.TOKENIZER.sep_id, False
    yield token_ids, candidates, rng.random(n) < word_start_prob


def _reference_words(candidates, word_starts):
  """Word index of each candidate token (-1 for special tokens), by a plain loop."""
  words, current, previous_special = [], -1, True
  for is_candidate, starts in zip(candidates, word_starts):
    if not is_candidate:
      words.append(-1)
      previous_special = True
      continue
    if starts or previous_special:
      current += 1
    words.append(current)
    previous_special = False
  return np.array(words)


@pytest.mark.parametrize('rate,mask_prob,random_prob', [(0.15, 0.8, 0.1), (0.4, 1.0, 0.0),
                                                        (0.05, 0.5, 0.3)])
def test_rate_and_corruption_split_match_the_config(rate, mask_prob, random_prob):
  rng = np.random.default_rng(0)
  spec = _spec(rate=rate, mask_prob=mask_prob, random_prob=random_prob)
  num_candidates = num_predicted = num_mask = num_changed = 0
  num_examples = 3000
  for token_ids, candidates, word_starts in _examples(num_examples, rng):
    input_ids, positions, labels = masking.mask_example(token_ids, candidates, word_starts, spec, rng)
    assert candidates[positions].all()  # Never [CLS] / [SEP].
    assert np.all(np.diff(positions) > 0)
    np.testing.assert_array_equal(labels, token_ids[positions])
    unmasked = np.delete(np.arange(len(token_ids)), positions)
    np.testing.assert_array_equal(input_ids[unmasked], token_ids[unmasked])
    num_candidates += candidates.sum()
    num_predicted += len(positions)
    num_mask += np.sum(input_ids[positions] == MASK_ID)
    num_changed += np.sum((input_ids[positions] != MASK_ID) & (input_ids[positions] != labels))
  # The count per example is rate * candidates rounded up with probability equal
  # to the fraction: unbiased, with variance <= 1/4 per example.
  assert abs(num_predicted - rate * num_candidates) <= SIGMAS * np.sqrt(num_examples / 4)
  # Each prediction is [MASK] / random / kept independently; a random token
  # equals the original with probability 1 / len(REPLACEMENTS).
  p_changed = random_prob * (1 - 1 / len(REPLACEMENTS))
  for count, p in ((num_mask, mask_prob), (num_changed, p_changed)):
    assert abs(count - p * num_predicted) <= SIGMAS * np.sqrt(num_predicted * p * (1 - p)) + 1e-9


def test_max_predictions_caps_the_count():
  rng = np.random.default_rng(1)
  spec = _spec(rate=0.5, max_predictions=7)
  for unit in masking.MASKING_UNITS:
    for token_ids, candidates, word_starts in _examples(50, rng, length=(60, 100)):
      spec = _spec(unit=unit, rate=0.5, max_predictions=7)
      _, positions, _ = masking.mask_example(token_ids, candidates, word_starts, spec, rng)
      assert 0 < len(positions) <= 7


def test_default_max_predictions():
  assert masking.default_max_predictions(0.15, 128) == 24  # ceil(19.2) = 20 -> 24
  assert masking.default_max_predictions(0.15, 512) == 80  # ceil(76.8) = 77 -> 80
  assert masking.default_max_predictions(0.125, 64) == 8


def _assert_whole_words(token_ids, candidates, word_starts, unit, rng, rate=0.15):
  input_ids, positions, _ = masking.mask_example(token_ids, candidates, word_starts,
                                                 _spec(unit=unit, rate=rate), rng)
  words = _reference_words(candidates, word_starts)
  predicted = np.zeros(len(token_ids), bool)
  predicted[positions] = True
  for word in np.unique(words[positions]):
    assert predicted[words == word].all(), (unit, word)
  return predicted, words


@pytest.mark.parametrize('unit', ['whole_word', 'ngram', 'span'])
def test_word_units_never_split_a_word(unit):
  rng = np.random.default_rng(2)
  for token_ids, candidates, word_starts in _examples(300, rng, word_start_prob=0.4):
    _assert_whole_words(token_ids, candidates, word_starts, unit, rng)


def test_spans_are_longer_than_ngrams_and_words():
  """Mean run of consecutive masked words: span (3.8 words drawn) > ngram (1.6) > whole_word."""
  rng = np.random.default_rng(3)
  mean_runs = {}
  for unit in ('whole_word', 'ngram', 'span'):
    runs = []
    for token_ids, candidates, word_starts in _examples(400, rng, length=(200, 300)):
      predicted, words = _assert_whole_words(token_ids, candidates, word_starts, unit, rng)
      first_token_of_word = np.unique(words[words >= 0], return_index=True)[1]
      masked_words = predicted[np.flatnonzero(words >= 0)[first_token_of_word]]
      edges = np.diff(np.concatenate([[0], masked_words.astype(int), [0]]))
      runs.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    mean_runs[unit] = np.mean(runs)
  assert mean_runs['whole_word'] < 1.3 < mean_runs['ngram'] < 2.2 < 3.0 < mean_runs['span'], mean_runs


def _wiki_texts(num):
  return [article['extract'] for article in corpus_lib.wiki_offline_articles('en').values()][:num]


@pytest.mark.parametrize('kind,marker', [('wordpiece', '##'), ('bpe', 'Ġ'), ('unigram', '▁')])
def test_whole_words_with_real_tokenizers(kind, marker):
  texts = _wiki_texts(150)
  tokenizer = tokenizer_lib.train(kind, texts, vocab_size=1500, lowercase=kind != 'bpe')
  corpus, _ = tokenized.tokenize_documents(tokenizer, texts)
  tokens = [tokenizer.id_to_token(int(i)) for i in corpus.token_ids]
  has_marker = np.array([t.startswith(marker) for t in tokens])
  if kind == 'wordpiece':  # BERT's definition: a word is a token and its '##' followers.
    np.testing.assert_array_equal(corpus.word_starts, ~has_marker)
  else:  # A space marker always starts a word (punctuation may start one too).
    assert corpus.word_starts[has_marker].all()
  assert 0.05 < np.mean(~corpus.word_starts) < 0.6  # Multi-token words exist.
  rng = np.random.default_rng(4)
  for start in range(0, len(corpus.token_ids) - 130, 130):
    token_ids = np.asarray(corpus.token_ids[start:start + 128])
    word_starts = np.asarray(corpus.word_starts[start:start + 128])
    for unit in ('whole_word', 'span'):
      _assert_whole_words(token_ids, np.ones(128, bool), word_starts, unit, rng, rate=0.3)
