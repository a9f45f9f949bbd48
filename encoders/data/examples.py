"""Input formats: cuts a tokenized corpus into examples (token ranges, no copies).

An example is a list of "pieces": contiguous token ranges of the corpus, each
followed by [SEP] in the row ([CLS] piece [SEP] piece [SEP] ...), each with a
token type (0 = sentence A, 1 = sentence B). Formats, with their papers:

- 'full_sentences' (RoBERTa): contiguous sentences up to the length; at a
  document boundary the next document starts a new piece (an extra [SEP]).
- 'doc_sentences' (RoBERTa): the same, but never crosses a document boundary, so
  document tails are short (the pipeline packs them).
- 'segment_pair_nsp' (BERT `create_instances_from_document`): A = the first
  sentences of a chunk, B = the rest of it, or, half the time, sentences from a
  random other document (nsp_label 1).
- 'sentence_pair_nsp' (RoBERTa ablation): the same with A and B single sentences.
- 'sop' (ALBERT): two consecutive segments of one document, swapped half the
  time (label 1). A chunk of a single segment is cut in two at a random token
  (ALBERT's code would take a random other document there, which is not SOP).

BERT's `short_seq_prob` draws a shorter target length for that fraction of
examples. Long documents are split into several examples, never dropped; a
sentence longer than a row (or, for pairs, than half a row) is split into
pieces. Pair formats truncate an over-long pair like BERT's `truncate_seq_pair`.
"""
import dataclasses

import numpy as np

SINGLE_SEGMENT_FORMATS = ('full_sentences', 'doc_sentences')
PAIR_FORMATS = ('segment_pair_nsp', 'sentence_pair_nsp', 'sop')
INPUT_FORMATS = SINGLE_SEGMENT_FORMATS + PAIR_FORMATS


@dataclasses.dataclass(frozen=True)
class ExampleIndex:
  """Examples as token ranges; example i owns pieces piece_offsets[i]:piece_offsets[i + 1]."""
  piece_offsets: np.ndarray  # int64 [num_examples + 1]
  piece_starts: np.ndarray   # int64 [num_pieces]: token offsets into the corpus
  piece_ends: np.ndarray     # int64 [num_pieces]
  piece_types: np.ndarray    # int32 [num_pieces]: token type id of the piece
  nsp_labels: np.ndarray | None  # int32 [num_examples] for pair formats
  stats: dict  # Counts of what construction split or skipped.

  def __len__(self) -> int:
    return len(self.piece_offsets) - 1

  def num_tokens(self) -> np.ndarray:
    """Row length of each example: [CLS] + pieces + one [SEP] per piece."""
    cumulative = np.concatenate([[0], np.cumsum(self.piece_ends - self.piece_starts + 1)])
    return cumulative[self.piece_offsets[1:]] - cumulative[self.piece_offsets[:-1]] + 1


class _Builder:
  """Accumulates examples into flat arrays."""

  def __init__(self):
    self.offsets, self.starts, self.ends, self.types, self.labels = [0], [], [], [], []

  def add(self, pieces, label=None):
    for start, end, token_type in pieces:
      self.starts.append(start)
      self.ends.append(end)
      self.types.append(token_type)
    self.offsets.append(len(self.starts))
    if label is not None:
      self.labels.append(label)

  def build(self, stats, with_labels) -> ExampleIndex:
    return ExampleIndex(
        piece_offsets=np.asarray(self.offsets, np.int64),
        piece_starts=np.asarray(self.starts, np.int64),
        piece_ends=np.asarray(self.ends, np.int64),
        piece_types=np.asarray(self.types, np.int32),
        nsp_labels=np.asarray(self.labels, np.int32) if with_labels else None,
        stats=stats)


def build_examples(corpus, input_format: str, seq_length: int,
                   short_seq_prob: float, seed: int) -> ExampleIndex:
  """Cuts `corpus` (a data.tokenized.TokenizedCorpus) into examples of one format."""
  rng = np.random.default_rng([seed, 0])
  if input_format in SINGLE_SEGMENT_FORMATS:
    return _single_segment_examples(corpus, seq_length, short_seq_prob,
                                    input_format == 'full_sentences', rng)
  if input_format in PAIR_FORMATS:
    return _pair_examples(corpus, input_format, seq_length, short_seq_prob, rng)
  raise ValueError(f'data.input_format={input_format!r}: must be one of {INPUT_FORMATS}.')


