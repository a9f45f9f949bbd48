"""encoders/sentence.py's poolings on the real all-MiniLM-L6-v2 and corpus texts, against
sentence-transformers' Pooling (torch) and, for attention pooling, numpy."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from encoders import st_export
from encoders.data import pairs
from encoders.sentence import ST_POOLING_KEYS, SentenceEncoder
from experiments import embed

TOL = 1e-4
LENGTH = 48
ST_MODES = {'cls': 'cls', 'mean': 'mean', 'max': 'max', 'mean_sqrt_len': 'mean_sqrt_len_tokens',
            'weighted_mean': 'weightedmean'}


@pytest.fixture(scope='module')
def texts():
  """Four test-split extracts cut to different lengths (padding differs per row) and a description."""
  articles = pairs.articles('test')[:4]
  return [a['extract'][:60 * (i + 1)] for i, a in enumerate(articles)] + [articles[0]['description']]


@pytest.fixture(scope='module')
def ours(minilm_dir, texts):
  """(SentenceEncoder params, our inputs) of MiniLM for `texts`."""
  model, params = st_export.load(minilm_dir)
  inputs = pairs.encode(embed.load_tokenizer(minilm_dir, LENGTH), texts, LENGTH,
                        model.config.pad_token_id)
  return model, params, inputs


@pytest.fixture(scope='module')
def transformer(minilm_dir):
  return Transformer(minilm_dir, max_seq_length=LENGTH)


def reference(transformer, texts, mode: str) -> np.ndarray:
  st = SentenceTransformer(modules=[transformer, Pooling(384, pooling_mode=mode)], device='cpu')
  return st.encode(texts, convert_to_numpy=True, batch_size=len(texts))


@pytest.mark.parametrize('pooling', sorted(ST_POOLING_KEYS))
def test_pooling_matches_sentence_transformers(pooling, ours, texts, transformer, record_figure):
  model, params, inputs = ours
  ours_vectors = model.clone(pooling=pooling).apply({'params': params}, inputs['input_ids'],
                                                    inputs['segment_ids'])
  theirs = reference(transformer, texts, ST_MODES[pooling])
  diff = float(np.max(np.abs(np.asarray(ours_vectors) - theirs)))
  record_figure(f'{pooling} pooled', diff, f'{TOL}')
  assert diff <= TOL, diff


def test_attention_pooling_starts_as_mean_and_weights_tokens_by_softmax(ours, texts, transformer):
  model, params, inputs = ours
  attention = model.clone(pooling='attention')
  fresh = nn.unbox(attention.init(jax.random.key(0), inputs['input_ids'][:1])['params'])
  assert not np.any(fresh['attention_pooling']['query'])  # Zero: uniform weights.
  params = dict(params, attention_pooling=fresh['attention_pooling'])
  at_init = attention.apply({'params': params}, inputs['input_ids'], inputs['segment_ids'])
  np.testing.assert_allclose(at_init, reference(transformer, texts, 'mean'), atol=TOL)

  query = np.random.default_rng(0).normal(size=384).astype(np.float32)
  params['attention_pooling'] = {'query': query}
  pooled = np.asarray(attention.apply({'params': params}, inputs['input_ids'], inputs['segment_ids']))
  st = SentenceTransformer(modules=[transformer, Pooling(384)], device='cpu')
  tokens = st.encode(texts, output_value='token_embeddings', batch_size=len(texts))  # Unpadded.
  for row, token_states in enumerate(tokens):
    states = token_states.numpy().astype(np.float64)  # [tokens, 384]
    scores = states @ query / np.sqrt(384)
    weights = np.exp(scores - scores.max())
    expected = (weights / weights.sum()) @ states
    np.testing.assert_allclose(pooled[row], expected, atol=TOL)
  assert np.max(np.abs(pooled - at_init)) > 1e-2  # The query changes the weighting.


def test_sentence_encoder_refuses_unknown_pooling(ours):
  model, params, inputs = ours
  with pytest.raises(ValueError, match='pooling=.lasttoken.'):
    SentenceEncoder(model.config, 'lasttoken').apply({'params': params}, inputs['input_ids'])
