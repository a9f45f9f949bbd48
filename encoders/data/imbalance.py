"""Class imbalance in fine-tuning data: long-tailed subsamples and class-balanced sampling.

- `long_tailed`: the long-tailed profile of Cui et al. 2019 ("Class-Balanced Loss Based on
  Effective Number of Samples", CIFAR-LT): the classes ranked by their count, the k-th of C keeps
  n_max * ratio^(-k / (C - 1)) records, so the largest keeps all of its records and the smallest
  1 / ratio of the largest's (never more than it has, never fewer than one).
- `balanced_stream`: the row order of class-balanced sampling ("square-root"/"class-aware"
  sampling with exponent 1, Shen et al. 2016): every draw picks a class uniformly among those
  present, then a row of that class uniformly, with replacement.
"""
import numpy as np

from encoders.config import ConfigError


def long_tailed(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
  """Sorted indices of a long-tailed subsample of `labels` with n_max / n_min = `ratio`."""
  if ratio < 1:
    raise ConfigError(f'config.data.long_tail_ratio={ratio}: must be >= 1 (0 turns it off).')
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  by_count = classes[np.argsort(-counts, kind='stable')]
  n_max = counts.max()
  rng = np.random.default_rng(seed)
  kept = []
  for rank, label in enumerate(by_count):
    members = np.flatnonzero(labels == label)
    keep = n_max * ratio ** (-rank / max(len(classes) - 1, 1))
    keep = int(np.clip(np.round(keep), 1, len(members)))
    kept.append(rng.choice(members, keep, replace=False))
  return np.sort(np.concatenate(kept))


def balanced_stream(labels: np.ndarray, num_draws: int, rng: np.random.Generator) -> np.ndarray:
  """`num_draws` row indices: a uniform class, then a uniform row of it (with replacement)."""
  labels = np.asarray(labels)
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  # P(row) = 1 / (classes * count of its class): every class gets 1 / classes of the draws.
  probability = 1.0 / (len(classes) * counts[inverse])
  return rng.choice(len(labels), num_draws, replace=True, p=probability / probability.sum())
