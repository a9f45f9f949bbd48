"""LoRA (encoders/adaptation/lora.py, module_hooks.py, peft_interop.py and its fine-tuning) against
PEFT 0.21.2 on transformers 4.57.6 (torch, CPU): initialisation, trainable-parameter counts,
adapters that PEFT wrote read into ours and ours loaded by PEFT (<= 1e-4), and a LoRA fine-tune on
topic-task records whose frozen weights must be bit-identical."""
import dataclasses
import json
import os
import shutil

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from encoders import families, hf_interop, module_hooks, peft_interop
from encoders.adaptation import finetune
from encoders.adaptation.lora import LoRA
from encoders.config import ConfigError, EncoderConfig
from encoders.configs import finetune as finetune_configs
from encoders.layers import Dense
from encoders.training import checkpointing
from tests.test_hf_interop import batch_inputs, max_diff, padded_batch, perturb_

TOL = 1e-4
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=42, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)
# family -> (transformers class, its config overrides, task kind, PEFT task type, LoRA targets as
# (transformers' module names, ours): attention and FFN projections, PEFT's default and more).
CASES = {
    'bert': ('BertForSequenceClassification', {}, 'classification', 'SEQ_CLS',
             (['query', 'value', 'intermediate.dense'], ('query', 'value', 'mlp/intermediate'))),
    'albert': ('AlbertForSequenceClassification',
               dict(embedding_size=16, num_hidden_layers=3, hidden_act='gelu_new',
                    classifier_dropout_prob=0.0),
               'classification', 'SEQ_CLS',
               (['query', 'value', 'ffn_output'], ('query', 'value', 'mlp/output'))),
    'roberta': ('RobertaForTokenClassification',
                dict(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1),
                'token_classification', 'TOKEN_CLS',
                (['key', 'attention.output.dense'], ('key', 'attention/output'))),
}
CONFIGS = {'bert': transformers.BertConfig, 'albert': transformers.AlbertConfig,
           'roberta': transformers.RobertaConfig}


@pytest.fixture(scope='module', params=list(CASES))
def hf_case(request, tmp_path_factory):
  """(family, a random transformers model with every weight perturbed, its directory)."""
  family = request.param
  arch, overrides = CASES[family][:2]
  torch.manual_seed(0)
  model = getattr(transformers, arch)(CONFIGS[family](**{**SMALL, 'num_labels': 3, **overrides}))
  perturb_(model.eval())
  path = str(tmp_path_factory.mktemp(family))
  model.save_pretrained(path, safe_serialization=True)
  return family, model, path


def ours(family: str, path: str):
  """Our task model of the case and its parameters read from the transformers directory."""
  config_model = hf_interop.read_model_config(path)
  model = families.get(family).task_model(CASES[family][2], families.get(family).model_config(
      config_model), 3, 'cls')
  return model, hf_interop.load_params(path, model)


def inputs(model):
  input_ids, mask = padded_batch(99, 4, model.config.pad_token_id)
  return input_ids, mask, batch_inputs(input_ids, mask)


def compare(ours_out, theirs, mask) -> float:
  """Max |difference|, over real tokens for per-token outputs."""
  if ours_out.ndim == 3:
    return max_diff(ours_out, theirs, np.broadcast_to(mask[..., None], ours_out.shape))
  return max_diff(ours_out, theirs)


def run_torch(model, input_ids, mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(input_ids),
                 attention_mask=torch.from_numpy(mask)).logits.numpy()


# --------------------------------------------------------------------------- initialisation
def test_init_is_peft_kaiming_uniform_with_b_zero():
  """A ~ U(-1/sqrt(in), 1/sqrt(in)) as PEFT draws it (kaiming_uniform_, a=sqrt(5)), B = 0."""
  fan_in, rank = 384, 16
  torch.manual_seed(0)
  peft_model = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(fan_in, 48)),
                                   peft.LoraConfig(r=rank, target_modules=['0']))
  theirs = peft_model.base_model.model[0].lora_A['default'].weight.detach().numpy().ravel()
  extra = LoRA(rank=rank).init(jax.random.key(0), {('m',): ((fan_in,), (48,))})
  a, b = np.asarray(extra['m']['lora']['a']).ravel(), np.asarray(extra['m']['lora']['b'])
  bound = 1 / np.sqrt(fan_in)
  for values in (a, theirs):
    assert bound * 0.99 < np.abs(values).max() <= bound
    assert np.std(values) == pytest.approx(bound / np.sqrt(3), rel=0.03)
  grid = np.linspace(-bound, bound, 101)  # Two-sample Kolmogorov-Smirnov distance.
  cdf = lambda v: np.searchsorted(np.sort(v), grid) / len(v)
  assert np.abs(cdf(a) - cdf(theirs)).max() < 0.04
  assert extra['m']['lora']['a'].shape == (fan_in, rank) and not b.any() and b.shape == (rank, 48)


