"""Bottleneck adapters (encoders/adaptation/adapters.py): an untrained adapter changes nothing,
trained ones compute what forward hooks on transformers' own projections compute (torch, the
placement of Houlsby / Pfeiffer before the residual add and LayerNorm), and a fine-tune on
topic-task records moves only the adapters, the LayerNorms and the head."""
import os

import flax
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from encoders import albert, bert, families, hf_interop, module_hooks
from encoders.adaptation import adapters
from encoders.adaptation import finetune
from encoders.training import checkpointing
from tests.test_hf_interop import batch_inputs, max_diff, padded_batch, perturb_
from tests.test_lora import SMALL, _topic_config, hf_bert_with_tokenizer, hf_name_of  # pylint: disable=unused-import

TOL = 1e-4
# family -> (transformers base model and config, our encoder, its extra config overrides).
MODELS = {
    'bert': (transformers.BertModel, transformers.BertConfig, bert.Encoder, {}),
    'albert': (transformers.AlbertModel, transformers.AlbertConfig, albert.Encoder,
               dict(embedding_size=16, num_hidden_layers=3, num_hidden_groups=2,
                    hidden_act='gelu_new')),
}
TORCH_ACTIVATIONS = {'relu': torch.relu, 'gelu': torch.nn.functional.gelu,
                     'swish': torch.nn.functional.silu}


@pytest.fixture(scope='module', params=list(MODELS))
def hf_encoder(request, tmp_path_factory):
  """(family, a random transformers encoder with every weight perturbed, its directory)."""
  hf_class, config_class, _, overrides = MODELS[request.param]
  torch.manual_seed(0)
  model = hf_class(config_class(**{**SMALL, **overrides})).eval()
  perturb_(model)
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path, safe_serialization=True)
  return request.param, model, path


def ours(family: str, path: str):
  config = families.get(family).model_config(hf_interop.read_model_config(path))
  model = MODELS[family][2](config, add_pooler=True)
  return model, hf_interop.load_params(path, model)


def random_adapters(method, model, params, seed=0):
  """The method's adapters with every weight random (up included), as after training."""
  extra = method.init(jax.random.key(0), module_hooks.target_modules(model, params,
                                                                      method.module_targets))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (rng.normal(size=x.shape) * 0.3).astype(np.float32), extra)


@pytest.mark.parametrize('placement', list(adapters.PLACEMENTS))
def test_untrained_adapter_leaves_the_output_unchanged(hf_encoder, placement):
  """up = 0 at initialisation: y + up(act(down(y))) = y, so the hidden states are bit-identical."""
  family, _, path = hf_encoder
  model, params = ours(family, path)
  method = adapters.Adapters(placement, size=8)
  extra = method.init(jax.random.key(0), module_hooks.target_modules(model, params,
                                                                      method.module_targets))
  downs = [v for p, v in flax.traverse_util.flatten_dict(extra).items() if p[-2:] == ('down', 'kernel')]
  assert downs and all(np.abs(down).max() > 0 for down in downs)  # Only `up` starts at zero.
  input_ids, mask = padded_batch(99, 4, 0)
  batch = batch_inputs(input_ids, mask)
  base, _ = model.apply({'params': params}, **batch)
  adapted, _ = module_hooks.apply(method, model, params, extra, **batch)
  np.testing.assert_array_equal(adapted, base)


