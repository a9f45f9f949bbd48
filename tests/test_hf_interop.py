"""Parity of encoders.hf_interop + encoders.bert with transformers 4.57.6 (torch, CPU) as the reference."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from encoders import bert, hf_interop
from encoders.config import ConfigError, EncoderConfig
from encoders.heads import pool

TOL = 1e-4
replace = dataclasses.replace
SENTENCES = [
    'The quick brown fox jumps over the lazy dog.',
    'Café crème à la française: naïve façade, Zürich, São Paulo.',
    '東京は日本の首都です。北京是中国的首都。',
    'I love pizza 🍕🎉 and rockets 🚀!',
    ' '.join(['A sentence that goes on well past the limit of one hundred and twenty-eight tokens.'] * 12),
]


def batch_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids=None) -> dict:
  """HF's padded inputs -> ours (batch contract): segment_ids = attention_mask, positions 0 at padding."""
  length = input_ids.shape[1]
  return dict(input_ids=input_ids.astype(np.int32), segment_ids=attention_mask.astype(np.int32),
              position_ids=(np.arange(length)[None] * attention_mask).astype(np.int32),
              token_type_ids=(np.zeros_like(input_ids) if token_type_ids is None
                              else token_type_ids).astype(np.int32))


def max_diff(ours, theirs, mask=None) -> float:
  diff = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
  return float(diff[mask.astype(bool)].max() if mask is not None else diff.max())


def padded_batch(vocab_size: int, first_id: int, pad_id: int, lengths=(12, 7), seed=0):
  """Random ids >= first_id, right-padded with pad_id; returns (input_ids, attention_mask)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(first_id, vocab_size, (len(lengths), max(lengths)))
  mask = np.arange(max(lengths))[None] < np.array(lengths)[:, None]
  return np.where(mask, ids, pad_id), mask.astype(np.int64)


def perturb_(hf_model, seed=0) -> None:
  """Noise on every HF parameter (biases and LayerNorms too), so no mapping hides behind 0 or 1."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in hf_model.parameters():
      param.add_(torch.randn(param.shape, generator=generator) * 0.2)


def random_hf_model(tmp_path_factory, arch: str, family: str, **config):
  config_cls = transformers.BertConfig if family == 'bert' else transformers.RobertaConfig
  config = config_cls(**{**dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=40), **config})
  torch.manual_seed(0)
  model = getattr(transformers, arch)(config).eval()
  perturb_(model)
  path = str(tmp_path_factory.mktemp(arch))
  model.save_pretrained(path, safe_serialization=True)
  return model, path


@pytest.fixture(scope='module')
def hf_bert_pretraining(tmp_path_factory):
  return random_hf_model(tmp_path_factory, 'BertForPreTraining', 'bert')


@pytest.fixture(scope='module')
def hf_roberta_mlm(tmp_path_factory):
  return random_hf_model(tmp_path_factory, 'RobertaForMaskedLM', 'roberta', layer_norm_eps=1e-5, type_vocab_size=1, max_position_embeddings=42)


def test_minilm_hidden_states_and_sentence_embeddings(minilm_dir, record_figure):
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  encoded = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors='np')
  assert encoded['input_ids'].shape == (len(SENTENCES), 128)  # The long one is truncated at 128.
  mask = encoded['attention_mask']
  assert mask.sum(1).min() < 20  # ... and the short ones padded.

  hf_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
  with torch.no_grad():
    theirs = hf_model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).last_hidden_state.numpy()

  config_model = hf_interop.read_model_config(minilm_dir)
  model = bert.Encoder(EncoderConfig.from_config(config_model))
  params = hf_interop.load_params(minilm_dir, model)
  inputs = batch_inputs(encoded['input_ids'], mask, encoded['token_type_ids'])
  ours, _ = jax.jit(model.apply)({'params': params}, **inputs)
  ours = np.asarray(ours)

  hidden_diff = max_diff(ours, theirs, mask)
  record_figure('max_abs_diff', hidden_diff, f'<= {TOL}')

  def sentence_embeddings(hidden):
    pooled = np.asarray(pool(hidden, mask > 0, 'mean'), np.float64)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

  cosine = np.sum(sentence_embeddings(ours) * sentence_embeddings(theirs), axis=1)
  record_figure('min_cosine', cosine.min(), '>= 0.99999', '.8f')
  assert hidden_diff <= TOL
  assert cosine.min() >= 0.99999


