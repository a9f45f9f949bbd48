"""Masking (encoders/data/masking.py): rates, the 80/10/10 split, whole words, ALBERT n-grams,
spans."""
import numpy as np
import pytest

from encoders.data import corpus as corpus_lib
from encoders.data import masking
from encoders.data import tokenized
from encoders.data import tokenizer as tokenizer_lib
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
  """Mean run of consecutive masked words, a fraction rho ~ 0.15 of the words being masked.

  whole_word: a masked word is followed by another with probability ~rho, so runs
  average ~1 / (1 - rho) = 1.18 < 1.3. ngram: drawn n-grams average 18/11 = 1.64
  words. Those taken are shorter: a drawn n-gram is taken only if its other n - 1
  words are free, which weights n = 1, 2, 3 by 6, 3 (1 - rho), 2 (1 - rho)^2 (mean
  1.54 once all rho are taken), and piece ends and overflows cut a few more. Runs
  join neighbouring n-grams, lengthening them by at most ~1 / (1 - rho). So
  1.45 < ngram < 1.64 / 0.85 = 1.93. span: 3.8 words drawn, > 3.0.
  """
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
  assert mean_runs['whole_word'] < 1.3, mean_runs
  assert 1.45 < mean_runs['ngram'] < 1.93, mean_runs
  assert mean_runs['span'] > 3.0, mean_runs


def _one_piece(word_lengths):
  """[CLS] words [SEP], words of the given token counts: (token_ids, candidates, word_starts)."""
  word_starts = np.concatenate([[True]] + [np.arange(k) == 0 for k in word_lengths] + [[True]])
  token_ids = np.full(len(word_starts), REPLACEMENTS[0])
  token_ids[0], token_ids[-1] = data_testing.TOKENIZER.cls_id, data_testing.TOKENIZER.sep_id
  candidates = np.ones(len(word_starts), bool)
  candidates[[0, -1]] = False
  return token_ids, candidates, word_starts


def test_ngrams_are_at_most_three_whole_words_within_a_piece():
  rng = np.random.default_rng(5)
  for token_ids, candidates, word_starts in _examples(300, rng, (10, 60), word_start_prob=0.5):
    cand = np.flatnonzero(candidates)
    words = _reference_words(candidates, word_starts)
    budget = int(rng.integers(1, len(cand) + 1))
    covered = np.zeros(len(token_ids), int)
    for first, stop in masking._albert_ngrams(cand, word_starts[cand], budget, rng):
      positions = cand[first:stop]
      assert np.all(np.diff(positions) == 1)  # No [CLS] / [SEP] inside.
      ngram_words = np.unique(words[positions])
      assert 1 <= len(ngram_words) <= 3
      np.testing.assert_array_equal(np.flatnonzero(np.isin(words, ngram_words)), positions)
      covered[positions] += 1
    assert covered.max(initial=0) <= 1 and covered.sum() <= budget


@pytest.mark.parametrize('num_words', [1, 2, 3, 40])
def test_ngram_lengths_favor_shorter_ngrams(num_words):
  """Words in the first n-gram taken, which no taken word or small budget can bias.

  Its start is uniform over the W words and n is 1, 2, 3 with probabilities 6/11,
  3/11, 2/11 (p(n) proportional to 1/n), cut at the piece's end as ALBERT's
  cand_indexes[idx:idx + n] is: W - 2 starts keep n, the one before last gets 1
  word with 6/11 and 2 words with 3/11 + 2/11, the last always 1 word.
  """
  p_starts = np.array([[6, 3, 2]] * max(num_words - 2, 0) + [[6, 5, 0]] * (num_words >= 2)
                      + [[11, 0, 0]]) / 11  # [W, 3]: p(1, 2, 3 words) from each start
  expected = p_starts.mean(axis=0)
  rng = np.random.default_rng(6)
  num_trials = 20000
  counts = np.zeros(3)
  for _ in range(num_trials):
    token_ids, candidates, word_starts = _one_piece(rng.integers(1, 4, size=num_words))
    cand = np.flatnonzero(candidates)
    budget = min(9, len(cand))  # Three words of at most 3 tokens fit.
    first, stop = masking._albert_ngrams(cand, word_starts[cand], budget, rng)[0]
    counts[word_starts[cand[first:stop]].sum() - 1] += 1  # Its words (each starts with a True).
  np.testing.assert_array_less(
      np.abs(counts - num_trials * expected),
      SIGMAS * np.sqrt(num_trials * expected * (1 - expected)) + 1e-9)


