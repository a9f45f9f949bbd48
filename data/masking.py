"""Masked-LM corruption of one example: which tokens to predict and what the model sees.

The tokens to predict are drawn in "units" of consecutive non-special tokens:
- 'token' (BERT): each token alone.
- 'whole_word' (BERT whole-word masking): a word = a `word_starts` token and the
  non-start tokens after it, so a word is never split.
- 'ngram' (ALBERT): n-grams of whole words, p(n) proportional to 1/n, n <= 3.
- 'span' (SpanBERT): spans of whole words, length ~ Geometric(0.2) clipped
  (renormalised) at 10, mean 3.8 words; corrupted as a whole (all [MASK], all
  random or all kept).
N-grams and spans come from a random segmentation of the words into spans with
those lengths (so spans never overlap or cross a [SEP]); units are then taken in
random order, skipping those that no longer fit, until the number of
predictions reaches mask_rate * (number of non-special tokens), stochastically
rounded so that the rate is exact on average. Each predicted token becomes
[MASK] with mask_token_prob, a random non-special token with random_token_prob,
and stays itself otherwise (BERT's 80/10/10).
"""
import dataclasses
import math

import numpy as np

MASKING_UNITS = ('token', 'whole_word', 'ngram', 'span')

# Cumulative distributions of the unit length in words (lengths 1, 2, ...).
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
  budget = min(int(spec.mask_rate * len(cand) + rng.random()), spec.max_predictions)
  if budget == 0:
    return token_ids, np.zeros(0, np.int32), np.zeros(0, np.int32)
  if spec.unit == 'token':
    positions = np.sort(cand[rng.permutation(len(cand))[:budget]])
    unit_of_position = np.arange(len(positions))
    num_units = len(positions)
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


def _unit_ids(cand: np.ndarray, cand_word_starts: np.ndarray, unit: str, rng) -> np.ndarray:
  """Unit index of each candidate token (units are consecutive, never cross a special token)."""
  piece_start = np.concatenate([[True], np.diff(cand) != 1])  # [c] first token after a special
  word_start = cand_word_starts | piece_start  # [c]
  if unit == 'whole_word':
    return np.cumsum(word_start) - 1
  word_id = np.cumsum(word_start) - 1  # [c]
  num_words = int(word_id[-1]) + 1
  cdf = _NGRAM_CDF if unit == 'ngram' else _SPAN_CDF
  lengths = np.minimum(np.searchsorted(cdf, rng.random(num_words), side='right'),
                       len(cdf) - 1) + 1  # [num_words], in words
  span_starts = np.cumsum(lengths) - lengths
  starts_span = np.zeros(num_words, bool)  # [num_words]
  starts_span[span_starts[span_starts < num_words]] = True
  starts_span[word_id[piece_start]] = True
  return np.cumsum(word_start & starts_span[word_id]) - 1


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
