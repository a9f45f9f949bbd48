"""DistilBERT (encoders/distilbert.py + encoders/distilbert_interop.py + configs/distilbert.py)
against transformers 4.57.6 (torch, CPU), and through the shared trainer and fine-tuning."""
import dataclasses
import json
import os
import shutil

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.models.distilbert import modeling_distilbert

from encoders import bert, distilbert, families, hf_interop
from encoders.adaptation import finetune, finetune_init
from encoders.config import ConfigError
from encoders.configs import distilbert as distilbert_configs
from encoders.configs import finetune as finetune_configs
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import objectives, trainer
from tests import training_util
from tests.test_electra_training import _params, _topic_like_task
from tests.test_hf_interop import batch_inputs, max_diff, padded_batch, perturb_, random_params

TOL = 1e-4
VOCAB = 99


def hf_config(**overrides) -> transformers.DistilBertConfig:
  return transformers.DistilBertConfig(**{
      **dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
             max_position_embeddings=40, dropout=0.0, attention_dropout=0.0), **overrides})


def save_hf(model, path) -> str:
  perturb_(model)
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def our_config(path: str, **overrides) -> distilbert.DistilBertConfig:
  config_model = hf_interop.read_model_config(path)
  assert config_model.family == 'distilbert'
  return dataclasses.replace(families.get('distilbert').model_config(config_model), **overrides)


@pytest.fixture(scope='module', params=[False, True], ids=['learned', 'sinusoidal'])
def hf_mlm(request, tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.DistilBertForMaskedLM(
      hf_config(sinusoidal_pos_embds=request.param)).eval()
  return model, save_hf(model, tmp_path_factory.mktemp('mlm'))


def test_sinusoidal_table_is_transformers():
  theirs = torch.empty(40, 32)
  modeling_distilbert._create_sinusoidal_embeddings(40, 32, theirs)
  np.testing.assert_allclose(distilbert.sinusoidal_table(40, 32), theirs.numpy(), atol=1e-6)
  config = distilbert.DistilBertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4,
                                       intermediate_size=37, max_position_embeddings=40,
                                       sinusoidal_pos_embds=True)
  init = jax.jit(distilbert.Encoder(config).init)(jax.random.key(0), np.zeros((1, 8), np.int32))
  table = nn.unbox(init)['params']['embeddings']['position_embeddings']['embedding']
  np.testing.assert_allclose(table, theirs.numpy(), atol=1e-6)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_mlm_logits_and_hidden_match_transformers(hf_mlm, scan_layers, record_figure):
  hf_model, path = hf_mlm
  config = our_config(path, scan_layers=scan_layers)
  assert config.sinusoidal_pos_embds == hf_model.config.sinusoidal_pos_embds
  model = distilbert.EncoderForPreTraining(config)
  params = hf_interop.load_params(path, model)
  input_ids, mask = padded_batch(VOCAB, 5, 0)
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                   output_hidden_states=True)
  apply = jax.jit(model.apply)
  ours = apply({'params': params}, **batch_inputs(input_ids, mask))
  mlm_diff = max_diff(ours['mlm_logits'], out.logits.numpy(), mask)
  hidden_diff = max_diff(ours['hidden'], out.hidden_states[-1].numpy(),
                         np.broadcast_to(mask[..., None], ours['hidden'].shape))
  record_figure('mlm_max_diff', mlm_diff, f'<= {TOL}')
  record_figure('hidden_max_diff', hidden_diff, f'<= {TOL}')
  assert mlm_diff <= TOL and hidden_diff <= TOL

  # Sparse MLM at masked_positions: HF's logits gathered there; 'hidden' stays [batch, length, dim].
  positions = np.array([[0, 3, 11, 5], [6, 1, 2, 0]], np.int32)
  sparse = apply({'params': params}, **batch_inputs(input_ids, mask), masked_positions=positions)
  assert sparse['hidden'].shape == (2, 12, 32)
  gathered = np.take_along_axis(out.logits.numpy(), positions[:, :, None], axis=1)
  assert max_diff(sparse['mlm_logits'], gathered) <= TOL


