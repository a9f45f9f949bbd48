"""ALBERT (encoders/albert.py + encoders/albert_interop.py) against transformers 4.57.6 (torch, CPU)."""
import dataclasses
import json
import os

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from encoders import albert, families, hf_interop
from encoders.config import ConfigError
from encoders.configs import albert as albert_configs
from tests.test_hf_interop import batch_inputs, max_diff, padded_batch, perturb_, random_params

TOL = 1e-4
# transformers' ALBERT configs: one shared group; two groups of two inner layers; two groups
# over three layers (layer i runs group int(i / 1.5): 0, 0, 1); every layer its own group.
ARCHITECTURES = {
    'shared': dict(num_hidden_layers=3),
    'groups2_inner2': dict(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2),
    'groups2_of3': dict(num_hidden_layers=3, num_hidden_groups=2),
    'not_shared': dict(num_hidden_layers=3, num_hidden_groups=3),
}


def hf_config(**overrides) -> transformers.AlbertConfig:
  return transformers.AlbertConfig(**{
      **dict(vocab_size=99, embedding_size=16, hidden_size=32, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=40, hidden_act='gelu_new',
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             classifier_dropout_prob=0.0), **overrides})


@pytest.fixture(scope='module', params=list(ARCHITECTURES))
def hf_pretraining(request, tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.AlbertForPreTraining(hf_config(**ARCHITECTURES[request.param])).eval()
  perturb_(model)
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path, safe_serialization=True)
  return model, path


def ours(path: str, module=albert.EncoderForPreTraining, **kwargs):
  config_model = hf_interop.read_model_config(path)
  assert config_model.family == 'albert'
  model = module(families.get('albert').model_config(config_model), **kwargs)
  return model, hf_interop.load_params(path, model)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_pretraining_mlm_and_sop_match_transformers(hf_pretraining, scan_layers, record_figure):
  hf_model, path = hf_pretraining
  config_model = hf_interop.read_model_config(path)
  config = dataclasses.replace(families.get('albert').model_config(config_model),
                               scan_layers=scan_layers)
  if scan_layers and config.num_layers % config.num_hidden_groups:
    with pytest.raises(ConfigError, match='num_hidden_groups'):
      config.validate()
    return
  model = albert.EncoderForPreTraining(config, sentence_head=True)
  params = hf_interop.load_params(path, model)
  input_ids, mask = padded_batch(99, 5, 0)
  token_type_ids = (np.arange(12)[None] >= np.array([[6], [4]])) * mask
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                   token_type_ids=torch.from_numpy(token_type_ids))
  result = jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask, token_type_ids))
  mlm_diff = max_diff(result['mlm_logits'], out.prediction_logits.numpy(), mask)
  sop_diff = max_diff(result['sentence_logits'], out.sop_logits.numpy())
  record_figure('mlm_max_diff', mlm_diff, f'<= {TOL}')
  record_figure('sop_max_diff', sop_diff, f'<= {TOL}')
  assert mlm_diff <= TOL and sop_diff <= TOL


def test_scanned_stack_compiles_one_group():
  # All-shared, 6 layers: the scan over groups has length 1 and repeats the group 6 times.
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=6,
                               num_heads=4, intermediate_size=37, scan_layers=True)
  model = albert.Encoder(config)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8), np.int32)))
  stacked = shapes['params']['layers']['stacked']['layer']
  assert sorted(stacked) == ['attention_0', 'ffn_0']
  assert stacked['ffn_0']['mlp']['intermediate']['kernel'].shape == (1, 32, 37)
  jaxpr = str(jax.make_jaxpr(lambda p, ids: model.apply({'params': p}, ids))(
      random_params(model), np.zeros((1, 8), np.int32)))
  assert jaxpr.count('dot_general') < 15  # One layer's matmuls (+ embeddings), not six layers'.


HEADS = [
    ('AlbertForMaskedLM', lambda c: albert.EncoderForPreTraining(c), lambda o: [o['mlm_logits']]),
    ('AlbertModel', lambda c: albert.Encoder(c, add_pooler=True), list),
    ('AlbertForSequenceClassification',
     lambda c: albert.EncoderForSequenceClassification(c, num_labels=3), lambda o: [o]),
    ('AlbertForTokenClassification',
     lambda c: albert.EncoderForTokenClassification(c, num_labels=5), lambda o: [o]),
    ('AlbertForQuestionAnswering', albert.EncoderForQuestionAnswering, list),
]


