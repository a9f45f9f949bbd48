"""DeBERTa-v2/v3 (encoders/deberta.py + encoders/deberta_interop.py) against transformers 4.57.6
(torch, CPU), and the Enhanced Mask Decoder against a torch re-implementation of the release's."""
import dataclasses
import functools
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.models.deberta_v2 import modeling_deberta_v2

from encoders import deberta, families, hf_interop
from encoders.config import ConfigError
from encoders.configs import deberta as deberta_configs
from encoders.layers import stack_layers, unroll_layers
from tests.test_hf_interop import batch_inputs, max_diff, padded_batch, perturb_, random_params

TOL = 1e-4
# transformers' DeBERTa-v2 configs. The batch is 12 tokens long: with 8 buckets, distances
# from 4 on are log-bucketed; 'no_buckets_clamped' clamps distances beyond 5.
ARCHITECTURES = {
    'v3': dict(),  # c2p and p2c through the layers' own projections, 8 buckets.
    'c2p_own_keys': dict(pos_att_type='c2p', share_att_key=False),
    'p2c_only': dict(pos_att_type='p2c'),
    'no_buckets_clamped': dict(position_buckets=-1, max_relative_positions=5, share_att_key=False),
    'v2_conv': dict(conv_kernel_size=3, conv_act='gelu', conv_groups=2, share_att_key=False,
                    norm_rel_ebd='none'),
    'absolute_and_types': dict(position_biased_input=True, type_vocab_size=2, pos_att_type='c2p'),
}


def hf_config(**overrides) -> transformers.DebertaV2Config:
  return transformers.DebertaV2Config(**{
      **dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=40, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, relative_attention=True, position_buckets=8,
             pos_att_type='p2c|c2p', share_att_key=True, norm_rel_ebd='layer_norm',
             position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7),
      **overrides})


def hf_model(arch: str, tmp_path, architecture: str = 'v3', **overrides):
  """A transformers model with every weight randomised, saved to tmp_path; -> (model, path)."""
  torch.manual_seed(0)
  model = getattr(transformers, arch)(hf_config(**ARCHITECTURES[architecture], **overrides)).eval()
  perturb_(model)
  model.save_pretrained(tmp_path, safe_serialization=True)
  return model, str(tmp_path)


def read_config(path: str, **overrides) -> deberta.DebertaConfig:
  config_model = hf_interop.read_model_config(path)
  assert config_model.family == 'deberta'
  return dataclasses.replace(families.get('deberta').model_config(config_model), **overrides)


@pytest.mark.parametrize('architecture,scan_layers', [(a, False) for a in ARCHITECTURES] + [
    ('v3', True), ('c2p_own_keys', True)])
def test_masked_lm_matches_transformers(architecture, scan_layers, tmp_path, record_figure):
  torch_model, path = hf_model('DebertaV2ForMaskedLM', tmp_path, architecture)
  config = read_config(path, scan_layers=scan_layers)
  model = deberta.EncoderForPreTraining(config)
  params = hf_interop.load_params(path, model)
  input_ids, mask = padded_batch(99, 5, 0)
  token_type_ids = (np.arange(12)[None] >= np.array([[6], [4]])) * mask * (config.type_vocab_size > 1)
  with torch.no_grad():
    theirs = torch_model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(token_type_ids)).logits.numpy()
  ours = jax.jit(model.apply)({'params': params}, **batch_inputs(input_ids, mask, token_type_ids))
  diff = max_diff(ours['mlm_logits'], theirs, mask)
  record_figure('mlm_max_diff', diff, f'<= {TOL}')
  assert diff <= TOL


HEADS = [
    ('DebertaV2ForMaskedLM', lambda c: deberta.EncoderForPreTraining(c), lambda o: [o['mlm_logits']]),
    ('DebertaV2Model', deberta.Encoder, lambda o: [o[0]]),
    ('DebertaV2ForSequenceClassification',
     lambda c: deberta.EncoderForSequenceClassification(c, num_labels=3), lambda o: [o]),
    ('DebertaV2ForTokenClassification',
     lambda c: deberta.EncoderForTokenClassification(c, num_labels=5), lambda o: [o]),
    ('DebertaV2ForQuestionAnswering', deberta.EncoderForQuestionAnswering, list),
]