def test_bert_pretraining_mlm_and_nsp(hf_bert_pretraining, record_figure):
  hf_model, path = hf_bert_pretraining
  input_ids, mask = padded_batch(99, 5, 0)
  token_type_ids = (np.arange(12)[None] >= np.array([[6], [4]])) * mask
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                   token_type_ids=torch.from_numpy(token_type_ids))

  config_model = hf_interop.read_model_config(path)
  model = bert.EncoderForPreTraining(EncoderConfig.from_config(config_model), sentence_head=True)
  params = hf_interop.load_params(path, model)
  ours = jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask, token_type_ids))

  mlm_diff = max_diff(ours['mlm_logits'], out.prediction_logits.numpy(), mask)
  nsp_diff = max_diff(ours['sentence_logits'], out.seq_relationship_logits.numpy())
  record_figure('mlm_max_diff', mlm_diff, f'<= {TOL}')
  record_figure('nsp_max_diff', nsp_diff, f'<= {TOL}')
  assert mlm_diff <= TOL and nsp_diff <= TOL

  # Sparse MLM at masked_positions equals the dense logits (ours and HF's) gathered there.
  positions = np.array([[0, 3, 11, 5], [6, 1, 2, 0]], np.int32)
  sparse = jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask, token_type_ids),
                       masked_positions=positions)['mlm_logits']
  gathered = np.take_along_axis(np.asarray(ours['mlm_logits']), positions[:, :, None], axis=1)
  hf_gathered = np.take_along_axis(out.prediction_logits.numpy(), positions[:, :, None], axis=1)
  sparse_diff = max_diff(sparse, hf_gathered)
  record_figure('sparse_vs_hf', sparse_diff, f'<= {TOL}')
  np.testing.assert_allclose(sparse, gathered, atol=1e-6)
  assert sparse_diff <= TOL


def imported_mlm_diff(hf_model, path: str, input_ids, mask):
  """The HF `*ForMaskedLM` checkpoint at `path` imported -> (our model, its params, the largest
  |difference| of the MLM logits at real tokens)."""
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(input_ids),
                      attention_mask=torch.from_numpy(mask)).logits.numpy()
  model = bert.EncoderForPreTraining(EncoderConfig.from_config(hf_interop.read_model_config(path)))
  params = hf_interop.load_params(path, model)
  ours = jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask))['mlm_logits']
  return model, params, max_diff(ours, theirs, mask)


def test_roberta_mlm_right_padded(hf_roberta_mlm, record_figure):
  hf_model, path = hf_roberta_mlm
  model, _, diff = imported_mlm_diff(hf_model, path, *padded_batch(99, 4, 1))
  assert model.config.position_offset == 2
  record_figure('mlm_max_diff', diff, f'<= {TOL}')
  assert diff <= TOL


@pytest.mark.parametrize('position_type', ['relative_key', 'relative_key_query'])
def test_relative_positions_match_transformers(position_type, tmp_path_factory, tmp_path,
                                               record_figure):
  """transformers' relative position types (Shaw et al. 2018; Huang et al. 2020): the import,
  the MLM logits on a right-padded batch, and the export back into transformers."""
  hf_model, path = random_hf_model(tmp_path_factory, 'BertForMaskedLM', 'bert',
                                   position_embedding_type=position_type,
                                   attn_implementation='eager')
  model, params, diff = imported_mlm_diff(hf_model, path, *padded_batch(99, 5, 0))
  assert model.config.position_embedding_type == position_type
  record_figure('mlm_max_diff', diff, f'<= {TOL}')
  assert diff <= TOL

  assert hf_interop.save_checkpoint(str(tmp_path), model, params, family='bert') == 'BertForMaskedLM'
  exported, info = transformers.BertForMaskedLM.from_pretrained(
      str(tmp_path), output_loading_info=True, attn_implementation='eager')
  assert {k: v for k, v in info.items() if v} == {}
  assert exported.config.position_embedding_type == position_type
  original = hf_model.state_dict()
  for name, tensor in exported.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(), original[name].numpy(), err_msg=name)