@pytest.mark.parametrize('arch,make_model,outputs', HEADS, ids=[h[0] for h in HEADS])
@pytest.mark.parametrize('architecture', ['shared', 'groups2_inner2'])
def test_every_head_imports_and_exports(arch, make_model, outputs, architecture, tmp_path,
                                        record_figure):
  torch.manual_seed(0)
  num_labels = 3 if 'Sequence' in arch else 2 if 'Question' in arch else 5
  hf_model = getattr(transformers, arch)(hf_config(num_labels=num_labels,
                                                   **ARCHITECTURES[architecture])).eval()
  perturb_(hf_model)
  hf_model.save_pretrained(tmp_path / 'hf', safe_serialization=True)
  config = families.get('albert').model_config(hf_interop.read_model_config(str(tmp_path / 'hf')))
  model = make_model(config)
  params = hf_interop.load_params(str(tmp_path / 'hf'), model)

  input_ids, mask = padded_batch(99, 5, 0)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(input_ids),
                      attention_mask=torch.from_numpy(mask)).to_tuple()
  mine = outputs(jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask)))
  assert len(mine) == len(theirs)

  def diff(a, b):
    per_token = a.ndim >= 2 and a.shape[1] == mask.shape[1]
    where = np.broadcast_to(mask.reshape(mask.shape + (1,) * (a.ndim - 2)), a.shape) if per_token else None
    return max_diff(a, b.numpy(), where)
  import_diff = max(diff(a, b) for a, b in zip(mine, theirs))
  record_figure('import_max_diff', import_diff, f'<= {TOL}')
  assert import_diff <= TOL

  # Export: transformers loads it with no missing / unexpected keys, to the same weights.
  assert hf_interop.save_checkpoint(str(tmp_path / 'out'), model, params, family='albert') == arch
  reloaded, info = getattr(transformers, arch).from_pretrained(str(tmp_path / 'out'),
                                                               output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}
  theirs_state, reloaded_state = hf_model.state_dict(), reloaded.state_dict()
  assert set(theirs_state) == set(reloaded_state)
  export_diff = max(float((theirs_state[k] - reloaded_state[k]).abs().max()) for k in theirs_state)
  record_figure('export_max_diff', export_diff, '== 0')
  assert export_diff == 0.0


def test_base_parameter_count_matches_transformers():
  ours_config = families.get('albert').model_config(albert_configs.get_model_config('base'))
  model = albert.Encoder(ours_config, add_pooler=True)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8), np.int32))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  theirs = transformers.AlbertModel(transformers.AlbertConfig(
      vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
      num_attention_heads=12, intermediate_size=3072)).num_parameters()
  assert count == theirs
  assert round(count / 1e6, 2) == 11.68  # ALBERT-base, Lan et al. 2020 Table 1 ("12M").


@pytest.mark.parametrize('sharing,attention_sets,ffn_sets', [
    ('all', 1, 1), ('attention', 1, 4), ('ffn', 4, 1), ('none', 4, 4)])
def test_sharing_modes_hold_one_weight_set_per_shared_half(sharing, attention_sets, ffn_sets):
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=4,
                               num_heads=4, intermediate_size=37, sharing=sharing)
  model = albert.EncoderForPreTraining(config)
  params = random_params(model)
  layers = params['encoder']['layers']
  assert sum('attention_0' in group for group in layers.values()) == attention_sets
  assert sum('ffn_0' in group for group in layers.values()) == ffn_sets
  ids = np.arange(2, 10, dtype=np.int32)[None]
  out = model.apply({'params': params}, ids)['mlm_logits']
  assert np.isfinite(np.asarray(out)).all()


def test_partial_sharing_matches_an_independent_forward():
  # 'attention' sharing: layer i = FFN_i(Attn_shared(x)). Checked against the same stack
  # assembled from single-layer ALBERT modules (num_layers=1), one call per layer.
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=3,
                               num_heads=4, intermediate_size=37, sharing='attention',
                               hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
  stack = albert.AlbertStack(config)
  x = np.random.default_rng(0).normal(size=(2, 6, 32)).astype(np.float32)
  mask = np.ones((2, 1, 6, 6), bool)
  params = nn.unbox(stack.init(jax.random.key(1), x, mask, True))['params']
  one = albert.AlbertStack(dataclasses.replace(config, num_layers=1, sharing='all'))
  expected = x
  for i in range(3):
    layer = {'layer_0': {'attention_0': params['layer_0']['attention_0'],
                         'ffn_0': params[f'layer_{i}']['ffn_0']}}
    expected = one.apply({'params': layer}, expected, mask, True)
  np.testing.assert_allclose(stack.apply({'params': params}, x, mask, True), expected, atol=1e-5)


def test_partial_sharing_cannot_be_exported(tmp_path):
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=2,
                               num_heads=4, intermediate_size=37, sharing='ffn')
  with pytest.raises(ConfigError, match="sharing='ffn'"):
    hf_interop.save_checkpoint(str(tmp_path), albert.EncoderForPreTraining(config), {},
                               family='albert')