def test_packed_examples_match_each_one_alone(hf_mlm):
  # Two examples packed in one row (segments 1 and 2, positions restarting) and padding: each
  # segment's hidden states equal transformers' on that example alone.
  hf_model, path = hf_mlm
  model = distilbert.Encoder(our_config(path))
  params = hf_interop.load_params(path, model)
  rng = np.random.default_rng(1)
  first, second = rng.integers(5, VOCAB, 5), rng.integers(5, VOCAB, 4)
  input_ids = np.concatenate([first, second, [0, 0, 0]])[None].astype(np.int32)
  segment_ids = np.array([[1] * 5 + [2] * 4 + [0] * 3], np.int32)
  position_ids = np.array([list(range(5)) + list(range(4)) + [0] * 3], np.int32)
  token_type_ids = rng.integers(0, 2, (1, 12)).astype(np.int32)  # Ignored: no token types.
  hidden, pooled = model.apply({'params': params}, input_ids, segment_ids, position_ids,
                               token_type_ids)
  assert pooled is None
  for ids, where in ((first, slice(0, 5)), (second, slice(5, 9))):
    with torch.no_grad():
      theirs = hf_model.distilbert(input_ids=torch.from_numpy(ids[None])).last_hidden_state.numpy()
    assert max_diff(hidden[:, where], theirs) <= TOL


HEADS = [
    ('DistilBertModel', lambda c: distilbert.Encoder(c), lambda o: [o[0]]),
    ('DistilBertForMaskedLM', distilbert.EncoderForPreTraining, lambda o: [o['mlm_logits']]),
    ('DistilBertForSequenceClassification',
     lambda c: distilbert.EncoderForSequenceClassification(c, num_labels=3), lambda o: [o]),
    ('DistilBertForTokenClassification',
     lambda c: distilbert.EncoderForTokenClassification(c, num_labels=5), lambda o: [o]),
    ('DistilBertForQuestionAnswering', distilbert.EncoderForQuestionAnswering, list),
]


@pytest.mark.parametrize('arch,make_model,outputs', HEADS, ids=[h[0] for h in HEADS])
def test_every_head_imports_and_exports(arch, make_model, outputs, tmp_path, record_figure):
  torch.manual_seed(0)
  num_labels = 3 if 'Sequence' in arch else 2 if 'Question' in arch else 5
  hf_model = getattr(transformers, arch)(hf_config(num_labels=num_labels)).eval()
  path = save_hf(hf_model, tmp_path / 'hf')
  model = make_model(our_config(path))
  params = hf_interop.load_params(path, model)

  input_ids, mask = padded_batch(VOCAB, 5, 0)
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
  assert hf_interop.save_checkpoint(str(tmp_path / 'out'), model, params, family='distilbert') == arch
  reloaded, info = getattr(transformers, arch).from_pretrained(str(tmp_path / 'out'),
                                                               output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}
  theirs_state, reloaded_state = hf_model.state_dict(), reloaded.state_dict()
  assert set(theirs_state) == set(reloaded_state)
  export_diff = max(float((theirs_state[k] - reloaded_state[k]).abs().max()) for k in theirs_state)
  record_figure('export_max_diff', export_diff, '== 0')
  assert export_diff == 0.0
  written = json.load(open(tmp_path / 'out' / 'config.json'))
  assert (written['dim'], written['n_layers'], written['hidden_dim']) == (32, 2, 37)


