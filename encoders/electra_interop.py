"""Import and export of Hugging Face ELECTRA checkpoints, one network per directory.

HF keeps ELECTRA's two networks apart: the discriminator as `ElectraForPreTraining`,
the generator as `ElectraForMaskedLM`, each with its own copy of the embeddings that
our `ElectraPair` stores once. Either network loads on its own; loading both checks
that their embeddings are the same tensors (a pair trained together). Exporting a pair
writes `<out>/discriminator` and `<out>/generator`.

  config.model = electra_interop.read_model_config(discriminator_dir, generator_dir)
  model = ElectraPair(ElectraConfig.from_config(config.model))
  params = electra_interop.load_params(model, discriminator_dir, generator_dir)
  electra_interop.save_pair(out_dir, model, params)

Names and layouts are `encoders/hf_interop.py`'s (the encoder layers are BERT's); only
the ELECTRA-specific modules (`embeddings_project` and the two heads) are added here.
"""
import dataclasses
import logging
import os
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from encoders import paths
from encoders.config import ConfigError
from encoders.configs import electra as electra_configs
from encoders.electra import ElectraConfig, ElectraPair, with_word_delta
from encoders.layers import stack_layers, unroll_layers
from encoders.hf_interop import (ENCODER_RULES, LEAF_NAMES, config_fields, encoder_fields,
                                 from_hf, read_json, read_tensors, to_hf)

NETWORKS = ('discriminator', 'generator')
ARCHITECTURES = {'discriminator': 'ElectraForPreTraining', 'generator': 'ElectraForMaskedLM'}
# Our head module path -> HF module name (HF puts the heads outside the 'electra.' prefix).
_HEAD_RULES = {
    'discriminator': ((r'discriminator_predictions/(dense|dense_prediction)',
                       r'discriminator_predictions.\1'),),
    'generator': ((r'generator_predictions/transform', 'generator_predictions.dense'),
                  (r'generator_predictions/layer_norm', 'generator_predictions.LayerNorm'),
                  (r'generator_predictions', 'generator_lm_head')),  # The decoder's bias.
}
# Buffers that HF may save, and the generator's decoder weight (tied to the word embeddings).
_SKIPPABLE = (r'embeddings\.position_ids', r'embeddings\.token_type_ids', r'generator_lm_head\.weight')
# The generator's fields in config.model; every other field is shared by both networks.
_GENERATOR_KEYS = {'hidden_size': 'generator_hidden_size', 'num_layers': 'generator_num_layers',
                   'num_heads': 'generator_num_heads',
                   'intermediate_size': 'generator_intermediate_size'}


def _network_fields(checkpoint_dir: str) -> dict:
  """Our encoder fields (+ embedding_size) from an HF ELECTRA `config.json`."""
  path = os.path.join(checkpoint_dir, 'config.json')
  hf = read_json(path)
  if hf.get('model_type') != 'electra':
    raise ConfigError(f'{path}: model_type={hf.get("model_type")!r}, expected "electra".')
  fields = encoder_fields(hf, path)
  fields['embedding_size'] = hf.get('embedding_size') or hf['hidden_size']
  return fields


def read_model_config(discriminator_dir: str | None = None,
                      generator_dir: str | None = None) -> ml_collections.ConfigDict:
  """The `config.model` section for HF ELECTRA checkpoints (either or both).

  With only a generator, the (absent) discriminator is given the generator's shape, so
  the pair is valid and its `generator` method is the checkpoint's network.
  """
  if discriminator_dir is None and generator_dir is None:
    raise ValueError('read_model_config needs discriminator_dir, generator_dir or both.')
  generator = _network_fields(generator_dir) if generator_dir else None
  discriminator = _network_fields(discriminator_dir) if discriminator_dir else generator
  if generator is not None:
    for field, value in discriminator.items():
      if field not in _GENERATOR_KEYS and generator.get(field) != value:
        raise ConfigError(
            f'{field}: the discriminator ({discriminator_dir}) has {value!r}, the generator '
            f'({generator_dir}) {generator.get(field)!r}; a pair must agree on it.')
  if generator is not None and generator['hidden_act'] != 'gelu':
    raise ConfigError(f'{generator_dir}: hidden_act={generator["hidden_act"]!r}; HF\'s generator '
                      "head always uses 'gelu', ours the encoder's hidden_act: only 'gelu' matches.")
  model = electra_configs.get_model_config('base')
  model.update(discriminator)
  model.update({ours: (generator or discriminator)[key] for key, ours in _GENERATOR_KEYS.items()})
  model.generator_size_fraction = model.generator_hidden_size / model.hidden_size
  ElectraConfig.from_config(model)  # Validates.
  return model