def test_distance_layer_norm_has_no_transformers_layout(tmp_path):
  config = replace(small_config('bert'), position_embedding_type='relative_key',
                   distance_layer_norm=True)
  model = bert.EncoderForPreTraining(config)
  with pytest.raises(ConfigError, match='distance_layer_norm'):
    hf_interop.save_checkpoint(str(tmp_path), model, random_params(model), family='bert')


def random_params(model, seed=0) -> dict:
  """Random values (numpy, no compilation) for every param: kernels, biases, LayerNorms (around 1)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8), np.int32)))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: (rng.normal(size=leaf.shape) * 0.2
                          + (path[-1].key == 'scale')).astype(np.float32), shapes['params'])


def small_config(family: str) -> EncoderConfig:
  fields = dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
                max_position_embeddings=40, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
  if family == 'roberta':
    fields.update(type_vocab_size=1, pad_token_id=1, position_offset=2, layer_norm_eps=1e-5,
                  max_position_embeddings=42)
  return EncoderConfig(**fields)


EXPORTS = [
    ('bert', lambda c: bert.EncoderForPreTraining(c, sentence_head=True), 'BertForPreTraining'),
    ('bert', lambda c: bert.EncoderForPreTraining(c), 'BertForMaskedLM'),
    ('roberta', lambda c: bert.EncoderForPreTraining(c), 'RobertaForMaskedLM'),
    ('bert', lambda c: bert.Encoder(c, add_pooler=True), 'BertModel'),
    ('roberta', lambda c: bert.Encoder(replace(c, hidden_act='gelu_new'), add_pooler=True),
     'RobertaModel'),
    ('bert', lambda c: bert.EncoderForSequenceClassification(c, num_labels=3),
     'BertForSequenceClassification'),
    ('roberta', lambda c: bert.EncoderForTokenClassification(replace(c, hidden_act='relu'), num_labels=5),
     'RobertaForTokenClassification'),
    ('bert', bert.EncoderForQuestionAnswering, 'BertForQuestionAnswering'),
]


def as_list(outputs) -> list[tuple[np.ndarray, bool]]:
  """Our outputs in transformers' order, each with whether it is per token (compared at real tokens)."""
  if isinstance(outputs, dict):
    return [(outputs['mlm_logits'], True)] + (
        [(outputs['sentence_logits'], False)] if 'sentence_logits' in outputs else [])
  if isinstance(outputs, tuple):
    return [(o, o.ndim >= 2 and o.shape[1] == 12) for o in outputs]
  return [(outputs, outputs.ndim == 3)]


@pytest.mark.parametrize('family,make_model,arch', EXPORTS, ids=[e[2] for e in EXPORTS])
def test_export_loads_in_transformers(family, make_model, arch, tmp_path, record_figure):
  model = make_model(small_config(family))
  params = random_params(model)
  assert hf_interop.save_checkpoint(str(tmp_path), model, params, family=family) == arch

  hf_model, info = getattr(transformers, arch).from_pretrained(str(tmp_path), output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}  # No missing / unexpected / mismatched keys.
  input_ids, mask = padded_batch(99, 4, model.config.pad_token_id)
  with torch.no_grad():
    theirs = hf_model.eval()(input_ids=torch.from_numpy(input_ids),
                             attention_mask=torch.from_numpy(mask)).to_tuple()
  ours = as_list(jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask)))
  assert len(ours) == len(theirs)
  diff = max(max_diff(o, t.numpy(), np.broadcast_to(mask[..., None] if o.ndim == 3 else mask, o.shape)
                      if per_token else None) for (o, per_token), t in zip(ours, theirs))
  record_figure('max_abs_diff', diff, f'<= {TOL}')
  assert diff <= TOL

  # And back: the import gives exactly what was exported.
  reloaded = hf_interop.load_params(str(tmp_path), model)
  jax.tree.map(np.testing.assert_array_equal, reloaded, jax.tree.map(np.asarray, params))


