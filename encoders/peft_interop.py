"""LoRA weights as a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).

`save` writes our LoRA weights and trained head so that `peft.PeftModel.from_pretrained`
loads them onto the transformers model of the same architecture (BertForSequenceClassification,
AlbertForTokenClassification, BertModel, ...); `load` reads such a directory (ours or one
PEFT wrote) into our LoRA weights. Names come from the family's hf_interop Table, so every
family with one works. PEFT stores per target module
`base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] (our A
[*in, r] and B [r, *out], flattened and transposed), and each module it trains in full
(`modules_to_save`: the task head) under `base_model.model.<module>.weight` / `.bias`.
PEFT's other variants (DoRA, LoRA biases, per-module ranks, ...) are refused by name.

  peft_interop.save(out_dir, model, 'bert', lora, extra, head_params)
  lora, extra, params = peft_interop.load(adapter_dir, model, 'bert', params)
"""
import os

import flax
import numpy as np
from etils import epath

from encoders import hf_interop, module_hooks, paths
from encoders.adaptation.lora import LoRA
from encoders.config import ConfigError

CONFIG = 'adapter_config.json'
WEIGHTS = 'adapter_model.safetensors'
PREFIX = 'base_model.model.'
# transformers class suffix -> PEFT task_type (which sets PEFT's own modules_to_save defaults).
TASK_TYPES = {'ForSequenceClassification': 'SEQ_CLS', 'ForTokenClassification': 'TOKEN_CLS',
              'ForQuestionAnswering': 'QUESTION_ANS', 'Model': 'FEATURE_EXTRACTION'}
# adapter_config.json fields that must have these values (anything else is a PEFT variant we lack).
PLAIN_LORA = {'peft_type': 'LORA', 'bias': 'none', 'use_dora': False, 'lora_bias': False,
              'fan_in_fan_out': False, 'rank_pattern': {}, 'alpha_pattern': {},
              'layers_to_transform': None, 'target_parameters': None, 'layer_replication': None,
              'trainable_token_indices': None}


def _prefix(model, family: str) -> str:
  """The tensor-name prefix of the transformers class that holds `model` ('bert.' or '')."""
  _, prefix = hf_interop.architecture(model, family)
  return f'{prefix}.' if prefix else ''


def _module_names(tree, family: str, prefix: str) -> dict[tuple[str, ...], str]:
  """Our parameter path -> transformers tensor name, for every leaf of `tree`."""
  return hf_interop._hf_names(tree, hf_interop.table_of(family), prefix)  # pylint: disable=protected-access


def _lora_modules(extra, key: str) -> list[tuple[str, ...]]:
  return sorted(path[:-2] for path in flax.traverse_util.flatten_dict(extra) if path[-2:] == (key, 'a'))


def save(out_dir: str, model, family: str, lora: LoRA, extra, trained, *,
         base_model_name_or_path: str | None = None) -> str:
  """Writes the adapter directory; returns the transformers architecture it loads onto.

  `trained` holds the base parameters trained in full (the task head, a new pooler):
  PEFT's `modules_to_save`.
  """
  arch, _ = hf_interop.architecture(model, family)
  prefix = _prefix(model, family)
  modules = _lora_modules(extra, lora.key)
  kernels = flax.traverse_util.unflatten_dict({path + ('kernel',): None for path in modules})
  names = _module_names(module_hooks.union(kernels, trained), family, prefix)
  tensors, targets = {}, []
  for path in modules:
    weights = module_hooks.at(extra, path + (lora.key,))
    a, b = np.asarray(weights['a'], np.float32), np.asarray(weights['b'], np.float32)
    module = names[path + ('kernel',)].removesuffix('.weight')
    targets.append(module)
    tensors[f'{PREFIX}{module}.lora_A.weight'] = np.ascontiguousarray(a.reshape(-1, lora.rank).T)
    tensors[f'{PREFIX}{module}.lora_B.weight'] = np.ascontiguousarray(b.reshape(lora.rank, -1).T)
  saved = set()
  for path, value in flax.traverse_util.flatten_dict(trained).items():
    tensors[PREFIX + names[path]] = hf_interop.to_hf(np.asarray(value), path)
    saved.add(names[path].rsplit('.', 1)[0])
  config = dict(PLAIN_LORA, r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                use_rslora=lora.rslora, target_modules=targets, modules_to_save=sorted(saved),
                task_type=next((t for s, t in TASK_TYPES.items() if arch.endswith(s)), None),
                base_model_name_or_path=base_model_name_or_path, init_lora_weights=True,
                inference_mode=True)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)  # Local or gs://.
  paths.save_safetensors(os.path.join(out_dir, WEIGHTS), tensors, metadata={'format': 'pt'})
  paths.write_json(os.path.join(out_dir, CONFIG), config, indent=2, sort_keys=True)
  return arch


def load(adapter_dir: str, model, family: str, params) -> tuple[LoRA, dict, dict]:
  """(LoRA config, its weights, `params` with the adapter's trained modules read in)."""
  config = hf_interop.read_json(os.path.join(adapter_dir, CONFIG))
  for field, plain in PLAIN_LORA.items():
    value = config.get(field, plain)
    if value != plain and (plain or value):  # None, {} and False all mean 'not used'.
      raise ConfigError(f'{adapter_dir}: {field}={config[field]!r} is a PEFT variant we do not '
                        f'implement (plain LoRA has {plain!r}).')
  rank = int(config['r'])
  names = _module_names(params, family, _prefix(model, family))
  by_name = {name: path for path, name in names.items()}
  linear = module_hooks.linear_modules(model, params)
  flat_params = flax.traverse_util.flatten_dict(params)
  lora_flat, read = {}, {}
  tensors = {name.removeprefix(PREFIX): value
             for name, value in paths.load_safetensors(os.path.join(adapter_dir, WEIGHTS)).items()}
  for name, tensor in tensors.items():
    module, _, kind = name.rpartition('.lora_')
    if kind in ('A.weight', 'B.weight'):
      path = by_name.get(f'{module}.weight', ())[:-1]
      if path not in linear:
        raise ValueError(f'{adapter_dir}: {name} adapts {module}, no linear module of the model.')
      in_dims, out_dims = linear[path]
      if kind == 'A.weight':
        lora_flat[path + ('lora', 'a')] = tensor.T.reshape(in_dims + (rank,))
      else:
        lora_flat[path + ('lora', 'b')] = tensor.T.reshape((rank,) + out_dims)
    elif name in by_name:
      path = by_name[name]
      read[path] = hf_interop.from_hf(tensor, path, flat_params[path].shape).astype(
          flat_params[path].dtype)
    else:
      raise ValueError(f'{adapter_dir}: {name} maps to no parameter of {type(model).__name__}.')
  root = module_hooks.encoder_root(params)
  modules = sorted({path[:-2] for path in lora_flat})
  lora = LoRA(rank=rank, alpha=float(config['lora_alpha']),
              dropout=float(config.get('lora_dropout', 0.0)),
              targets=tuple('/'.join(path[len(root):]) for path in modules),
              rslora=bool(config.get('use_rslora', False)))
  extra = flax.traverse_util.unflatten_dict(lora_flat)
  return lora, extra, flax.traverse_util.unflatten_dict({**flat_params, **read})