@pytest.mark.parametrize('pooling', ['mean', 'max'])
def test_other_poolings_go_through_the_pre_classifier(pooling, tmp_path):
  torch.manual_seed(0)
  hf_model = transformers.DistilBertForSequenceClassification(hf_config(num_labels=3)).eval()
  path = save_hf(hf_model, tmp_path)
  model = distilbert.EncoderForSequenceClassification(our_config(path), 3, pooling)
  params = hf_interop.load_params(path, model)
  input_ids, mask = padded_batch(VOCAB, 5, 0)
  with torch.no_grad():  # transformers' hidden states, pooled and classified in numpy.
    hidden = hf_model.distilbert(input_ids=torch.from_numpy(input_ids),
                                 attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  real = mask[..., None] > 0
  pooled = (np.sum(hidden * real, 1) / real.sum(1) if pooling == 'mean'
            else np.max(np.where(real, hidden, -np.inf), 1))
  pre = np.maximum(pooled @ state['pre_classifier.weight'].T + state['pre_classifier.bias'], 0)
  expected = pre @ state['classifier.weight'].T + state['classifier.bias']
  ours = model.apply({'params': params}, **batch_inputs(input_ids, mask))
  assert max_diff(ours, expected) <= TOL
  with pytest.raises(ValueError, match="pooling='mean'|pooling='max'"):
    hf_interop.save_checkpoint(str(tmp_path / 'out'), model, params, family='distilbert')


def test_base_parameter_count_matches_transformers():
  config = families.get('distilbert').model_config(distilbert_configs.get_model_config('base'))

  def count(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8), np.int32))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  hf = transformers.DistilBertConfig()
  assert count(distilbert.EncoderForPreTraining(config)) == \
      transformers.DistilBertForMaskedLM(hf).num_parameters()
  encoder = count(distilbert.Encoder(config))
  assert encoder == transformers.DistilBertModel(hf).num_parameters()
  assert round(encoder / 1e6) == 66  # "66M parameters" (Sanh et al. 2019, Table 3).


def test_sinusoidal_positions_get_no_gradient():
  def position_gradient(sinusoidal):
    config = distilbert.DistilBertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1,
                                         num_heads=4, intermediate_size=37,
                                         max_position_embeddings=40, sinusoidal_pos_embds=sinusoidal)
    model = distilbert.EncoderForPreTraining(config)
    ids = np.arange(5, 17, dtype=np.int32)[None]
    loss = lambda p: jax.numpy.mean(model.apply({'params': p}, ids)['mlm_logits'] ** 2)
    grads = jax.jit(jax.grad(loss))(random_params(model))
    return np.abs(grads['encoder']['embeddings']['position_embeddings']['embedding']).max()
  assert position_gradient(True) == 0.0
  assert position_gradient(False) > 0.0


def test_bert_teacher_layers_copy_into_the_student():
  # The distillation objective copies BERT subtrees into the student: same names and shapes.
  student = distilbert.EncoderForPreTraining(distilbert.DistilBertConfig(
      vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37))
  teacher = bert.EncoderForPreTraining(bert.EncoderConfig(
      vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=37))
  shapes = lambda m: jax.tree.map(np.shape, random_params(m))
  theirs, ours = shapes(teacher), shapes(student)
  assert ours['encoder']['layers']['layer_1'] == theirs['encoder']['layers']['layer_3']
  assert ours['mlm_head'] == theirs['mlm_head']
  del theirs['encoder']['embeddings']['token_type_embeddings']
  assert ours['encoder']['embeddings'] == theirs['encoder']['embeddings']


# --- Errors --------------------------------------------------------------------------------


def test_sentence_head_is_refused():
  config = distilbert.DistilBertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4,
                                       intermediate_size=37)
  with pytest.raises(ConfigError, match='no NSP/SOP head'):
    distilbert.EncoderForPreTraining(config, sentence_head=True)
  run_config = distilbert_configs.get_config('tiny')
  with pytest.raises(ConfigError, match='no NSP/SOP head'):
    objectives.make_objective(run_config, sentence_head=True)