@pytest.mark.parametrize('architecture,arch,make_model,outputs',
                         [('v3', *head) for head in HEADS] + [('v2_conv', *HEADS[0]), ('v2_conv', *HEADS[2])],
                         ids=[f'v3-{h[0]}' for h in HEADS] + [f'v2_conv-{HEADS[i][0]}' for i in (0, 2)])
def test_every_head_imports_and_exports(architecture, arch, make_model, outputs, tmp_path,
                                        record_figure):
  num_labels = 3 if 'Sequence' in arch else 2 if 'Question' in arch else 5
  torch_model, path = hf_model(arch, tmp_path / 'hf', architecture, num_labels=num_labels,
                               pooler_hidden_act='gelu_new')
  model = make_model(read_config(path))
  params = hf_interop.load_params(path, model)

  input_ids, mask = padded_batch(99, 5, 0)
  with torch.no_grad():
    theirs = torch_model(input_ids=torch.from_numpy(input_ids),
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
  assert hf_interop.save_checkpoint(str(tmp_path / 'out'), model, params, family='deberta') == arch
  reloaded, info = getattr(transformers, arch).from_pretrained(str(tmp_path / 'out'),
                                                               output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}
  theirs_state, reloaded_state = torch_model.state_dict(), reloaded.state_dict()
  assert set(theirs_state) == set(reloaded_state)
  export_diff = max(float((theirs_state[k] - reloaded_state[k]).abs().max()) for k in theirs_state)
  record_figure('export_max_diff', export_diff, '== 0')
  assert export_diff == 0.0


@pytest.mark.parametrize('bucket_size,max_position,length', [(256, 512, 512), (8, 40, 40),
                                                             (4, 6, 20), (64, 128, 300)])
def test_relative_positions_match_transformers(bucket_size, max_position, length):
  config = deberta.DebertaConfig(max_position_embeddings=max_position, position_buckets=bucket_size)
  states = torch.zeros(1, length, 1)
  theirs = modeling_deberta_v2.build_relative_position(states, states, bucket_size, max_position)[0]
  expected = np.clip(theirs.numpy() + bucket_size, 0, 2 * bucket_size - 1)  # Their c2p gather index.
  np.testing.assert_array_equal(deberta.relative_index(length, config), expected)


def release_emd_logits(torch_model, position_table, input_ids, mask, z_steps=2):
  """microsoft/DeBERTa's EnhancedMaskDecoder (apps/models/masked_language_model.py:
  emd_context_layer, then lm_head), spelled out in torch over transformers' modules.

  The release: hidden_states = encoder_layers[-2] (the last layer's input); z_states (the
  absolute position embeddings) += hidden_states; the last layer runs twice with
  query_states = the previous output and keys/values hidden_states.
  """
  ids, attention = torch.from_numpy(input_ids), torch.from_numpy(mask)
  with torch.no_grad():
    encoder = torch_model.deberta.encoder
    hidden = torch_model.deberta(input_ids=ids, attention_mask=attention,
                                 output_hidden_states=True).hidden_states[-2]
    query = torch.from_numpy(position_table)[torch.arange(ids.shape[1])][None] + hidden
    for _ in range(z_steps):
      query = encoder.layer[-1](hidden, encoder.get_attention_mask(attention), query_states=query,
                                relative_pos=encoder.get_rel_pos(hidden),
                                rel_embeddings=encoder.get_rel_embedding())[0]
    return torch_model.cls(query).numpy()


@pytest.mark.parametrize('architecture,scan_layers', [('v3', False), ('v3', True), ('v2_conv', False)])
def test_enhanced_mask_decoder_matches_the_release(architecture, scan_layers, tmp_path, record_figure):
  torch_model, path = hf_model('DebertaV2ForMaskedLM', tmp_path, architecture)
  config = read_config(path, emd=True, scan_layers=scan_layers)
  model = deberta.EncoderForPreTraining(config)
  params = hf_interop.load_params(path, model, fresh=('encoder/embeddings/position_embeddings',),
                                  rng=jax.random.key(0))
  table = np.random.default_rng(1).normal(size=(40, 32)).astype(np.float32)
  params['encoder']['embeddings']['position_embeddings']['embedding'] = table
  input_ids, mask = padded_batch(99, 5, 0)
  positions = np.array([[0, 3, 11, 5], [6, 1, 2, 0]], np.int32)
  theirs = np.take_along_axis(release_emd_logits(torch_model, table, input_ids, mask),
                              positions[:, :, None], axis=1)
  apply = jax.jit(model.apply)
  ours = apply({'params': params}, **batch_inputs(input_ids, mask), masked_positions=positions)
  diff = max_diff(ours['mlm_logits'], theirs)
  record_figure('emd_max_diff', diff, f'<= {TOL}')
  assert diff <= TOL
  # EMD changes the prediction, not the encoder: 'hidden' is still transformers' last layer.
  with torch.no_grad():
    last = torch_model.deberta(input_ids=torch.from_numpy(input_ids),
                               attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  assert max_diff(ours['hidden'], last, np.broadcast_to(mask[..., None], last.shape)) <= TOL
  assert max_diff(ours['mlm_logits'], np.take_along_axis(
      torch_model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits.detach().numpy(),
      positions[:, :, None], axis=1)) > 0.1
  if scan_layers or architecture != 'v3':
    return
  # Without masked_positions the decoder runs at every position, to the same values.
  dense = apply({'params': params}, **batch_inputs(input_ids, mask))['mlm_logits']
  np.testing.assert_allclose(np.take_along_axis(np.asarray(dense), positions[:, :, None], axis=1),
                             ours['mlm_logits'], atol=1e-5)


def small_config(**overrides) -> deberta.DebertaConfig:
  return deberta.DebertaConfig(**{
      **dict(vocab_size=99, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=37,
             max_position_embeddings=40, position_buckets=8, hidden_dropout_rate=0.0,
             attention_dropout_rate=0.0), **overrides})


@pytest.mark.parametrize('overrides', [dict(), dict(conv_kernel_size=3, conv_groups=4)],
                         ids=['v3', 'v2_conv'])
def test_packed_examples_do_not_see_each_other(overrides):
  # A row packing examples A (5 tokens) and B (4 tokens) gives each the states it gets alone.
  model = deberta.Encoder(small_config(**overrides, position_biased_input=True, emd=False))
  params = random_params(model)
  rng = np.random.default_rng(0)
  a, b = rng.integers(5, 99, 5), rng.integers(5, 99, 4)
  apply = jax.jit(lambda ids, segments, positions: model.apply(
      {'params': params}, ids, segments, positions)[0])

  def alone(ids):
    padded = np.zeros((1, 10), np.int32)
    padded[0, :len(ids)] = ids
    segments = (np.arange(10) < len(ids)).astype(np.int32)[None]
    return np.asarray(apply(padded, segments, np.arange(10, dtype=np.int32)[None] * segments))[0, :len(ids)]

  packed = np.concatenate([a, b, [0]]).astype(np.int32)[None]
  segments = np.array([[1] * 5 + [2] * 4 + [0]], np.int32)
  positions = np.array([list(range(5)) + list(range(4)) + [0]], np.int32)
  out = np.asarray(apply(packed, segments, positions))[0]
  np.testing.assert_allclose(out[:5], alone(a), atol=1e-5)
  np.testing.assert_allclose(out[5:9], alone(b), atol=1e-5)


EMD_CONFIG = dict(emd=True, num_layers=2)


@functools.cache
def emd_loss_and_grads(**variant):
  """A squared-logits loss of the EMD pretraining model and its gradients (unrolled layout)."""
  config = small_config(**EMD_CONFIG, **variant)
  ids = np.random.default_rng(0).integers(5, 99, (2, 12)).astype(np.int32)
  positions = np.array([[1, 4, 9], [0, 2, 11]], np.int32)
  params = random_params(deberta.EncoderForPreTraining(small_config(**EMD_CONFIG)))
  model = deberta.EncoderForPreTraining(config)
  loss = lambda p: jax.numpy.mean(model.apply({'params': p}, ids,
                                              masked_positions=positions)['mlm_logits'] ** 2)
  value, grads = jax.jit(jax.value_and_grad(loss))(
      stack_layers(params) if config.scan_layers else params)
  return float(value), jax.tree.leaves(unroll_layers(grads))


@pytest.mark.parametrize('variant', [dict(remat_policy='full'), dict(remat_policy='dots'),
                                     dict(scan_layers=True), dict(dtype='bfloat16')],
                         ids=['remat_full', 'remat_dots', 'scan', 'bf16'])
def test_remat_scan_and_bf16_keep_the_loss_and_gradients(variant):
  loss, grads = emd_loss_and_grads()
  other_loss, other_grads = emd_loss_and_grads(**variant)
  tol = 2e-2 if 'dtype' in variant else 1e-5
  assert other_loss == pytest.approx(loss, rel=tol)
  norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in grads))
  diff = np.sqrt(sum(float(np.sum(np.square(a - b))) for a, b in zip(grads, other_grads)))
  assert diff / norm < tol * 3, diff / norm
  assert all(g.dtype == np.float32 for g in other_grads)  # f32 parameters keep f32 gradients.


