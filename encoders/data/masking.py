"""Masked-LM corruption of one example: which tokens to predict and what the model sees.

The tokens to predict are drawn in "units" of consecutive non-special tokens:
- 'token' (BERT): each token alone.
- 'whole_word' (BERT whole-word masking): a word = a `word_starts` token and the
  non-start tokens after it, so a word is never split.
- 'span' (SpanBERT): spans of whole words, length ~ Geometric(0.2) clipped
  (renormalised) at 10, mean 3.8 words; corrupted as a whole (all [MASK], all
  random or all kept).
- 'ngram' (ALBERT): n-grams of whole words, as create_masked_lm_predictions in
  google-research/albert create_pretraining_data.py with ngram=3 and
  favor_shorter_ngram (below).
Spans come from a random segmentation of the words with those lengths (so they
never overlap or cross a [SEP]). Tokens, words and spans are taken in random
order, skipping those that no longer fit, until the number of predictions
reaches mask_rate * (number of non-special tokens), stochastically rounded so
that the rate is exact on average.
N-grams follow ALBERT's loop. The number of predictions is min(max_predictions,
max(1, round(mask_rate * n))), n the example's length with [CLS] and [SEP]s
(and at most the number of non-special tokens). Every word is a start, visited
in random order; at each, n in {1, 2, 3} is drawn with p(n) proportional to 1/n
and the n-gram is the start word and the n - 1 words after it, cut at the next
[SEP] (ALBERT cuts only at the example's end, so its n-grams may cross a [SEP]).
While the n-gram's tokens overflow the number still to predict, it is shortened
by a word; the start is skipped if a single word overflows or if any of its
words is already taken. The visit stops once the number is reached.
Each predicted token becomes [MASK] with mask_token_prob, a random non-special
token with random_token_prob, and stays itself otherwise (BERT's 80/10/10).
"""
import dataclasses
import math

import numpy as np

MASKING_UNITS = ('token', 'whole_word', 'ngram', 'span')

# Cumulative distributions of the drawn length in words (1, 2, ...): ALBERT's n, SpanBERT's span.
_NGRAM_CDF = np.cumsum([1, 1 / 2, 1 / 3]) / sum([1, 1 / 2, 1 / 3])
_SPAN_CDF = np.cumsum(0.2 * 0.8 ** np.arange(10)) / (1 - 0.8 ** 10)


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  mask_rate: float
  mask_token_prob: float
  random_token_prob: float
  unit: str
  max_predictions: int  # P: a row never predicts more tokens.
  mask_id: int
  replacement_ids: np.ndarray  # int32 [num_non_special]: ids a random replacement draws from.


