"""(query, document) pairs from the embedded Wikipedia summaries, for sentence-embedding training.

Kinds of pair (`config.data.pairs`), each from one article:
- 'description': its short description ('1875 opera by Georges Bizet') -> its extract;
- 'title': its title -> its extract;
- 'sentences': one sentence of its extract -> another sentence of the same extract.

An article's pairs go to the split of its title's hash (encoders/data/corpus.py's `split_of`, the
split pretraining uses): training pairs come from 'train', model selection from 'validation'
and the reported retrieval from 'test', so no article, and no pair, is in two of them.
Optional hard negatives ('topic') are the extracts of other articles of the same topic and split.
"""
import dataclasses
import re

import numpy as np
import tokenizers

from encoders.data import corpus

PAIR_KINDS = ('description', 'title', 'sentences')
HARD_NEGATIVES = ('none', 'topic')
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z0-9"\'(])')


@dataclasses.dataclass(frozen=True)
class Pairs:
  queries: list[str]
  documents: list[str]  # documents[i] is the positive of queries[i].
  titles: list[str]  # The article pair i comes from.
  negatives: list[list[str]]  # Hard-negative documents of pair i (empty lists without them).

  def __len__(self) -> int:
    return len(self.queries)


def articles(split: str) -> list[dict]:
  """The English articles (non-empty extract) whose title hashes to `split`, in corpus order."""
  if split not in corpus.SPLITS:
    raise ValueError(f'split={split!r}: choose one of {corpus.SPLITS}.')
  return [a for a in corpus.wiki_offline_articles('en').values()
          if a['extract'].strip() and corpus.split_of(a['title']) == split]


def evenly_spaced(items: list, count: int) -> list:
  """`count` items (0: all) at evenly spaced positions of `items`, first and last included."""
  count = len(items) if count <= 0 else min(count, len(items))
  return [items[i] for i in np.linspace(0, len(items) - 1, count).astype(int)]


def sentences(text: str) -> list[str]:
  """A text cut after '.', '!' or '?' followed by a space and a capital, digit or quote."""
  return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def make_pairs(kind: str, split: str, seed: int = 0, hard_negatives: str = 'none',
               num_negatives: int = 1) -> Pairs:
  """The `kind` pairs of the articles of `split`; `seed` draws sentences and negatives."""
  if kind not in PAIR_KINDS:
    raise ValueError(f'pairs={kind!r}: choose one of {PAIR_KINDS}.')
  if hard_negatives not in HARD_NEGATIVES:
    raise ValueError(f'hard_negatives={hard_negatives!r}: choose one of {HARD_NEGATIVES}.')
  rng = np.random.default_rng(seed)
  queries, documents, chosen = [], [], []
  for article in articles(split):
    if kind == 'sentences':
      parts = sentences(article['extract'])
      if len(parts) < 2:
        continue
      first, second = rng.choice(len(parts), 2, replace=False)
      query, document = parts[first], parts[second]
    else:
      query, document = (article.get('description') or '').strip(), article['extract']
      if kind == 'title':
        query = article['title']
      if not query:
        continue
    queries.append(query)
    documents.append(document)
    chosen.append(article)
  negatives = [[] for _ in chosen]
  if hard_negatives == 'topic':
    negatives = _topic_negatives(chosen, num_negatives, rng)
  return Pairs(queries, documents, [a['title'] for a in chosen], negatives)


def _topic_negatives(chosen: list[dict], count: int, rng: np.random.Generator) -> list[list[str]]:
  """For each article, the extracts of `count` other articles of its topic (of `chosen`)."""
  by_topic = {}
  for i, article in enumerate(chosen):
    by_topic.setdefault(article['topic'], []).append(i)
  negatives = []
  for i, article in enumerate(chosen):
    others = [j for j in by_topic[article['topic']] if j != i]
    if len(others) < count:
      raise ValueError(f'Topic {article["topic"]!r} has {len(others) + 1} articles in this split, '
                       f'too few for {count} hard negatives each.')
    negatives.append([chosen[j]['extract'] for j in rng.choice(others, count, replace=False)])
  return negatives


def truncating(backend: tokenizers.Tokenizer, max_length: int) -> tokenizers.Tokenizer:
  """A copy of `backend` that adds its special tokens ([CLS] .. [SEP]) and truncates to max_length."""
  tokenizer = tokenizers.Tokenizer.from_str(backend.to_str())
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length)
  return tokenizer


def encode(tokenizer: tokenizers.Tokenizer, texts: list[str], length: int,
           pad_id: int) -> dict[str, np.ndarray]:
  """Texts -> {'input_ids', 'segment_ids'} [len(texts), length] int32, right-padded.

  `tokenizer` comes from `truncating(..., length)`; segment_ids is 1 on a text's tokens and
  0 on padding (the batch contract: padding is invisible to attention and pooling).
  """
  input_ids = np.full((len(texts), length), pad_id, np.int32)
  segment_ids = np.zeros((len(texts), length), np.int32)
  for row, encoding in enumerate(tokenizer.encode_batch(texts)):
    input_ids[row, :len(encoding.ids)] = encoding.ids
    segment_ids[row, :len(encoding.ids)] = 1
  return dict(input_ids=input_ids, segment_ids=segment_ids)


def pair_arrays(pairs: Pairs, backend: tokenizers.Tokenizer, query_length: int,
                document_length: int, pad_id: int) -> dict[str, np.ndarray]:
  """The model inputs of `pairs`: query_{input,segment}_ids [pairs, query_length],
  document_* [pairs, document_length] and, with hard negatives, negative_* [pairs, negatives,
  document_length]."""
  arrays = {}
  for role, texts, length in (('query', pairs.queries, query_length),
                              ('document', pairs.documents, document_length)):
    encoded = encode(truncating(backend, length), texts, length, pad_id)
    arrays.update({f'{role}_{name}': value for name, value in encoded.items()})
  count = len(pairs.negatives[0]) if pairs.negatives else 0
  if count:
    flat = [text for negatives in pairs.negatives for text in negatives]
    encoded = encode(truncating(backend, document_length), flat, document_length, pad_id)
    arrays.update({f'negative_{name}': value.reshape(len(pairs), count, document_length)
                   for name, value in encoded.items()})
  return arrays
