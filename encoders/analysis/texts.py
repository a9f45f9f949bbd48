"""Held-out text from the embedded corpus: articles of one title-hash split, with their labels."""
import dataclasses
import re

import numpy as np

from encoders.data import pairs


@dataclasses.dataclass
class Articles:
  titles: list[str]
  texts: list[str]  # Extracts.
  topics: np.ndarray  # int32 [articles]: index into topic_names.
  topic_names: list[str]


def articles(split: str, count: int = 0) -> Articles:
  """`count` (0: all) articles of `split` (encoders/data/corpus.py's title-hash splits), evenly
  spaced over the split (which is ordered by topic); topic ids index the sorted names of all
  topics."""
  chosen = pairs.evenly_spaced(pairs.articles(split), count)
  names = sorted({a['topic'] for split_name in ('train', 'validation', 'test')
                  for a in pairs.articles(split_name)})
  return Articles([a['title'] for a in chosen], [a['extract'] for a in chosen],
                  np.asarray([names.index(a['topic']) for a in chosen], np.int32), names)


def title_spans(title: str, text: str) -> list[tuple[int, int]]:
  """Character spans of `text` where the title is mentioned, case-insensitively.

  A mention is the whole title, or (titles of several words) any of its words of 4+
  letters standing as a word: 'Albert Einstein' marks 'Einstein' in 'Einstein was born'.
  A parenthesised qualifier ('Mercury (planet)') is not part of the title.
  """
  title = re.sub(r'\s*\(.*\)$', '', title).strip()
  words = [w for w in re.findall(r'\w+', title) if len(w) >= 4]
  patterns = [re.escape(title)] + [rf'\b{re.escape(w)}\b' for w in words]
  spans = []
  for pattern in patterns:
    spans += [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
  return spans


def in_spans(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
  """bool [tokens]: token (start, end) offsets [tokens, 2] overlapping one of the spans."""
  starts, ends = offsets[:, 0], offsets[:, 1]
  inside = np.zeros(len(offsets), bool)
  for start, end in spans:
    inside |= (starts < end) & (ends > start) & (ends > starts)
  return inside