def test_bf16_with_inputs_beyond_float16_range_stays_close_to_f32(record_figure):
  # Word embeddings of magnitude ~1e5 (float16's largest value is 65504).
  model = deberta.Encoder(small_config())
  params = random_params(model)
  params['embeddings']['word_embeddings']['embedding'] *= 1e6
  ids = np.random.default_rng(0).integers(1, 99, (2, 48)).astype(np.int32)
  run = lambda dtype: np.asarray(deberta.Encoder(small_config(dtype=dtype)).apply(
      {'params': params}, ids)[0], np.float32)
  reference, bf16 = run('float32'), run('bfloat16')
  assert np.isfinite(bf16).all()
  relative = np.linalg.norm(bf16 - reference) / np.linalg.norm(reference)
  record_figure('bf16_rel_diff', relative, '< 0.02')
  assert relative < 0.02


def test_float16_scores_beyond_its_range_stay_finite():
  # Query/key kernels x100: layer 0's raw scores Q.K overflow float16 (DeBERTa's known fp16
  # failure). Ours are float32 (layers.matmul accumulates there), so a float16 run stays finite.
  # (With scores this large the softmax is nearly one-hot, and half-precision Q and K flip
  # near-ties, so no run in 16 bits is close to f32 here; closeness is the test above.)
  model = deberta.Encoder(small_config())
  params = random_params(model)
  for layer in params['layers'].values():
    for name in ('query', 'key'):
      layer['attention'][name]['kernel'] *= 100
  ids = np.random.default_rng(0).integers(1, 99, (2, 48)).astype(np.int32)
  embedded = params['embeddings']['word_embeddings']['embedding'][ids]
  ln = params['embeddings']['layer_norm']
  x = (embedded - embedded.mean(-1, keepdims=True)) / np.sqrt(embedded.var(-1, keepdims=True) + 1e-7)
  x = (x * ln['scale'] + ln['bias']).astype(np.float16)

  def layer0_projection(name):
    p = params['layers']['layer_0']['attention'][name]
    return np.einsum('bld,dhk->blhk', x, p['kernel'].astype(np.float16)) + p['bias'].astype(np.float16)
  raw = np.einsum('bqhd,bkhd->bhqk', layer0_projection('query'), layer0_projection('key'))
  assert raw.dtype == np.float16 and np.isinf(raw).any()
  f16 = deberta.Encoder(small_config(dtype='float16')).apply({'params': params}, ids)[0]
  assert np.isfinite(np.asarray(f16, np.float32)).all()