def test_unknown_tensor_is_named(hf_pretraining, tmp_path):
  _, path = hf_pretraining
  tensors = load_file(os.path.join(path, 'model.safetensors'))
  tensors['albert.encoder.albert_layer_groups.0.albert_layers.0.attention.rotary.weight'] = (
      np.zeros((3, 4), np.float32))
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text(open(os.path.join(path, 'config.json')).read())
  model = albert.EncoderForPreTraining(families.get('albert').model_config(
      hf_interop.read_model_config(str(tmp_path))), sentence_head=True)
  with pytest.raises(ValueError, match='albert_layers.0.attention.rotary.weight'):
    hf_interop.load_params(str(tmp_path), model)


def test_bert_model_is_not_read_as_albert(hf_pretraining):
  from encoders import bert  # pylint: disable=g-import-not-at-top
  _, path = hf_pretraining
  config = families.get('albert').model_config(hf_interop.read_model_config(path))
  with pytest.raises(ConfigError, match='not a albert model|not an? albert model'):
    hf_interop.load_params(path, bert.EncoderForPreTraining(config))


def test_shared_weights_get_one_layer_decay_depth():
  # All shared, 4 layers: the one weight set is decayed as the top layer, not four times.
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=4,
                               num_heads=4, intermediate_size=37, num_hidden_groups=2)
  assert albert.layer_depth(['encoder', 'layers', 'layer_0', 'attention_0', 'x'], None, config) == 2
  assert albert.layer_depth(['encoder', 'layers', 'layer_1', 'ffn_0', 'x'], None, config) == 4
  shared = dataclasses.replace(config, num_hidden_groups=1, sharing='attention')
  assert albert.layer_depth(['encoder', 'layers', 'layer_0', 'attention_0', 'x'], None, shared) == 4
  assert albert.layer_depth(['encoder', 'layers', 'layer_2', 'ffn_0', 'x'], None, shared) == 3
  assert albert.layer_depth(['encoder', 'pooler', 'dense'], None, shared) is None
  stacked = np.zeros((2, 3))
  np.testing.assert_array_equal(
      albert.layer_depth(['encoder', 'layers', 'stacked', 'layer', 'x'], stacked, config), [[2], [4]])


def test_exported_config_reads_back(tmp_path):
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=3,
                               num_heads=4, intermediate_size=37, sharing='none',
                               hidden_act='gelu_new')
  model = albert.EncoderForPreTraining(config, sentence_head=True)
  hf_interop.save_checkpoint(str(tmp_path), model, random_params(model), family='albert')
  written = json.load(open(tmp_path / 'config.json'))
  assert written['num_hidden_groups'] == 3 and written['embedding_size'] == 16
  read = families.get('albert').model_config(hf_interop.read_model_config(str(tmp_path)))
  assert (read.attention_groups, read.ffn_groups) == (3, 3)
  assert flax.traverse_util.flatten_dict(random_params(model)).keys() == \
      flax.traverse_util.flatten_dict(hf_interop.load_params(
          str(tmp_path), albert.EncoderForPreTraining(read, sentence_head=True))).keys()


@pytest.mark.parametrize('variant', [dict(remat_policy='full'), dict(remat_policy='dots'),
                                     dict(dtype='bfloat16')])
def test_remat_and_bf16_keep_the_loss_and_gradients(variant):
  config = albert.AlbertConfig(vocab_size=99, hidden_size=32, embedding_size=16, num_layers=3,
                               num_heads=4, intermediate_size=37, num_hidden_groups=2,
                               inner_group_num=2, hidden_dropout_rate=0.0,
                               attention_dropout_rate=0.0)
  ids = np.random.default_rng(0).integers(5, 99, (2, 12)).astype(np.int32)

  def loss_and_grads(c):
    model = albert.EncoderForPreTraining(c, sentence_head=True)
    params = random_params(albert.EncoderForPreTraining(config, sentence_head=True))
    loss = lambda p: jax.numpy.mean(model.apply({'params': p}, ids)['mlm_logits'] ** 2)
    return jax.value_and_grad(loss)(params)

  loss, grads = loss_and_grads(config)
  other_loss, other_grads = loss_and_grads(dataclasses.replace(config, **variant))
  tol = 2e-2 if 'dtype' in variant else 1e-5
  assert float(other_loss) == pytest.approx(float(loss), rel=tol)
  flat, other = jax.tree.leaves(grads), jax.tree.leaves(other_grads)
  norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in flat))
  diff = np.sqrt(sum(float(np.sum(np.square(a - b))) for a, b in zip(flat, other)))
  assert diff / norm < tol * 3, diff / norm
  assert all(g.dtype == np.float32 for g in other)  # f32 parameters keep f32 gradients.