def test_config_json_that_is_not_distilbert(hf_mlm, tmp_path):
  _, path = hf_mlm
  # A DistilBERT model_type with BERT's keys: the missing DistilBERT keys are named.
  hf = json.load(open(os.path.join(path, 'config.json')))
  for key in ('dim', 'n_layers', 'n_heads', 'hidden_dim'):
    del hf[key]
  hf.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  with pytest.raises(ConfigError, match=r"lacks \['dim', 'n_layers', 'n_heads', 'hidden_dim'\]"):
    hf_interop.read_model_config(str(tmp_path))
  # A BERT checkpoint is not read into DistilBERT modules, nor DistilBERT into BERT's.
  torch.manual_seed(0)
  bert_path = save_hf(transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=37, max_position_embeddings=40)), tmp_path / 'bert')
  with pytest.raises(ConfigError, match='not a bert model'):
    hf_interop.load_params(bert_path, distilbert.EncoderForPreTraining(our_config(path)))
  with pytest.raises(ConfigError, match='not a distilbert model'):
    hf_interop.load_params(path, bert.EncoderForPreTraining(our_config(path)))


def test_unexportable_and_invalid_configs(tmp_path):
  config = distilbert.DistilBertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4,
                                       intermediate_size=37, layer_norm_eps=1e-5)
  with pytest.raises(ConfigError, match='model.layer_norm_eps=1e-05'):
    hf_interop.save_checkpoint(str(tmp_path), distilbert.EncoderForPreTraining(config), {},
                               family='distilbert')
  for field, value in (('type_vocab_size', 2), ('embedding_size', 16), ('qa_dropout_rate', 1.0)):
    with pytest.raises(ConfigError, match=f'model.{field}'):
      dataclasses.replace(config, **{field: value}).validate()


# --- Fine-tuning from an HF directory ------------------------------------------------------


def test_task_model_loads_an_hf_directory_with_a_fresh_head(hf_mlm):
  _, path = hf_mlm
  family = families.by_hf_model_type('distilbert')
  assert family.name == 'distilbert'
  model = family.task_model('classification', family.model_config(
      hf_interop.read_model_config(path)), num_labels=3)
  with pytest.raises(ValueError, match=r"fresh=\('classifier',\)"):
    hf_interop.load_params(path, model)
  params = hf_interop.load_params(path, model, fresh=('classifier',), rng=jax.random.key(0))
  assert sorted(params['classifier']) == ['dense', 'pre_classifier']
  encoder = hf_interop.load_params(path, distilbert.Encoder(model.config))
  jax.tree.map(np.testing.assert_array_equal, params['encoder'], encoder)


@pytest.mark.slow
def test_fine_tuning_from_an_hf_directory(minilm_dir, tmp_path):
  # An HF DistilBertModel with MiniLM's WordPiece vocabulary (30522 tokens), fine-tuned at lr 0.
  torch.manual_seed(0)
  hf_dir = save_hf(transformers.DistilBertModel(hf_config(vocab_size=30522)), tmp_path / 'hf')
  shutil.copy(os.path.join(minilm_dir, 'vocab.txt'), hf_dir)
  config = finetune_configs.get_config('topic')
  config.init_from = hf_dir
  config.train.update(batch_size=8, eval_batch_size=8, num_epochs=1.0, log_every=1)
  config.optimizer.learning_rate = 0.0  # The saved task model then holds exactly its initial weights.
  source = finetune_init.resolve(config, str(tmp_path / 'tune'))
  assert (source.kind, source.model_config.family) == ('hf', 'distilbert')
  result = finetune.finetune(config, str(tmp_path / 'tune'),
                             task=_topic_like_task(tokenizer_lib.load(hf_dir)))
  assert result['init_from'] == 'hf'
  assert result['new_parameters'] == ['classifier']
  expected = hf_interop.load_params(hf_dir, distilbert.Encoder(our_config(hf_dir)))
  jax.tree.map(np.testing.assert_array_equal, _params(str(tmp_path / 'tune'))['encoder'], expected)