def default_max_predictions(mask_rate: float, seq_length: int) -> int:
  """ceil(mask_rate * L) rounded up to a multiple of 8."""
  return -(-math.ceil(mask_rate * seq_length) // 8) * 8


def mask_example(token_ids: np.ndarray, candidates: np.ndarray, word_starts: np.ndarray,
                 spec: MaskingSpec, rng: np.random.Generator):
  """Masks one example.

  Args:
    token_ids: int32 [n] the example's tokens, [CLS]/[SEP] included.
    candidates: bool [n] tokens that may be predicted (not [CLS]/[SEP]/padding).
    word_starts: bool [n] True where a token begins a word.
    spec: what to mask and how.
    rng: the example's generator (seeded per example, epoch or static copy).

  Returns:
    (input_ids int32 [n], masked_positions int32 [p], masked_ids int32 [p]) with
    p <= spec.max_predictions, positions ascending.
  """
  cand = np.flatnonzero(candidates)  # [c]
  if spec.unit == 'ngram':
    # ALBERT's int(round(len(tokens) * masked_lm_prob)) with Python 3's round (half to even).
    budget = min(max(1, int(round(len(token_ids) * spec.mask_rate))), spec.max_predictions,
                 len(cand))
  else:
    budget = min(int(spec.mask_rate * len(cand) + rng.random()), spec.max_predictions)
  if budget == 0:
    return token_ids, np.zeros(0, np.int32), np.zeros(0, np.int32)
  if spec.unit == 'token':
    positions = np.sort(cand[rng.permutation(len(cand))[:budget]])
  elif spec.unit == 'ngram':
    keep = np.zeros(len(cand), bool)  # [c]
    for first, stop in _albert_ngrams(cand, word_starts[cand], budget, rng):
      keep[first:stop] = True
    positions = cand[keep]
  else:
    unit_id = _unit_ids(cand, word_starts[cand], spec.unit, rng)  # [c]
    num_units = int(unit_id[-1]) + 1
    order = rng.permutation(num_units)
    taken = order[_greedy_fill(np.bincount(unit_id)[order], budget)]
    selected = np.zeros(num_units, bool)
    selected[taken] = True
    keep = selected[unit_id]
    positions, unit_of_position = cand[keep], unit_id[keep]

  labels = token_ids[positions]
  if spec.unit == 'span':  # SpanBERT corrupts a span as a whole.
    draw = rng.random(num_units)[unit_of_position]
  else:
    draw = rng.random(len(positions))
  input_ids = token_ids.copy()
  input_ids[positions[draw < spec.mask_token_prob]] = spec.mask_id
  is_random = (draw >= spec.mask_token_prob) & (draw < spec.mask_token_prob + spec.random_token_prob)
  input_ids[positions[is_random]] = spec.replacement_ids[
      rng.integers(len(spec.replacement_ids), size=int(is_random.sum()))]
  return input_ids, positions.astype(np.int32), labels.astype(np.int32)


def _word_and_piece_starts(cand: np.ndarray, cand_word_starts: np.ndarray):
  """(word_start, piece_start), bool [c]: where words and runs between specials begin."""
  piece_start = np.concatenate([[True], np.diff(cand) != 1])  # [c] first token after a special
  return cand_word_starts | piece_start, piece_start


def _unit_ids(cand: np.ndarray, cand_word_starts: np.ndarray, unit: str, rng) -> np.ndarray:
  """Unit index ('whole_word' or 'span') of each candidate token (never crossing a special)."""
  word_start, piece_start = _word_and_piece_starts(cand, cand_word_starts)  # [c]
  if unit == 'whole_word':
    return np.cumsum(word_start) - 1
  word_id = np.cumsum(word_start) - 1  # [c]
  num_words = int(word_id[-1]) + 1
  lengths = np.minimum(np.searchsorted(_SPAN_CDF, rng.random(num_words), side='right'),
                       len(_SPAN_CDF) - 1) + 1  # [num_words], in words
  span_starts = np.cumsum(lengths) - lengths
  starts_span = np.zeros(num_words, bool)  # [num_words]
  starts_span[span_starts[span_starts < num_words]] = True
  starts_span[word_id[piece_start]] = True
  return np.cumsum(word_start & starts_span[word_id]) - 1


def _albert_ngrams(cand: np.ndarray, cand_word_starts: np.ndarray, budget: int,
                   rng) -> list[tuple[int, int]]:
  """The n-grams ALBERT's loop picks (module docstring), in order: [first, stop) into cand."""
  word_start, piece_start = _word_and_piece_starts(cand, cand_word_starts)  # [c]
  word_first = np.flatnonzero(word_start)  # [w] each word's first token (index into cand)
  num_words = len(word_first)
  word_stop = np.append(word_first[1:], len(cand))  # [w]
  piece_first_word = np.flatnonzero(piece_start[word_first])  # [pieces]
  piece_stop_word = np.append(piece_first_word[1:], num_words)  # [pieces]
  piece_of_word = np.cumsum(piece_start[word_first]) - 1  # [w]
  n = np.minimum(np.searchsorted(_NGRAM_CDF, rng.random(num_words), side='right'),
                 len(_NGRAM_CDF) - 1) + 1  # [w] drawn for every start, used if visited
  ngram_stop = np.minimum(np.arange(num_words) + n, piece_stop_word[piece_of_word])  # [w], in words
  word_first, word_stop, ngram_stop = word_first.tolist(), word_stop.tolist(), ngram_stop.tolist()
  taken = [False] * num_words
  ngrams = []
  for start in rng.permutation(num_words).tolist():
    stop = ngram_stop[start]
    while stop > start and word_stop[stop - 1] - word_first[start] > budget:
      stop -= 1  # ALBERT's shorter n-gram when the drawn one overflows.
    if stop == start or any(taken[start:stop]):
      continue
    taken[start:stop] = [True] * (stop - start)
    ngrams.append((word_first[start], word_stop[stop - 1]))
    budget -= word_stop[stop - 1] - word_first[start]
    if budget == 0:
      break
  return ngrams


def _greedy_fill(lengths: np.ndarray, budget: int) -> np.ndarray:
  """Indices of units taken in order, skipping any that would overflow the budget (as BERT does)."""
  taken = []
  remaining = budget
  candidates = np.arange(len(lengths))
  while remaining > 0:
    candidates = candidates[lengths[candidates] <= remaining]
    if not len(candidates):
      break
    total = np.cumsum(lengths[candidates])
    count = int(np.searchsorted(total, remaining, side='right'))  # >= 1
    taken.append(candidates[:count])
    remaining -= int(total[count - 1])
    candidates = candidates[count + 1:]  # candidates[count] no longer fits.
  return np.concatenate(taken) if taken else np.zeros(0, np.int64)
