"""Where a fine-tuned encoder starts: our pretraining workdir, an HF checkpoint, or random init.

`resolve(config, workdir)` finds the architecture and tokenizer (a family's registry entry
says which encoder a workdir gives: ELECTRA's, its discriminator); `initial_params(...)` fills
the task model's parameters: every encoder weight comes from the source (only BERT's pooler
may be new, when pretraining had no NSP head), the task head is always new.
"""
import dataclasses
import logging
import os
import re

import flax
import jax
import ml_collections
import numpy as np
from etils import epath

from encoders import families, hf_interop, paths
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import checkpointing

POOLER = ('encoder', 'pooler')


@dataclasses.dataclass
class Source:
  kind: str  # 'workdir', 'hf' or 'none'.
  path: str | None
  model_config: ml_collections.ConfigDict  # The `config.model` section of the encoder.
  tokenizer: tokenizer_lib.Tokenizer
  pretrained: dict | None = None  # A workdir's (or an extended HF source's) 'params' tree.


def is_hf_dir(path: str) -> bool:
  return epath.Path(path, 'config.json').exists()


def is_pretraining_workdir(path: str) -> bool:
  return epath.Path(checkpointing.checkpoint_dir(path)).is_dir()


def pretraining_checkpoint(path: str):
  manager = checkpointing.make_manager(path, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise ValueError(f'config.init_from={path!r}: no complete checkpoint in '
                     f'{checkpointing.checkpoint_dir(path)}; pretrain first, or give an HF '
                     "checkpoint directory, or 'none'.")
  return manager, step


def resolve(config, workdir: str) -> Source:
  """The encoder's source named by config.init_from ('none', a workdir or an HF directory)."""
  init_from = config.init_from
  if init_from in (None, '', 'none'):
    tokenizer = tokenizer_lib.get_tokenizer(config.data, workdir)
    model = ml_collections.ConfigDict(config.model.to_dict())
    if tokenizer.vocab_size != model.vocab_size:
      raise ValueError(f'config.model.vocab_size={model.vocab_size} but the tokenizer has '
                       f'{tokenizer.vocab_size} tokens: set --config.model.vocab_size.')
    model.pad_token_id = tokenizer.pad_id
    return Source('none', None, model, tokenizer)
  path = paths.absolute(init_from)
  if is_hf_dir(path):
    return Source('hf', path, hf_interop.read_model_config(path), tokenizer_lib.load(path))
  if is_pretraining_workdir(path):
    manager, step = pretraining_checkpoint(path)
    pretrain_config = checkpointing.restore_config(manager, step)
    family = families.of_config(pretrain_config)
    state, _ = checkpointing.restore(manager, step, None, with_data=False)
    manager.close()
    params = jax.tree.map(np.asarray, state['params'])
    if family.finetune_params:  # E.g. ELECTRA's discriminator, as a BERT encoder.
      params = families.resolve(family.finetune_params)(params)
    tokenizer = tokenizer_lib.get_tokenizer(pretrain_config.data, path)
    logging.info('Fine-tuning from %s step %d.', path, step)
    return Source('workdir', path, pretrain_config.model, tokenizer, params)
  raise ValueError(f'config.init_from={init_from!r} is neither an HF checkpoint directory '
                   '(config.json + model.safetensors) nor a pretraining workdir (checkpoints/), '
                   "nor 'none'.")


def hf_tensor_names(path: str) -> set[str]:
  index = os.path.join(path, 'model.safetensors.index.json')
  if epath.Path(index).exists():
    return set(paths.read_json(index)['weight_map'])
  return paths.safetensors_names(os.path.join(path, 'model.safetensors'))


def initial_params(source: Source, model, fresh_params: dict, rng: jax.Array,
                   reinit: bool = False) -> tuple[dict, list[str]]:
  """(params of `model` as numpy, names of the subtrees initialised fresh).

  `fresh_params` is the model's own random init (unboxed); it is returned as is for
  init_from='none' or reinit.
  """
  fresh = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, fresh_params))
  if source.kind == 'none' or reinit:
    return flax.traverse_util.unflatten_dict(fresh), ['all']
  heads = sorted({path[0] for path in fresh if path[0] != 'encoder'})
  has_pooler = any(path[:2] == POOLER for path in fresh)
  if source.kind == 'hf' and source.pretrained is None:  # Else read already (long_inputs.py).
    names = hf_tensor_names(source.path)
    new = list(heads)
    if has_pooler and not any(re.search(r'pooler(\.dense)?\.weight$', n) for n in names):
      new.append('/'.join(POOLER))
    return hf_interop.load_params(source.path, model, fresh=tuple(new), rng=rng), new
  pretrained = flax.traverse_util.flatten_dict(source.pretrained)
  params, new = {}, set(heads)
  for path, value in fresh.items():
    if path[0] != 'encoder':
      params[path] = value
    elif path in pretrained:
      if pretrained[path].shape != value.shape:
        raise ValueError(f'{"/".join(path)}: checkpoint shape {pretrained[path].shape}, model '
                         f'{value.shape}.')
      params[path] = pretrained[path].astype(value.dtype)
    elif path[:2] == POOLER:
      params[path] = value
      new.add('/'.join(POOLER))
    else:
      raise ValueError(f'{source.path} lacks the encoder parameter {"/".join(path)}.')
  return flax.traverse_util.unflatten_dict(params), sorted(new)
