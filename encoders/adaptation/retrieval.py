"""Retrieval with sentence embeddings: embed texts, rank documents, and score the ranking.

`Embedder` turns texts into unit vectors with a SentenceEncoder (one compiled shape per
length bucket). `relevance` turns held-out (query, document) pairs into unique queries and
the documents relevant to each (several articles can share a description); `metrics` scores
cosine rankings with the usual binary-relevance measures:
- nDCG@k: sum over relevant documents ranked r <= k of 1 / log2(r + 1), divided by the same
  sum for the ideal ranking (min(k, relevant) documents on top);
- MRR@k: 1 / rank of the first relevant document, 0 when none is in the top k;
- recall@k: the fraction of a query's relevant documents ranked in the top k.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
import tqdm

from encoders.data import pairs as pairs_lib


class Embedder:
  """texts -> L2-normalised embeddings [texts, hidden] of `model` (a SentenceEncoder) at `params`.

  `tokenizer` adds [CLS]/[SEP] and truncates to `max_length` (encoders/data/pairs.py's
  `truncating`). Texts are sorted by length so that similar lengths share a batch, padded to the
  bucket of 32, 64 or max_length tokens that fits.
  """

  def __init__(self, model: nn.Module, params, tokenizer: tokenizers.Tokenizer, max_length: int,
               batch_size: int):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.pad_id = model.config.pad_token_id
    self.buckets = sorted({b for b in (32, 64, max_length) if b <= max_length})
    self.batch_size = batch_size
    self._embed = jax.jit(self._embed_batch)

  def _embed_batch(self, params, input_ids, segment_ids):
    pooled = self.model.apply({'params': params}, input_ids, segment_ids)  # [batch, hidden]
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  def __call__(self, texts: list[str], progress: bool = False) -> np.ndarray:
    """-> [len(texts), hidden] float32 unit vectors; `progress` shows a bar of texts embedded."""
    encodings = self.tokenizer.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encodings], kind='stable')
    embeddings = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
    bar = tqdm.tqdm(total=len(texts), unit='text', desc='embedding', disable=not progress,
                    dynamic_ncols=True)
    for start in range(0, len(texts), self.batch_size):
      rows = order[start:start + self.batch_size]
      longest = max(len(encodings[i].ids) for i in rows)
      length = next(b for b in self.buckets if b >= longest)
      input_ids = np.full((self.batch_size, length), self.pad_id, np.int32)
      segment_ids = np.zeros_like(input_ids)  # 0 at padding and in the rows that fill the batch.
      for row, i in enumerate(rows):
        ids = encodings[i].ids
        input_ids[row, :len(ids)], segment_ids[row, :len(ids)] = ids, 1
      embeddings[rows] = np.asarray(self._embed(self.params, input_ids, segment_ids))[:len(rows)]
      bar.update(len(rows))
    bar.close()
    return embeddings


def relevance(pairs: pairs_lib.Pairs, titles: list[str]) -> tuple[list[str], list[set[int]]]:
  """(unique queries of `pairs`, for each the indices in `titles` of the articles it pairs with).

  Pairs whose article is not among `titles` are left out.
  """
  position = {title: i for i, title in enumerate(titles)}
  relevant = {}
  for query, title in zip(pairs.queries, pairs.titles):
    if title in position:
      relevant.setdefault(query, set()).add(position[title])
  return list(relevant), list(relevant.values())


def metrics(query_vectors: np.ndarray, document_vectors: np.ndarray, relevant: list[set[int]],
            ks: tuple[int, ...] = (1, 5, 10, 100)) -> dict[str, float]:
  """nDCG@10, MRR@10 and recall@k (k in `ks`) of cosine rankings, averaged over the queries.

  query_vectors [queries, hidden] and document_vectors [documents, hidden] are unit vectors;
  relevant[q] holds the indices of query q's relevant documents (at least one).
  """
  scores = query_vectors @ document_vectors.T  # [queries, documents]
  depth = min(max(ks + (10,)), scores.shape[1])
  top = np.argsort(-scores, axis=1, kind='stable')[:, :depth]  # [queries, depth]
  hits = np.array([[d in rel for d in row] for row, rel in zip(top, relevant)], np.float64)
  discounts = 1.0 / np.log2(np.arange(2, depth + 2))  # Rank r (1-based) -> 1 / log2(r + 1).
  dcg = hits[:, :10] @ discounts[:10]
  ideal = np.array([discounts[:min(len(rel), 10)].sum() for rel in relevant])
  first = np.where(hits[:, :10].any(axis=1), hits[:, :10].argmax(axis=1) + 1, np.inf)
  counts = np.array([len(rel) for rel in relevant], np.float64)
  result = {'ndcg@10': float(np.mean(dcg / ideal)), 'mrr@10': float(np.mean(1.0 / first))}
  for k in ks:
    result[f'recall@{k}'] = float(np.mean(hits[:, :k].sum(axis=1) / counts))
  result['queries'] = len(relevant)
  result['documents'] = int(document_vectors.shape[0])
  return result


def evaluate(embedder: Embedder, held_out: pairs_lib.Pairs, articles: list[dict],
             progress: bool = False) -> dict[str, float]:
  """Retrieval metrics of `held_out` pairs' queries over the extracts of `articles`."""
  queries, relevant = relevance(held_out, [a['title'] for a in articles])
  if not queries:
    raise ValueError('None of the held-out pairs comes from an article of the index.')
  documents = embedder([a['extract'] for a in articles], progress=progress)
  return metrics(embedder(queries), documents, relevant)
