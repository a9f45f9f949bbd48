"""The bi-encoder objective: MultipleNegativesRankingLoss over in-batch (and hard) negatives.

Each query's positive is its own document; every other document of the global batch, and
every hard negative, is a negative (Henderson et al. 2017; sentence-transformers'
MultipleNegativesRankingLoss): cross-entropy over scale x cosine similarities, scale 20.
`symmetric` averages it with the documents -> queries direction over the positives
(MultipleNegativesSymmetricRankingLoss).

Cached large batches (GradCache, Gao et al. 2021): the loss needs every embedding of the
batch, but not every activation at once. With `chunk_size`, the rows are embedded chunk by
chunk in a `lax.scan` whose body is `jax.checkpoint`ed: the forward pass keeps only the
embeddings (no activations), the loss gives the gradient with respect to the embeddings, and
the backward pass re-runs each chunk's forward and back-propagates that chunk's embedding
gradient. The step's memory is one chunk's activations plus the batch's embeddings, and the
gradient is the full batch's: a bigger batch adds negatives, which plain gradient accumulation
over micro-batches (each with its own in-batch negatives) does not.

It follows encoders/training/objectives.py's interface (init, denominators, loss), so training/
trainer.py's `train_step` runs it as it is (with grad_accum_steps=1: the chunking replaces it).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

ROLES = ('query', 'document', 'negative')


def cosine_scores(queries: jax.Array, documents: jax.Array, scale: float) -> jax.Array:
  """scale x cosine similarity: queries [q, hidden], documents [d, hidden] -> [q, d] f32."""
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return scale * unit(queries.astype(jnp.float32)) @ unit(documents.astype(jnp.float32)).T


def ranking_loss(queries: jax.Array, documents: jax.Array, negatives: jax.Array | None,
                 scale: float = 20.0, symmetric: bool = False) -> tuple[jax.Array, jax.Array]:
  """(mean loss, correct count) of MultipleNegativesRankingLoss.

  queries and documents [batch, hidden] (row i of each is a pair); negatives [n, hidden] or None.
  Query i ranks all documents and negatives, its positive is document i; `symmetric` adds
  document i ranking all queries (positive: query i) and averages the two directions.
  The correct count is the queries whose positive scores highest.
  """
  candidates = documents if negatives is None else jnp.concatenate([documents, negatives])
  scores = cosine_scores(queries, candidates, scale)  # [batch, batch + n]
  labels = jnp.arange(queries.shape[0])
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(scores, labels))
  if symmetric:
    backward = optax.softmax_cross_entropy_with_integer_labels(scores[:, :queries.shape[0]].T, labels)
    loss = (loss + jnp.mean(backward)) / 2
  correct = jnp.sum(jnp.argmax(scores, axis=-1) == labels).astype(jnp.float32)
  return loss, correct


def by_chunks(x: jax.Array, num_chunks: int) -> jax.Array:
  """[rows, ...] -> [num_chunks, rows / num_chunks, ...]; chunk j holds rows j::num_chunks, so each
  chunk spreads over the batch's data-parallel shards as the batch does."""
  x = x.reshape(x.shape[0] // num_chunks, num_chunks, *x.shape[1:]).swapaxes(0, 1)
  return nn.with_logical_constraint(x, (None, 'batch') + (None,) * (x.ndim - 2))


def from_chunks(x: jax.Array) -> jax.Array:
  """The inverse of `by_chunks`: [num_chunks, chunk, ...] -> [rows, ...] in the original order."""
  return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class MultipleNegativesRanking:
  """A SentenceEncoder trained on batches of {query,document[,negative]}_{input,segment}_ids.

  query_* and document_* are [batch, length]; negative_* [batch, negatives, length] (optional).
  `chunk_size` (0: off) embeds that many rows at a time (GradCache, module docstring).
  """

  def __init__(self, model: nn.Module, scale: float = 20.0, symmetric: bool = False,
               chunk_size: int = 0):
    self.model = model
    self.scale = scale
    self.symmetric = symmetric
    self.chunk_size = chunk_size

  def init(self, rng, batch) -> Any:
    return self.model.init(rng, batch['query_input_ids'], batch['query_segment_ids'])['params']

  def denominators(self, batch) -> dict[str, jax.Array]:
    del batch  # The loss is a mean over the batch's queries: nothing to share between micro-batches.
    return {}

  def embed(self, params, input_ids, segment_ids, rng=None, deterministic: bool = True):
    """input_ids, segment_ids [rows, length] -> [rows, hidden]; in chunks when chunk_size < rows."""
    def encode(params, input_ids, segment_ids, key):
      return self.model.apply({'params': params}, input_ids, segment_ids,
                              deterministic=deterministic,
                              rngs=None if deterministic else {'dropout': key})

    rows = input_ids.shape[0]
    if not self.chunk_size or self.chunk_size >= rows:
      return encode(params, input_ids, segment_ids, rng)
    if rows % self.chunk_size:
      raise ValueError(f'chunk_size={self.chunk_size} does not divide the {rows} rows of a batch.')
    num_chunks = rows // self.chunk_size
    # Saves nothing inside a chunk: its backward pass recomputes the chunk's forward.
    encode_chunk = jax.checkpoint(encode, prevent_cse=False)

    def body(carry, chunk):
      ids, segments, index = chunk
      key = None if deterministic else jax.random.fold_in(rng, index)
      return carry, encode_chunk(params, ids, segments, key)

    _, pooled = jax.lax.scan(body, None, (by_chunks(input_ids, num_chunks),
                                          by_chunks(segment_ids, num_chunks),
                                          jnp.arange(num_chunks)))
    return from_chunks(pooled)  # [rows, hidden]

  def embeddings(self, params, batch, rng=None, deterministic: bool = True) -> dict[str, jax.Array]:
    """{role: [rows, hidden]} for the roles the batch has (negatives flattened to [batch * n, hidden])."""
    result = {}
    for index, role in enumerate(ROLES):
      if f'{role}_input_ids' not in batch:
        continue
      ids, segments = batch[f'{role}_input_ids'], batch[f'{role}_segment_ids']
      ids, segments = (x.reshape(-1, x.shape[-1]) for x in (ids, segments))
      key = None if deterministic else jax.random.fold_in(rng, index)
      result[role] = self.embed(params, ids, segments, key, deterministic)
    return result

  def loss(self, params, batch, rng, denominators, deterministic: bool = False, frozen=None):
    """(loss, {'ranking_loss', 'in_batch_accuracy'} sums) of one batch."""
    del denominators, frozen  # No shared normaliser, no frozen variables.
    vectors = self.embeddings(params, batch, rng, deterministic)
    loss, correct = ranking_loss(vectors['query'], vectors['document'], vectors.get('negative'),
                                 self.scale, self.symmetric)
    count = jnp.asarray(batch['query_input_ids'].shape[0], jnp.float32)
    return loss, {'ranking_loss': (loss * count, count), 'in_batch_accuracy': (correct, count)}