def _hf_name(path: tuple[str, ...], network: str) -> str:
  """Our param path -> the tensor's name in the HF checkpoint of `network`."""
  module = '/'.join(path[:-1])
  encoder_path = module.removeprefix(f'{network}_encoder/')
  rules = _HEAD_RULES[network]
  if module.startswith(('embeddings/', f'{network}_encoder/')):
    rules = ((r'embeddings_project', 'embeddings_project'),) + ENCODER_RULES
    rules = tuple((pattern, 'electra.' + replacement) for pattern, replacement in rules)
    module = encoder_path
  for pattern, replacement in rules:
    if re.fullmatch(pattern, module) and path[-1] in LEAF_NAMES:
      return f'{re.sub(pattern, replacement, module)}.{LEAF_NAMES[path[-1]]}'
  raise ValueError(f'No HF name for our parameter {"/".join(path)} ({network}).')


def _network_params(params: dict, network: str) -> dict:
  """The subtree of `network`: the shared embeddings (the discriminator's with its GDES word
  delta folded in) and its own `<network>_*` modules."""
  embeddings = with_word_delta(params) if network == 'discriminator' else params['embeddings']
  return {'embeddings': embeddings,
          **{name: tree for name, tree in params.items()
             if name.startswith(f'{network}_') and name != 'discriminator_word_delta'}}


def _unrolled(model: ElectraPair) -> ElectraPair:
  """`model` with scan_layers off in both networks: the layout of HF's numbered layers."""
  c = model.config
  return model.clone(config=dataclasses.replace(
      c, discriminator=dataclasses.replace(c.discriminator, scan_layers=False),
      generator=dataclasses.replace(c.generator, scan_layers=False)))


def _abstract_params(model: ElectraPair) -> dict:
  ids = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), ids))['params'])


def _check_config(config: ElectraConfig, network: str, checkpoint_dir: str) -> None:
  """Raises if `network` of the model differs from the checkpoint's architecture."""
  checkpoint = _network_fields(checkpoint_dir)
  ours = getattr(config, network)
  for field, value in checkpoint.items():
    mine = config.embedding_size if field == 'embedding_size' else getattr(ours, field)
    if field in ('hidden_dropout_rate', 'attention_dropout_rate', 'initializer_range'):
      continue  # Training settings, not the function the weights compute.
    if mine != value:
      name = _GENERATOR_KEYS.get(field, field) if network == 'generator' else field
      raise ConfigError(f'model.{name}={mine!r} but the {network} checkpoint {checkpoint_dir} '
                        f'has {value!r}; build the model from electra_interop.read_model_config().')


def _read_network(model: ElectraPair, network: str, checkpoint_dir: str, shapes: dict) -> dict:
  """{our param path: numpy array} for `network` from its HF checkpoint."""
  _check_config(model.config, network, checkpoint_dir)
  tensors = {f'electra.{name}' if name.startswith(('embeddings', 'encoder')) else name: tensor
             for name, tensor in read_tensors(checkpoint_dir, 'electra').items()}
  flat_shapes = flax.traverse_util.flatten_dict(_network_params(shapes, network))
  names = {path: _hf_name(path, network) for path in flat_shapes}
  missing = [f'{name} (ours: {"/".join(path)})' for path, name in names.items() if name not in tensors]
  if missing:
    raise ValueError(f'{checkpoint_dir} lacks {len(missing)} tensors of the {network}: {missing}.')
  tied = tensors.get('generator_lm_head.weight')
  if tied is not None and not np.array_equal(tied, tensors['electra.embeddings.word_embeddings.weight']):
    raise ValueError(f'{checkpoint_dir}: generator_lm_head.weight differs from the word embeddings; '
                     'untied generator decoders are not supported.')
  unused = sorted(set(tensors) - set(names.values()))
  unknown = [name for name in unused if not any(re.fullmatch(p, name) for p in _SKIPPABLE)]
  if unknown:
    raise ValueError(f'{checkpoint_dir} has tensors that map to no parameter of the {network} '
                     f'({ARCHITECTURES[network]} expected): {unknown}.')
  if unused:
    logging.info('electra_interop: not used from %s: %s', checkpoint_dir, unused)
  params = {}
  for path, name in names.items():
    shape, tensor = flat_shapes[path].shape, tensors[name]
    if tensor.size != np.prod(shape):
      raise ValueError(f'{checkpoint_dir}: {name} has shape {tensor.shape}, ours '
                       f'{"/".join(path)} needs {shape}.')
    params[path] = from_hf(tensor, path, shape).astype(flat_shapes[path].dtype)
  return params