def test_untrained_lora_is_the_base_model_and_merging_is_exact(hf_case):
  """B = 0 leaves the outputs bit-identical; with B != 0 the merged kernel W + A B alpha/r
  computes what the unmerged W x + (x A) B alpha/r does."""
  family, _, path = hf_case
  model, params = ours(family, path)
  _, _, batch = inputs(model)
  lora = LoRA(rank=4, alpha=12.0, targets=CASES[family][4][1])
  extra = lora.init(jax.random.key(0), module_hooks.target_modules(model, params, lora.targets))
  base = model.apply({'params': params}, **batch)
  np.testing.assert_array_equal(module_hooks.apply(lora, model, params, extra, **batch), base)
  extra = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), extra)
  unmerged = module_hooks.apply(lora, model, params, extra, **batch)
  merged = model.apply({'params': lora.merge(params, extra)}, **batch)
  assert max_diff(unmerged, base) > 0.05
  assert max_diff(merged, unmerged) <= 1e-5


# --------------------------------------------------------------------------- counts
@pytest.mark.parametrize('rank', [1, 8])
def test_trainable_parameters_equal_peft(hf_case, rank):
  """Our trained variables (LoRA weights + head, as finetune splits them) = PEFT's count."""
  family, hf_model, path = hf_case
  arch, _, _, task_type, (their_targets, our_targets) = CASES[family]
  peft_model = peft.get_peft_model(getattr(transformers, arch).from_pretrained(path),
                                   peft.LoraConfig(task_type=task_type, r=rank,
                                                   target_modules=their_targets))
  theirs, _ = peft_model.get_nb_trainable_parameters()

  model, params = ours(family, path)
  lora = LoRA(rank=rank, targets=our_targets)
  extra = lora.init(jax.random.key(0), module_hooks.target_modules(model, params, lora.targets))
  trained, frozen = module_hooks.split(params, lambda p: finetune.is_trained(p, lora, ['classifier']))
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert count(trained) + count(extra) == theirs
  assert count(frozen) + count(trained) == count(params)


# --------------------------------------------------------------------------- PEFT interop
@pytest.mark.parametrize('rslora', [False, True])
def test_peft_adapter_reads_into_ours(hf_case, rslora, tmp_path, record_figure):
  """PEFT's adapter (random A and B, a changed head) read by peft_interop.load: our outputs,
  unmerged and merged, equal PEFT's."""
  family, hf_model, path = hf_case
  arch, _, _, task_type, (their_targets, _) = CASES[family]
  torch.manual_seed(1)
  peft_model = peft.get_peft_model(
      getattr(transformers, arch).from_pretrained(path),
      peft.LoraConfig(task_type=task_type, r=4, lora_alpha=12, target_modules=their_targets,
                      use_rslora=rslora, init_lora_weights=False)).eval()
  with torch.no_grad():  # The head PEFT trains (modules_to_save) now differs from the base one.
    peft_model.base_model.model.classifier.modules_to_save['default'].weight.add_(0.5)
  peft_model.save_pretrained(str(tmp_path))

  model, params = ours(family, path)
  lora, extra, params = peft_interop.load(str(tmp_path), model, family, params)
  assert (lora.rank, lora.alpha, lora.rslora) == (4, 12.0, rslora)
  input_ids, mask, batch = inputs(model)
  theirs = run_torch(peft_model, input_ids, mask)
  unmerged = module_hooks.apply(lora, model, params, extra, **batch)
  merged = model.apply({'params': lora.merge(params, extra)}, **batch)
  diff = max(compare(unmerged, theirs, mask), compare(merged, theirs, mask))
  record_figure('max_abs_diff', diff, f'<= {TOL}')
  assert diff <= TOL
  assert compare(unmerged, run_torch(hf_model, input_ids, mask), mask) > 0.05  # LoRA mattered.