def _document_sentences(corpus, doc):
  """(start, end) token ranges of the non-empty sentences of one document."""
  first, last = corpus.document_offsets[doc], corpus.document_offsets[doc + 1]
  bounds = corpus.sentence_offsets[first:last + 1]
  return [(int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def _draw_target(rng, max_tokens, short_seq_prob, min_tokens):
  if short_seq_prob > 0 and rng.random() < short_seq_prob:
    return int(rng.integers(min_tokens, max_tokens + 1))
  return max_tokens


def _single_segment_examples(corpus, seq_length, short_seq_prob, cross_documents, rng):
  max_content = seq_length - 2  # [CLS] ... [SEP]
  builder = _Builder()
  stats = dict(split_sentences=0, empty_sentences=0)
  pieces = []  # [start, end, doc] of the example being filled
  used = 0  # Content tokens plus the extra [SEP]s between pieces.
  target = _draw_target(rng, max_content, short_seq_prob, 1)

  def flush():
    nonlocal pieces, used, target
    if pieces:
      builder.add([(s, e, 0) for s, e, _ in pieces])
    pieces, used = [], 0
    target = _draw_target(rng, max_content, short_seq_prob, 1)

  num_docs = len(corpus.document_offsets) - 1
  for doc in range(num_docs):
    if not cross_documents:
      flush()
    sentences = _document_sentences(corpus, doc)
    num_sentences = corpus.document_offsets[doc + 1] - corpus.document_offsets[doc]
    stats['empty_sentences'] += int(num_sentences) - len(sentences)
    for start, end in sentences:
      was_split = False
      while start < end:
        continues = bool(pieces) and pieces[-1][2] == doc
        extra_sep = 0 if (continues or not pieces) else 1
        room = target - used - extra_sep
        if end - start <= room:
          take = end - start
        elif pieces:
          flush()
          continue
        else:  # A sentence longer than the whole target: split it.
          take, was_split = room, True
        if continues:
          pieces[-1][1] = start + take
        else:
          pieces.append([start, start + take, doc])
        used += take + extra_sep
        start += take
        if start < end:
          flush()
      stats['split_sentences'] += was_split
  flush()
  return builder.build(stats, with_labels=False)


def _split_long(sentences, max_len):
  """Splits sentences longer than max_len into consecutive pieces."""
  out, num_split = [], 0
  for start, end in sentences:
    num_split += end - start > max_len
    out.extend((s, min(s + max_len, end)) for s in range(start, end, max_len))
  return out, num_split


def _truncate_pair(a, b, max_tokens, rng):
  """BERT's truncate_seq_pair: trims the longer of A/B, each token from the front or back at random."""
  (a0, a1), (b0, b1) = a, b
  len_a, len_b = a1 - a0, b1 - b0
  excess = len_a + len_b - max_tokens
  if excess <= 0:
    return a, b
  if len_a > len_b + excess:
    new_a, new_b = len_a - excess, len_b
  elif len_b >= len_a + excess:
    new_a, new_b = len_a, len_b - excess
  else:  # Both get trimmed to (about) half; ties trim B first.
    new_a, new_b = (max_tokens + 1) // 2, max_tokens // 2
  trimmed = []
  for (start, end), new_len in (((a0, a1), new_a), ((b0, b1), new_b)):
    cut = (end - start) - new_len
    front = int(rng.binomial(cut, 0.5)) if cut else 0
    trimmed.append((start + front, start + front + new_len))
  return trimmed[0], trimmed[1]


def _pair_examples(corpus, input_format, seq_length, short_seq_prob, rng):
  """BERT's create_instances_from_document, with ALBERT's SOP and RoBERTa's sentence pairs."""
  max_tokens = seq_length - 3  # [CLS] A [SEP] B [SEP]
  builder = _Builder()
  stats = dict(split_sentences=0, empty_sentences=0, skipped_chunks=0,
               truncated_pairs=0, forced_random_next=0)
  num_docs = len(corpus.document_offsets) - 1
  documents = []
  for doc in range(num_docs):
    sentences = _document_sentences(corpus, doc)
    num_sentences = corpus.document_offsets[doc + 1] - corpus.document_offsets[doc]
    stats['empty_sentences'] += int(num_sentences) - len(sentences)
    segments, num_split = _split_long(sentences, max(max_tokens // 2, 1))
    stats['split_sentences'] += num_split
    documents.append(segments)
  sentence_pairs = input_format == 'sentence_pair_nsp'

  for doc, segments in enumerate(documents):
    target = _draw_target(rng, max_tokens, short_seq_prob, 2)
    chunk, chunk_len, i = [], 0, 0
    while i < len(segments):
      chunk.append(segments[i])
      chunk_len += segments[i][1] - segments[i][0]
      full = len(chunk) == 2 if sentence_pairs else chunk_len >= target
      if i == len(segments) - 1 or full:
        a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
        a = (chunk[0][0], chunk[a_end - 1][1])
        label = 0
        if input_format == 'sop':
          if len(chunk) >= 2:
            b = (chunk[a_end][0], chunk[-1][1])
          elif chunk_len >= 2:  # One segment: cut it into two consecutive halves.
            cut = a[0] + int(rng.integers(1, chunk_len))
            a, b = (a[0], cut), (cut, a[1])
          else:
            stats['skipped_chunks'] += 1
            chunk, chunk_len, i = [], 0, i + 1
            continue
          if rng.random() < 0.5:
            a, b, label = b, a, 1
        elif len(chunk) == 1 or rng.random() < 0.5:
          stats['forced_random_next'] += len(chunk) == 1
          label = 1
          b_length = 1 if sentence_pairs else target - (a[1] - a[0])  # One sentence, or the rest.
          b = _random_segments(documents, doc, b_length, rng)
          i -= len(chunk) - a_end  # Put the unused segments back.
        else:
          b = (chunk[a_end][0], chunk[-1][1])
        if (a[1] - a[0]) + (b[1] - b[0]) > max_tokens:
          stats['truncated_pairs'] += 1
          a, b = _truncate_pair(a, b, max_tokens, rng)
        builder.add([(a[0], a[1], 0), (b[0], b[1], 1)], label)
        chunk, chunk_len = [], 0
        target = _draw_target(rng, max_tokens, short_seq_prob, 2)
      i += 1
  stats['label_1'] = sum(builder.labels)  # Random next / swapped pairs.
  return builder.build(stats, with_labels=True)


def _random_segments(documents, doc, target_length, rng):
  """Token range of consecutive segments of a random other document (BERT: 10 tries)."""
  for _ in range(10):
    other = int(rng.integers(len(documents)))
    if other != doc and documents[other]:
      break
  segments = documents[other] or documents[doc]
  first = int(rng.integers(len(segments)))
  last = first
  length = segments[first][1] - segments[first][0]
  while length < max(target_length, 1) and last + 1 < len(segments):
    last += 1
    length += segments[last][1] - segments[last][0]
  return segments[first][0], segments[last][1]