@pytest.mark.parametrize('length,rate,max_predictions,expected', [
    (10, 0.25, 1000, 2),  # round(2.5) = 2: Python 3 rounds half to even, as ALBERT run under it.
    (30, 0.25, 1000, 8),  # round(7.5) = 8.
    (44, 0.15, 1000, 7),  # 44 tokens with [CLS] and two [SEP]s: round(6.6), not round(0.15 * 41).
    (6, 0.05, 1000, 1),  # round(0.3) = 0, raised to 1.
    (200, 0.15, 7, 7),  # max_predictions caps 30.
])
def test_ngram_prediction_count(length, rate, max_predictions, expected):
  """With one-token words the count is exactly min(P, max(1, round(rate * length))).

  A free word is skipped only when its n-gram overflows (impossible with one-token
  words: a shorter one fits) or meets a taken word, one of the next two. Ending
  short of B would leave the W - (B - 1) or more free words all within two words
  before the at most B - 1 taken ones, which cannot happen when W > 3 (B - 1).
  """
  rng = np.random.default_rng(7)
  spec = _spec(unit='ngram', rate=rate, max_predictions=max_predictions)
  for token_ids, candidates, word_starts in _examples(200, rng, length=(length, length + 1),
                                                      word_start_prob=1.0):
    assert candidates.sum() > 3 * (expected - 1)
    _, positions, _ = masking.mask_example(token_ids, candidates, word_starts, spec, rng)
    assert len(positions) == expected


def test_ngram_prediction_count_over_lengths():
  rng = np.random.default_rng(8)
  spec = _spec(unit='ngram', rate=0.15, max_predictions=20)
  for token_ids, candidates, word_starts in _examples(500, rng, (5, 200), word_start_prob=1.0):
    expected = min(20, max(1, round(0.15 * len(token_ids))))
    assert candidates.sum() > 3 * (expected - 1)
    _, positions, _ = masking.mask_example(token_ids, candidates, word_starts, spec, rng)
    assert len(positions) == expected


def test_ngram_meeting_a_taken_word_is_skipped():
  """[CLS] a b c [SEP], one-token words, budget 3: ALBERT skips, not shortens, such an n-gram.

  Then fewer than 3 are predicted in two cases, each of the 6 visit orders having
  probability 1/6: b (1-gram, 6/11), a (its 2- or 3-gram meets b, 5/11), c; and
  c, b (its 2-gram meets c, 5/11), a (1-gram, 6/11). P = 2 / 6 * 30/121 = 10/121.
  Every other draw reaches 3, and shortening instead would always reach it.
  """
  rng = np.random.default_rng(10)
  token_ids, candidates, word_starts = _one_piece([1, 1, 1])
  spec = _spec(unit='ngram', rate=0.6)  # round(0.6 * 5) = 3
  num_trials = 6000
  lengths = np.array([len(masking.mask_example(token_ids, candidates, word_starts, spec, rng)[1])
                      for _ in range(num_trials)])
  assert set(lengths) <= {2, 3}
  p = 10 / 121
  assert abs(np.sum(lengths == 2) - num_trials * p) <= SIGMAS * np.sqrt(num_trials * p * (1 - p))


@pytest.mark.parametrize('tokens_per_word,rate', [(1, 0.1), (2, 0.2), (3, 0.21)])
def test_ngram_overflow_takes_a_shorter_ngram(tokens_per_word, rate):
  """A budget of one word: the first start visited is always taken, cut to its first word.

  So exactly one word is masked, uniformly over the 4. Skipping a start whose
  drawn n-gram overflows instead would favour the last word (always a 1-gram):
  1/4 (1 + 5/11 + (5/11)^2 + (5/11)^3) = 0.44.
  """
  rng = np.random.default_rng(9)
  token_ids, candidates, word_starts = _one_piece([tokens_per_word] * 4)
  assert round(rate * len(token_ids)) == tokens_per_word
  words = _reference_words(candidates, word_starts)
  num_trials = 4000
  counts = np.zeros(4)
  for _ in range(num_trials):
    _, positions, _ = masking.mask_example(token_ids, candidates, word_starts,
                                           _spec(unit='ngram', rate=rate), rng)
    masked_words = np.unique(words[positions])
    assert len(masked_words) == 1
    np.testing.assert_array_equal(positions, np.flatnonzero(words == masked_words[0]))
    counts[masked_words[0]] += 1
  assert np.all(np.abs(counts - num_trials / 4) <= SIGMAS * np.sqrt(num_trials * 3 / 16)), counts


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