def test_our_adapter_loads_in_peft(hf_case, tmp_path, record_figure):
  """peft_interop.save of random LoRA weights and a changed head: PeftModel.from_pretrained on
  the transformers model gives our outputs; reading the directory back gives our arrays."""
  family, hf_model, path = hf_case
  arch, _, _, task_type, (_, our_targets) = CASES[family]
  model, params = ours(family, path)
  lora = LoRA(rank=3, alpha=5.0, targets=our_targets)
  extra = lora.init(jax.random.key(0), module_hooks.target_modules(model, params, lora.targets))
  extra = jax.tree.map(lambda x: np.asarray(x) + np.random.default_rng(0).normal(size=x.shape)
                       .astype(np.float32) * 0.3, extra)
  head = jax.tree.map(lambda x: np.asarray(x) + 0.5, {'classifier': params['classifier']})
  params = module_hooks.union(module_hooks.split(params, lambda p: p[0] == 'classifier')[1], head)
  assert peft_interop.save(str(tmp_path), model, family, lora, extra, head) == arch
  config = json.load(open(tmp_path / 'adapter_config.json'))
  assert config['task_type'] == task_type and config['modules_to_save'] == ['classifier']

  peft_model = peft.PeftModel.from_pretrained(getattr(transformers, arch).from_pretrained(path),
                                              str(tmp_path)).eval()
  input_ids, mask, batch = inputs(model)
  ours_out = module_hooks.apply(lora, model, params, extra, **batch)
  diff = compare(ours_out, run_torch(peft_model, input_ids, mask), mask)
  record_figure('max_abs_diff', diff, f'<= {TOL}')
  assert diff <= TOL
  assert compare(ours_out, run_torch(hf_model, input_ids, mask), mask) > 0.05

  reread, extra_back, params_back = peft_interop.load(str(tmp_path), model, family, params)
  assert reread == LoRA(rank=3, alpha=5.0, targets=reread.targets)
  jax.tree.map(np.testing.assert_array_equal, extra_back, extra)
  jax.tree.map(np.testing.assert_array_equal, params_back, jax.tree.map(np.asarray, params))


def test_peft_variants_we_lack_are_refused(hf_case, tmp_path):
  family, _, path = hf_case
  arch, _, _, task_type, (their_targets, _) = CASES[family]
  peft.get_peft_model(getattr(transformers, arch).from_pretrained(path), peft.LoraConfig(
      task_type=task_type, r=2, target_modules=their_targets, use_dora=True)).save_pretrained(
          str(tmp_path))
  model, params = ours(family, path)
  with pytest.raises(ConfigError, match='use_dora=True'):
    peft_interop.load(str(tmp_path), model, family, params)


# --------------------------------------------------------------------------- dropout, targets
class _Projection(nn.Module):
  @nn.compact
  def __call__(self, x):
    return Dense(EncoderConfig(hidden_size=6, num_heads=1), 6, ('embed', 'mlp'), name='proj')(x)


class _OneProjection(nn.Module):
  """encoder/proj: one Dense, so LoRA's dropout can be checked element by element."""
  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    del deterministic
    return _Projection(name='encoder')(x)


def test_lora_dropout_drops_the_input_of_a_only():
  """PEFT: y = x W + dropout(x) A B alpha/r. With A = B = I (r = in = out), the LoRA path is
  dropout(x) * alpha/r: each element 0 or x / (1 - p), about p of them 0; the base path keeps x."""
  model = _OneProjection()
  x = jnp.arange(1.0, 1.0 + 200 * 6).reshape(200, 6) / 100
  params = nn.unbox(model.init(jax.random.key(0), x)['params'])
  lora = LoRA(rank=6, alpha=3.0, dropout=0.25, targets=('proj',))
  extra = {'encoder': {'proj': {'lora': {'a': jnp.eye(6), 'b': jnp.eye(6)}}}}
  base = model.apply({'params': params}, x)
  kept = (module_hooks.apply(lora, model, params, extra, x, deterministic=False,
                             rngs={'dropout': jax.random.key(1)}) - base) / lora.scale
  scaled = np.asarray(x) / 0.75
  is_zero, is_kept = np.isclose(kept, 0, atol=1e-3), np.isclose(kept, scaled, rtol=1e-4)
  assert np.all(is_zero | is_kept)
  assert is_zero.mean() == pytest.approx(0.25, abs=0.04)
  deterministic = module_hooks.apply(lora, model, params, extra, x) - base
  np.testing.assert_allclose(deterministic / lora.scale, x, rtol=1e-4)