# --- Pretraining through the shared trainer ------------------------------------------------

# training_util.TINY's widths, two layers, single-segment rows (DistilBERT has no NSP).
DISTILBERT_TINY = {'model.num_layers': 2, 'data.input_format': 'doc_sentences'}


def distilbert_config(**overrides):
  """configs/distilbert.py:tiny shrunk to training_util.TINY, plus `overrides` ('section__field')."""
  config = distilbert_configs.get_config('tiny')
  values = {**training_util.TINY, **DISTILBERT_TINY,
            **{k.replace('__', '.'): v for k, v in overrides.items()}}
  for key, value in values.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_configs_build_the_distilbert_mlm_objective():
  objective = objectives.make_objective(distilbert_config(), sentence_head=False)
  assert type(objective.model) is distilbert.EncoderForPreTraining
  base = distilbert_configs.get_config('base')
  assert (base.model.num_layers, base.model.hidden_size, base.model.num_heads,
          base.model.intermediate_size, base.model.vocab_size) == (6, 768, 12, 3072, 30522)
  assert base.data.input_format == 'doc_sentences' and not base.data.static_masking
  assert base.train.batch_size == 4096 and base.train.batch_size % base.train.grad_accum_steps == 0
  assert (base.optimizer.learning_rate, base.optimizer.weight_decay) == (5e-4, 0.0)
  assert base.optimizer.warmup_steps == 0.05 * base.train.num_steps
  families.get('distilbert').model_config(base.model)  # Validates.
  with pytest.raises(ValueError, match='Unknown DistilBERT size'):
    distilbert_configs.get_model_config('large')


def _sharded_child():
  """Runs in a subprocess with 8 CPU devices: parameters after 3 updates on 1 device and on 2x2x2."""
  from tests.test_sharding import expected_spec  # pylint: disable=g-import-not-at-top
  from encoders.layers import stack_layers  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_threefry_partitionable', True)
  _, initial, _ = training_util.train_on_mesh(distilbert_config(), jax.devices()[:1], steps=0)
  initial = jax.device_get(initial.params)

  def train(mesh_shape, devices, scan_layers):
    config = distilbert_config(optimizer__eps=1e-2, model__scan_layers=scan_layers)  # test_sharding.COMPARABLE.
    config.mesh.shape = mesh_shape
    start = stack_layers(initial) if scan_layers else initial
    step_sums, state, _ = training_util.train_on_mesh(config, devices, steps=3, start_params=start)
    return [float(sums['loss'][0] / sums['loss'][1]) for sums in step_sums], state

  report = {}
  for scan_layers in (False, True):
    reference, reference_state = train((1, 1, 1), jax.devices()[:1], scan_layers)
    losses, state = train((2, 2, 2), None, scan_layers)
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                            jax.device_get(state.params),
                                            jax.device_get(reference_state.params))))
    report[str(scan_layers)] = dict(reference=reference, sharded=losses, param_diff=diff)
    if not scan_layers:
      flat = flax.traverse_util.flatten_dict(state.params, sep='/')
      report['wrong_specs'] = [name for name, x in flat.items()
                               if tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
                               != expected_spec(name) + (None,) * (x.ndim - len(expected_spec(name)))]
  training_util.print_report(report)


@pytest.mark.slow
def test_2x2x2_mesh_gives_the_one_device_losses_and_parameters():
  report = training_util.child_report('test_distilbert', '_sharded_child')
  assert report.pop('wrong_specs') == []
  for run in report.values():
    assert run['sharded'] == pytest.approx(run['reference'], rel=1e-4)
    assert run['reference'][-1] != run['reference'][0]
    assert run['param_diff'] < 1e-5, run['param_diff']
  # Scanning the layers computes the same function as the unrolled stack.
  assert report['True']['reference'] == pytest.approx(report['False']['reference'], rel=1e-4)