@pytest.mark.parametrize('placement,activation', [('houlsby', 'swish'), ('pfeiffer', 'gelu')])
def test_adapters_equal_hooks_on_transformers_projections(hf_encoder, placement, activation,
                                                         record_figure):
  """Reference: torch forward hooks on transformers' projection modules (BertSelfOutput.dense,
  BertOutput.dense; ALBERT's attention.dense, ffn_output) adding the same adapter to their output,
  which transformers then passes through dropout, the residual add and LayerNorm."""
  family, hf_model, path = hf_encoder
  model, params = ours(family, path)
  method = adapters.Adapters(placement, size=5, activation=activation)
  extra = random_adapters(method, model, params)
  modules = sorted(path for path in flax.traverse_util.flatten_dict(extra)
                   if path[-3:] == ('adapter', 'down', 'kernel'))
  assert len(modules) == {'bert': 2, 'albert': 2}[family] * (2 if placement == 'houlsby' else 1)
  names = hf_interop._hf_names(  # pylint: disable=protected-access
      flax.traverse_util.unflatten_dict({p[:-3] + ('kernel',): 0 for p in modules}),
      hf_interop.table_of(family))
  handles = []
  for module_path, name in names.items():
    weights = {k: torch.from_numpy(np.asarray(v)) for k, v in flax.traverse_util.flatten_dict(
        module_hooks.at(extra, module_path[:-1] + ('adapter',)), sep='/').items()}
    act = TORCH_ACTIVATIONS[activation]
    def hook(module, inputs, output, w=weights, act=act):
      hidden = act(output @ w['down/kernel'] + w['down/bias'])
      return output + hidden @ w['up/kernel'] + w['up/bias']
    handles.append(hf_model.get_submodule(name.removesuffix('.weight')).register_forward_hook(hook))
  input_ids, mask = padded_batch(99, 4, 0)
  try:
    with torch.no_grad():
      theirs = hf_model(input_ids=torch.from_numpy(input_ids),
                        attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  finally:
    for handle in handles:
      handle.remove()
  adapted, _ = module_hooks.apply(method, model, params, extra, **batch_inputs(input_ids, mask))
  diff = max_diff(adapted, theirs, np.broadcast_to(mask[..., None], theirs.shape))
  record_figure('max_abs_diff', diff, f'<= {TOL}')
  assert diff <= TOL
  base, _ = model.apply({'params': params}, **batch_inputs(input_ids, mask))
  assert max_diff(adapted, base) > 0.05  # The adapters changed the function.


@pytest.mark.slow
@pytest.mark.parametrize('placement', list(adapters.PLACEMENTS))
def test_adapter_finetune_moves_only_adapters_layernorms_and_head(hf_bert_with_tokenizer,
                                                                  placement, tmp_path):
  """A fine-tune of a transformers BERT on topic-task records: after its updates every frozen
  weight is bit-identical to the checkpoint's, while each adapter, LayerNorm and the head moved;
  the count of trained variables is the adapters' + LayerNorms' + head's, by hand."""
  source = hf_bert_with_tokenizer
  config = _topic_config(source)
  config.peft.update(method=placement, adapter_size=6, targets='')
  result = finetune.finetune(config, str(tmp_path))
  assert result['steps_run'] >= 4 and result['peft_adapter'] is None
  adapters_per_layer = 2 if placement == 'houlsby' else 1
  hidden, size, layers = 32, 6, 2
  layer_norms = 2 * hidden * (1 + 2 * layers)  # Embeddings' and two per layer: scale + bias.
  adapter = 2 * hidden * size + size + hidden
  assert result['trainable_parameters'] == (layers * adapters_per_layer * adapter + layer_norms
                                            + 12 * (hidden + 1))

  manager = checkpointing.make_manager(str(tmp_path), read_only=True)
  saved, _ = checkpointing.restore(manager, manager.latest_step(), None, with_data=False)
  saved = jax.tree.map(np.asarray, saved)
  tensors = load_file(os.path.join(source, 'model.safetensors'))
  layer_norm_tensors = 0
  for path, value in flax.traverse_util.flatten_dict(saved['params']['encoder']).items():
    name = '/'.join(path)
    original = hf_interop.from_hf(tensors[hf_name_of(name)], path, value.shape)
    if 'layer_norm' in name:
      assert not np.array_equal(value, original), name  # Trained.
      layer_norm_tensors += 1
    else:
      np.testing.assert_array_equal(value, original, err_msg=name)  # Frozen: bit for bit.
  assert layer_norm_tensors == 2 * (1 + 2 * layers)
  ups = [v for p, v in flax.traverse_util.flatten_dict(saved['adapter']).items()
         if p[-2:] == ('up', 'kernel')]
  assert len(ups) == layers * adapters_per_layer and all(np.abs(up).max() > 0 for up in ups)