def test_unknown_target_is_named():
  config = EncoderConfig(vocab_size=99, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8)
  model = families.get('bert').task_model('classification', config, 2)
  params = nn.unbox(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
  with pytest.raises(ConfigError, match=r"'qeury' names no linear module.*'attention/query'"):
    module_hooks.target_modules(model, params, ('qeury',))
  assert sorted(module_hooks.target_modules(model, params, ('output', 'dense'))) == [
      ('encoder', 'layers', 'layer_0', 'attention', 'output'),
      ('encoder', 'layers', 'layer_0', 'mlp', 'output'), ('encoder', 'pooler', 'dense')]


# --------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope='module')
def hf_bert_with_tokenizer(minilm_dir, tmp_path_factory):
  """A random 2-layer BERT (MiniLM's vocabulary, a pooler) saved with MiniLM's tokenizer files."""
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(**{
      **SMALL, 'vocab_size': 30522, 'max_position_embeddings': 64}))
  perturb_(model.eval())
  path = str(tmp_path_factory.mktemp('bert_tok'))
  model.save_pretrained(path, safe_serialization=True)
  for name in ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json'):
    shutil.copy(os.path.join(minilm_dir, name), path)
  return path


def _topic_config(init_from: str):
  """The topic task on its first 48 records of each split: CLS pooling (BertForSequenceClassification)."""
  config = finetune_configs.get_config('topic')
  config.init_from = init_from
  config.data.update(max_examples=48, max_length=32, max_windows=1)
  config.train.update(batch_size=8, eval_batch_size=16, num_epochs=1.0, progress_bar=False)
  config.optimizer.update(learning_rate=1e-2, warmup_fraction=0.0)
  config.peft.update(method='lora', rank=4, alpha=8.0, targets='query,value,mlp/output')
  return config


@pytest.mark.slow
def test_lora_finetune_trains_only_lora_and_head_and_exports_to_peft(hf_bert_with_tokenizer,
                                                                     tmp_path, record_figure):
  """A LoRA fine-tune of a transformers BERT on topic-task records: its trainable count is PEFT's
  for the same config, its optimizer holds Adam's two moments of those only, every frozen weight
  is bit-identical after the updates, the saved kernels are W + A B alpha/r, and the exported
  adapter, loaded by PEFT on the transformers model, predicts the saved model's logits."""
  source = hf_bert_with_tokenizer
  config = _topic_config(source)
  result = finetune.finetune(config, str(tmp_path))
  assert result['steps_run'] >= 4 and result['peft'] == 'lora'

  hf_model = transformers.BertForSequenceClassification.from_pretrained(source, num_labels=12)
  their_config = peft.LoraConfig(task_type='SEQ_CLS', r=4, lora_alpha=8,
                                 target_modules=['query', 'value', 'output.dense'],
                                 exclude_modules=['attention.output.dense'])
  theirs, _ = peft.get_peft_model(hf_model, their_config).get_nb_trainable_parameters()
  assert result['trainable_parameters'] == theirs == 2 * 4 * (32 + 32 + 32 + 32 + 37 + 32) + 12 * 33
  assert 8 * theirs <= result['optimizer_state_bytes'] <= 8 * theirs + 64  # f32 mu, nu (+ counts).

  manager = checkpointing.make_manager(str(tmp_path), read_only=True)
  saved, _ = checkpointing.restore(manager, manager.latest_step(), None, with_data=False)
  saved = jax.tree.map(np.asarray, saved)
  tensors = load_file(os.path.join(source, 'model.safetensors'))
  lora = finetune.peft_method(config.peft)
  moved, without_lora = 0, {}
  for path, value in flax.traverse_util.flatten_dict(saved['params']['encoder']).items():
    name = '/'.join(path)
    original = hf_interop.from_hf(tensors[hf_name_of(name)], path, value.shape)
    without_lora[('encoder',) + path] = original
    weights = module_hooks.at(saved['lora'], ('encoder',) + path[:-1] + ('lora',))
    if weights is None or path[-1] != 'kernel':
      np.testing.assert_array_equal(value, original, err_msg=name)  # Frozen: bit for bit.
    else:
      update = np.tensordot(weights['a'], weights['b'], 1) * lora.scale
      np.testing.assert_allclose(value, original + update, atol=1e-6, err_msg=name)
      moved += np.abs(weights['b']).max() > 0
  assert moved == 6  # Every B left zero.

  adapter = result['peft_adapter']
  peft_model = peft.PeftModel.from_pretrained(
      transformers.BertForSequenceClassification.from_pretrained(source, num_labels=12),
      adapter).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(source)
  encoded = tokenizer(['The river flows through the old city.', 'A goal in the final minute.'],
                      padding='max_length', max_length=32, return_tensors='np')
  model = families.get('bert').task_model('classification', EncoderConfig.from_config(
      hf_interop.read_model_config(source)), 12, 'cls')
  ours_out = model.apply({'params': saved['params']},
                         **batch_inputs(encoded['input_ids'], encoded['attention_mask']))
  diff = max_diff(ours_out, run_torch(peft_model, encoded['input_ids'], encoded['attention_mask']))
  record_figure('max_abs_diff', diff, f'<= {TOL}')
  assert diff <= TOL
  without_lora = module_hooks.union(flax.traverse_util.unflatten_dict(without_lora),
                                    {'classifier': saved['params']['classifier']})
  assert max_diff(ours_out, model.apply({'params': without_lora}, **batch_inputs(
      encoded['input_ids'], encoded['attention_mask']))) > 1e-3  # The trained LoRA matters.