def test_emd_runs_only_at_the_masked_positions():
  # Sparse EMD: the decoder's extra layer runs on `predictions` queries, not on every token.
  config = small_config(emd=True, num_layers=2)
  model = deberta.EncoderForPreTraining(config)
  params = random_params(model)
  ids = np.zeros((1, 32), np.int32)
  positions = np.zeros((1, 3), np.int32)
  jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, ids, masked_positions=positions))(params)
  mlp_shapes = [tuple(e.outvars[0].aval.shape) for e in jaxpr.eqns
                if e.primitive.name == 'dot_general' and e.outvars[0].aval.shape[-1] == 37]
  assert mlp_shapes.count((1, 32, 37)) == 2  # The two encoder layers at every position ...
  assert mlp_shapes.count((1, 3, 37)) == config.z_steps  # ... EMD at the 3 masked positions.


def test_read_model_config_gives_the_deberta_family(tmp_path):
  _, path = hf_model('DebertaV2ForMaskedLM', tmp_path, 'v2_conv')
  config = read_config(path)
  assert (config.conv_kernel_size, config.conv_act, config.conv_groups) == (3, 'gelu', 2)
  assert config.pos_att_type == ('p2c', 'c2p') and config.share_att_key is False
  assert config.type_vocab_size == 0 and config.layer_norm_eps == 1e-7 and not config.emd
  # The released checkpoints' config.json spell the terms as one string (deberta_base.json).
  written = json.load(open(tmp_path / 'config.json'))
  json.dump({**written, 'pos_att_type': 'p2c|c2p'}, open(tmp_path / 'config.json', 'w'))
  assert read_config(path).pos_att_type == ('p2c', 'c2p')