def test_unknown_tensor_is_named(hf_bert_pretraining, tmp_path):
  _, path = hf_bert_pretraining
  tensors = load_file(os.path.join(path, 'model.safetensors'))
  tensors['bert.encoder.layer.0.attention.self.distance_embedding.weight'] = np.zeros((3, 4), np.float32)
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text(open(os.path.join(path, 'config.json')).read())
  model = bert.EncoderForPreTraining(EncoderConfig.from_config(hf_interop.read_model_config(str(tmp_path))))
  with pytest.raises(ValueError, match='encoder.layer.0.attention.self.distance_embedding.weight'):
    hf_interop.load_params(str(tmp_path), model)


def test_missing_head_raises_unless_fresh(hf_roberta_mlm):
  _, path = hf_roberta_mlm
  config = EncoderConfig.from_config(hf_interop.read_model_config(path))
  model = bert.EncoderForTokenClassification(config, num_labels=3)
  with pytest.raises(ValueError, match=r"classifier\.weight.*fresh=\('classifier',\)"):
    hf_interop.load_params(path, model)
  params = hf_interop.load_params(path, model, fresh=('classifier',), rng=jax.random.key(0))
  assert params['classifier']['dense']['kernel'].shape == (32, 3)
  with pytest.raises(ValueError, match='classifer'):
    hf_interop.load_params(path, model, fresh=('classifer',), rng=jax.random.key(0))


def test_config_mismatch_names_field(hf_bert_pretraining):
  _, path = hf_bert_pretraining
  config = EncoderConfig.from_config(hf_interop.read_model_config(path))
  model = bert.Encoder(replace(config, layer_norm_eps=1e-5))
  with pytest.raises(ConfigError, match='model.layer_norm_eps'):
    hf_interop.load_params(path, model)


def test_embedding_projection_has_no_hf_bert_layout(hf_bert_pretraining, tmp_path):
  _, path = hf_bert_pretraining
  config = replace(EncoderConfig.from_config(hf_interop.read_model_config(path)), embedding_size=16)
  for model in (bert.Encoder(config, add_pooler=True), bert.EncoderForPreTraining(config)):
    with pytest.raises(ConfigError, match='model.embedding_size=16'):
      hf_interop.save_checkpoint(str(tmp_path), model, {}, family='bert')
    with pytest.raises(ConfigError, match='model.embedding_size=16'):
      hf_interop.load_params(path, model)


def test_roberta_mlm_head_activation_is_gelu(tmp_path):
  model = bert.EncoderForPreTraining(replace(small_config('roberta'), hidden_act='gelu_new'))
  with pytest.raises(ConfigError, match='model.hidden_act'):
    hf_interop.save_checkpoint(str(tmp_path), model, {}, family='roberta')


def test_untied_decoder_is_refused(hf_bert_pretraining, tmp_path):
  _, path = hf_bert_pretraining
  tensors = load_file(os.path.join(path, 'model.safetensors'))
  tensors['cls.predictions.decoder.weight'] = tensors['bert.embeddings.word_embeddings.weight'] + 1
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  config = json.load(open(os.path.join(path, 'config.json')))
  (tmp_path / 'config.json').write_text(json.dumps(config))
  model = bert.EncoderForPreTraining(EncoderConfig.from_config(hf_interop.read_model_config(str(tmp_path))))
  with pytest.raises(ValueError, match='cls.predictions.decoder.weight'):
    hf_interop.load_params(str(tmp_path), model)