def load_params(model: ElectraPair, discriminator_dir: str | None = None,
                generator_dir: str | None = None) -> dict:
  """Reads HF checkpoints into `model`'s 'params' collection (numpy arrays).

  With one directory, only that network's parameters (and the embeddings) are returned:
  enough for `model.apply(..., method='discriminator')` (or 'generator').
  """
  if discriminator_dir is None and generator_dir is None:
    raise ValueError('load_params needs discriminator_dir, generator_dir or both.')
  if model.config.embedding_gradients == 'gdes':
    raise ConfigError("model.embedding_gradients='gdes': an HF checkpoint has no GDES delta to "
                      "read (its discriminator's word table is the generator's plus the delta); "
                      "import with 'mlm+rtd', one network at a time.")
  if model.config.discriminator.scan_layers:  # HF numbers its layers: read unrolled, then stack.
    return stack_layers(load_params(_unrolled(model), discriminator_dir, generator_dir))
  shapes = _abstract_params(model)
  params = {}
  for network, checkpoint_dir in zip(NETWORKS, (discriminator_dir, generator_dir)):
    if checkpoint_dir is None:
      continue
    for path, value in _read_network(model, network, checkpoint_dir, shapes).items():
      if path in params and not np.array_equal(params[path], value):
        raise ValueError(
            f'{"/".join(path)} differs between {discriminator_dir} and {generator_dir}: the two '
            'checkpoints were not trained as a pair; load them into two models instead.')
      params[path] = value
  return flax.traverse_util.unflatten_dict(params)


def hf_config(config: ElectraConfig, network: str) -> dict:
  """The `config.json` contents of `network` in transformers' layout."""
  c = getattr(config, network)
  if c.position_offset:
    raise ConfigError(f'model.position_offset={c.position_offset}: HF ELECTRA has no offset.')
  if network == 'generator' and c.hidden_act != 'gelu':
    raise ConfigError(f'model.hidden_act={c.hidden_act!r}: HF ElectraForMaskedLM always uses '
                      "'gelu' in generator_predictions; export needs hidden_act='gelu'.")
  fields = config_fields(c)
  fields.update(architectures=[ARCHITECTURES[network]], model_type='electra',
                embedding_size=config.embedding_size, tie_word_embeddings=True)
  return fields


def save_checkpoint(out_dir: str, model: ElectraPair, params: dict, network: str) -> str:
  """Writes `network`'s parameters (float32) as an HF checkpoint; returns the architecture.

  As transformers' `save_pretrained`, the generator's tied decoder weight is left out.
  """
  if network not in NETWORKS:
    raise ValueError(f'network={network!r}: choose one of {NETWORKS}.')
  if model.config.discriminator.scan_layers:
    return save_checkpoint(out_dir, _unrolled(model), unroll_layers(nn.unbox(params)), network)
  config = hf_config(model.config, network)
  flat = flax.traverse_util.flatten_dict(_network_params(nn.unbox(params), network))
  tensors = {_hf_name(path, network): to_hf(jax.device_get(value), path)
             for path, value in flat.items()}
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  paths.save_safetensors(os.path.join(out_dir, 'model.safetensors'), tensors,
                         metadata={'format': 'pt'})
  paths.write_json(os.path.join(out_dir, 'config.json'), config, indent=2, sort_keys=True)
  return ARCHITECTURES[network]


def save_pair(out_dir: str, model: ElectraPair, params: dict) -> dict[str, str]:
  """Writes `<out_dir>/discriminator` and `<out_dir>/generator`; returns {network: directory}."""
  directories = {network: os.path.join(out_dir, network) for network in NETWORKS}
  for network, directory in directories.items():
    save_checkpoint(directory, model, params, network)
  return directories