def hf_name_of(name: str) -> str:
  """Our encoder path ('layers/layer_0/mlp/output/kernel') -> its transformers tensor name."""
  names = hf_interop._hf_names(  # pylint: disable=protected-access
      flax.traverse_util.unflatten_dict({tuple(name.split('/')): 0}), hf_interop.BERT)
  return next(iter(names.values()))


@pytest.mark.slow
def test_lora_on_a_scanned_stack_is_tuned_unrolled(minilm_dir, tmp_path):
  """init_from=none with scan_layers: the stack is built unrolled, LoRA on each layer."""
  config = _topic_config('none')
  config.data.tokenizer_path = minilm_dir
  config.model.update(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                      max_position_embeddings=64, vocab_size=30522, scan_layers=True)
  config.peft.targets = 'value'
  result = finetune.finetune(config, str(tmp_path))
  assert result['trainable_parameters'] == 2 * 4 * (32 + 32) + 12 * 33  # The random pooler is frozen.
  assert np.isfinite(result['test']['accuracy'])


@pytest.mark.parametrize('name', list(families.FAMILIES))
def test_lora_on_every_linear_module_of_every_registered_family(name):
  """Each registered family's fine-tuning model (its tiny config), LoRA on every linear module of
  its encoder: B = 0 changes nothing, and the merged kernels compute the unmerged outputs (which
  fails for a module that uses its kernel in any way but x W)."""
  from tests.test_families import _config_module  # pylint: disable=g-import-not-at-top
  family = families.get(name)
  tuned = families.finetuning(family)
  config = dataclasses.replace(tuned.model_config(_config_module(family).get_config('tiny').model),
                               scan_layers=False, hidden_dropout_rate=0.0,
                               attention_dropout_rate=0.0)
  model = tuned.task_model('classification', config, 3, 'mean')
  ids = jax.random.randint(jax.random.key(1), (2, 12), 5, config.vocab_size)
  params = nn.unbox(model.init(jax.random.key(0), ids)['params'])
  linear = module_hooks.linear_modules(model, params)
  targets = tuple('/'.join(path[1:]) for path in linear if path[0] == 'encoder')
  assert len(targets) >= 4 * config.num_layers or name == 'albert'
  lora = LoRA(rank=2, alpha=4.0, targets=targets)
  extra = lora.init(jax.random.key(2), module_hooks.target_modules(model, params, targets))
  run = jax.jit(lambda p, e: module_hooks.apply(lora, model, p, e, ids))
  base = run(params, {})
  np.testing.assert_array_equal(run(params, extra), base)
  extra = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), extra)
  unmerged = run(params, extra)
  merged = run(lora.merge(params, extra), {})
  assert max_diff(unmerged, base) > 1e-3
  assert max_diff(merged, unmerged) <= 1e-5 * max(1.0, float(np.abs(base).max()))


def test_lora_vs_full_arms_are_the_readme_presets():
  """experiments/lora_vs_full.py: full = topic_minilm; the LoRA arms differ from it only in
  config.peft and the learning rate, and target what their names say."""
  from experiments import lora_vs_full  # pylint: disable=g-import-not-at-top
  configs = {}
  for arm, (preset, overrides) in lora_vs_full.ARMS.items():
    configs[arm] = finetune_configs.get_config(preset)
    configs[arm].peft.update(overrides)
  assert finetune.peft_method(configs['full'].peft) is None
  assert finetune.peft_method(configs['lora_query_value'].peft) == LoRA(8, 16.0)
  assert finetune.peft_method(configs['lora'].peft).targets == (
      'query', 'key', 'value', 'attention/output', 'mlp/intermediate', 'mlp/output')
  for arm in ('lora', 'lora_query_value'):
    config = configs[arm].to_dict()
    assert config.pop('peft') != configs['full'].peft.to_dict()
    assert config['optimizer'].pop('learning_rate') == 1e-3
    full = configs['full'].to_dict()
    del full['peft'], full['optimizer']['learning_rate']
    assert config == full, arm
