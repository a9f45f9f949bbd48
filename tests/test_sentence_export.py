"""encoders/st_export.py: sentence-transformers loads our exports and encodes corpus texts to our
vectors (<= 1e-4), for every exportable pooling, BERT with our own WordPiece vocabulary and
RoBERTa with our byte-level BPE, and MiniLM's real weights; and it reads directories that
sentence-transformers itself wrote."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

from encoders import families, st_export
from encoders.config import ConfigError, EncoderConfig
from encoders.data import pairs
from encoders.data import tokenizer as tokenizer_lib
from encoders.sentence import ST_POOLING_KEYS, SentenceEncoder
from experiments import embed

TOL = 1e-4
LENGTH = 64


@pytest.fixture(scope='module')
def texts():
  articles = pairs.articles('test')
  return [a['extract'] for a in articles[:5]] + [a['description'] for a in articles[5:8]]


def tiny_model(family: str, tokenizer: tokenizer_lib.Tokenizer, pooling: str):
  """A random, perturbed 2-layer SentenceEncoder of `family` for `tokenizer` (RoBERTa numbers positions from pad + 1)."""
  roberta = family == 'roberta'
  config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=LENGTH + 2,
                         type_vocab_size=1 if roberta else 2, pad_token_id=tokenizer.pad_id,
                         position_offset=tokenizer.pad_id + 1 if roberta else 0,
                         layer_norm_eps=1e-5 if roberta else 1e-12)
  model = SentenceEncoder(config, pooling, families.get(family).models.Encoder)
  params = jax.device_get(nn.unbox(model.init(jax.random.key(0), np.ones((1, 8), np.int32))['params']))
  rng = np.random.default_rng(0)  # Noise on every weight: attention mixes tokens, even into [CLS].
  return model, jax.tree.map(lambda p: p + rng.normal(0, 0.2, p.shape).astype(p.dtype), params)


@pytest.fixture(scope='module')
def trained_tokenizers(texts):
  corpus_texts = [a['extract'] for a in pairs.articles('validation')]
  return {kind: tokenizer_lib.train(kind, corpus_texts, 1500, lowercase=True)
          for kind in ('wordpiece', 'bpe')}


def encode_both(directory: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  ours = embed.Embedder(directory, LENGTH, batch_size=4)(texts)
  theirs = SentenceTransformer(directory, device='cpu').encode(texts, convert_to_numpy=True)
  assert np.min(ours @ ours.T) < 0.95  # The texts get different vectors: the comparison has teeth.
  return ours, theirs


@pytest.mark.parametrize('pooling', sorted(ST_POOLING_KEYS))
def test_sentence_transformers_encodes_our_bert_export(pooling, trained_tokenizers, texts, tmp_path,
                                                       record_figure):
  tokenizer = trained_tokenizers['wordpiece']
  model, params = tiny_model('bert', tokenizer, pooling)
  st_export.save(str(tmp_path), model, params, tokenizer, 'bert', LENGTH)
  ours, theirs = encode_both(str(tmp_path), texts)
  diff = float(np.max(np.abs(ours - theirs)))
  record_figure(f'bert {pooling}', diff, f'{TOL}')
  assert diff <= TOL, diff
  loaded, loaded_params = st_export.load(str(tmp_path))
  assert loaded.pooling == pooling
  jax.tree.map(np.testing.assert_array_equal, loaded_params, params)


def test_sentence_transformers_encodes_our_roberta_export(trained_tokenizers, texts, tmp_path,
                                                          record_figure):
  tokenizer = trained_tokenizers['bpe']
  model, params = tiny_model('roberta', tokenizer, 'mean')
  st_export.save(str(tmp_path), model, params, tokenizer, 'roberta', LENGTH)
  ours, theirs = encode_both(str(tmp_path), texts)
  record_figure('roberta mean', np.max(np.abs(ours - theirs)), f'{TOL}')
  assert np.max(np.abs(ours - theirs)) <= TOL


def test_minilm_export_round_trip(minilm_dir, texts, tmp_path, record_figure):
  """MiniLM's real weights through our load and export: sentence-transformers gives the vectors it
  gives for the original directory, and ours."""
  model, params = st_export.load(minilm_dir)
  st_export.save(str(tmp_path), model.clone(pooling='max'), params,
                 tokenizer_lib.load(minilm_dir), 'bert', LENGTH)
  ours, theirs = encode_both(str(tmp_path), texts)
  record_figure('MiniLM max', np.max(np.abs(ours - theirs)), f'{TOL}')
  assert np.max(np.abs(ours - theirs)) <= TOL
  original = SentenceTransformer(modules=[Transformer(minilm_dir, max_seq_length=LENGTH),
                                          Pooling(384, pooling_mode='max')], device='cpu')
  expected = original.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
  np.testing.assert_allclose(theirs, expected, atol=TOL)
  with open(os.path.join(tmp_path, 'config.json')) as f:
    assert json.load(f)['architectures'] == ['BertModel']


def test_attention_pooling_is_refused(trained_tokenizers, tmp_path):
  tokenizer = trained_tokenizers['wordpiece']
  model, params = tiny_model('bert', tokenizer, 'attention')
  with pytest.raises(ConfigError, match="pooling='attention' has no sentence-transformers"):
    st_export.save(str(tmp_path), model, params, tokenizer, 'bert', LENGTH)
  assert not os.listdir(tmp_path)


def test_reads_what_sentence_transformers_writes(minilm_dir, tmp_path):
  assert st_export.pooling_of(minilm_dir) == 'mean'  # The package's legacy keys.
  for mode, ours in (('cls', 'cls'), ('mean_sqrt_len_tokens', 'mean_sqrt_len')):
    saved = SentenceTransformer(modules=[Transformer(minilm_dir), Pooling(384, pooling_mode=mode)],
                                device='cpu')
    saved.save(str(tmp_path / mode))  # sentence-transformers 5: new module paths and keys.
    assert st_export.pooling_of(str(tmp_path / mode)) == ours
  dense = SentenceTransformer(modules=[Transformer(minilm_dir), Pooling(384), Dense(384, 8)],
                              device='cpu')
  dense.save(str(tmp_path / 'dense'))
  with pytest.raises(ConfigError, match='not supported'):
    st_export.pooling_of(str(tmp_path / 'dense'))