def test_emd_export_keeps_its_position_table_as_transformers_ignores_it(tmp_path):
  model = deberta.EncoderForPreTraining(small_config(emd=True))
  params = random_params(model)
  hf_interop.save_checkpoint(str(tmp_path), model, params, family='deberta')
  assert json.load(open(tmp_path / 'config.json'))['model_type'] == 'deberta-v2'
  _, info = transformers.DebertaV2ForMaskedLM.from_pretrained(str(tmp_path), output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {
      'unexpected_keys': ['deberta.embeddings.position_embeddings.weight']}
  assert modeling_deberta_v2.DebertaV2PreTrainedModel._keys_to_ignore_on_load_unexpected == [
      'position_embeddings']
  reloaded = hf_interop.load_params(str(tmp_path), model)  # All of it comes back.
  jax.tree.map(np.testing.assert_array_equal, reloaded, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize('overrides,field', [
    (dict(pos_att_type=('c2p', 'p2p')), 'pos_att_type'),
    (dict(conv_kernel_size=2), 'conv_kernel_size'),
    (dict(conv_kernel_size=3, scan_layers=True), 'conv_kernel_size'),
    (dict(conv_groups=5), 'conv_groups'),
    (dict(embedding_size=16), 'embedding_size'),
    (dict(emd=True, position_biased_input=True), 'emd'),
    (dict(position_buckets=0), 'position_buckets'),
    (dict(type_vocab_size=-1), 'type_vocab_size'),
])
def test_bad_configs_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=f'model.{field}='):
    small_config(**overrides).validate()


def test_no_sentence_head():
  model = deberta.EncoderForPreTraining(small_config(), sentence_head=True)
  with pytest.raises(ConfigError, match='sentence-level'):
    model.init(jax.random.key(0), np.zeros((1, 8), np.int32))


def test_layer_depths():
  config = small_config(conv_kernel_size=3)
  depth = lambda *names: deberta.layer_depth(['encoder', *names], np.zeros((3, 2)), config)
  assert depth('layers', 'layer_2', 'mlp') == 3
  assert depth('conv', 'kernel') == 1
  assert depth('relative_embeddings', 'embedding') == 3  # Read by every layer: the top one's.
  assert depth('pooler', 'dense') is None
  np.testing.assert_array_equal(depth('layers', 'stacked', 'layer'), [[1], [2], [3]])


# microsoft/DeBERTa experiments/language_model/deberta_base.json: the v3-base architecture.
DEBERTA_BASE_JSON = dict(
    vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act='gelu', max_position_embeddings=512, type_vocab_size=0,
    relative_attention=True, position_buckets=256, norm_rel_ebd='layer_norm', share_att_key=True,
    pos_att_type='p2c|c2p', layer_norm_eps=1e-7, max_relative_positions=-1,
    position_biased_input=False)


def test_base_config_and_parameter_count_match_the_release():
  config = families.get('deberta').model_config(deberta_configs.get_model_config('base'))
  model = deberta.Encoder(dataclasses.replace(config, emd=False))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8), np.int32)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  theirs = transformers.DebertaV2Model(transformers.DebertaV2Config(**DEBERTA_BASE_JSON))
  assert count == theirs.num_parameters()
  embedding = int(np.prod(shapes['params']['embeddings']['word_embeddings']['embedding'].shape))
  # The model card: "86M backbone parameters ... 98M parameters in the Embedding layer"
  # (by this count 85.45M + 98.38M).
  assert abs((count - embedding) / 1e6 - 86) < 1 and round(embedding / 1e6) == 98
