"""Inputs longer than pretraining's positions: the encoder's absolute position table extended
before fine-tuning, so one row reads a whole long document.

`config.long_inputs.max_positions` (0: off) is the new table length (pretraining's offset rows,
RoBERTa's two padding rows, included); `method` fills the new rows from the n pretrained ones:
- 'interpolate' (Position Interpolation, Chen et al. 2023; ViT's resize of a learned table):
  position p' of n' reads the table at p' * n / n', linearly between the two nearest rows, so the
  longer input spans the range of positions the model was trained on;
- 'copy' (Longformer, Beltagy et al. 2020): the table repeated, position p' reads row p' mod n, so
  the local order the model learned repeats along the input.
The alternative that keeps the table, sliding windows with their logits averaged per record, is
`config.data.max_windows` (encoders/data/finetune_data.py).
"""
import dataclasses

import flax
import ml_collections
import numpy as np

from encoders import hf_interop
from encoders.adaptation import finetune_init
from encoders.config import ConfigError

METHODS = ('interpolate', 'copy')
TABLE = ('encoder', 'embeddings', 'position_embeddings', 'embedding')


def resize_table(table: np.ndarray, num_rows: int, method: str, offset: int = 0) -> np.ndarray:
  """[n + offset, H] -> [num_rows, H]: the first `offset` rows (not positions) kept as they are."""
  special, positions = table[:offset], table[offset:]
  n, new_n = len(positions), num_rows - offset
  if method == 'interpolate':
    where = np.arange(new_n) * (n / new_n)  # Beyond row n - 1: row n - 1 (np.interp clamps).
    resized = np.stack([np.interp(where, np.arange(n), column) for column in positions.T], axis=1)
  elif method == 'copy':
    resized = positions[np.arange(new_n) % n]
  else:
    raise ConfigError(f'config.long_inputs.method={method!r}: choose one of {METHODS}.')
  return np.concatenate([special, resized.astype(table.dtype)])


def _encoder_params(source: finetune_init.Source, family) -> dict:
  """{'encoder': params} of the source checkpoint at its own length (an HF directory is read
  into the family's encoder here; a workdir's tree is already loaded)."""
  if source.kind == 'workdir':
    return source.pretrained
  names = finetune_init.hf_tensor_names(source.path)
  has_pooler = any(name.endswith(('pooler.dense.weight', 'pooler.weight')) for name in names)
  encoder = family.models.Encoder(family.model_config(source.model_config), add_pooler=has_pooler)
  return {'encoder': hf_interop.load_params(source.path, encoder)}


def extend(source: finetune_init.Source, family, long_inputs) -> finetune_init.Source:
  """`source` with `long_inputs.max_positions` positions (unchanged when 0): its config's table
  length and, for a checkpoint, its position table resized by `long_inputs.method`."""
  max_positions, method = long_inputs.max_positions, long_inputs.method
  native = source.model_config.max_position_embeddings
  if not max_positions:
    return source
  if method not in METHODS:
    raise ConfigError(f'config.long_inputs.method={method!r}: choose one of {METHODS}.')
  if max_positions <= native:
    raise ConfigError(f'config.long_inputs.max_positions={max_positions}: the encoder already has '
                      f'{native} positions; give more, or 0 to keep them.')
  if source.model_config.get('position_embedding_type', 'absolute') != 'absolute':
    raise ConfigError(
        f'config.long_inputs.max_positions={max_positions}: the encoder reads '
        f'position_embedding_type={source.model_config.position_embedding_type!r}, a table of '
        f'2 x {native} - 1 distances that no method here extends; keep max_positions=0.')
  model_config = ml_collections.ConfigDict(source.model_config.to_dict())
  model_config.max_position_embeddings = max_positions
  if model_config.get('max_relative_positions', 0) == -1:  # Relative distances keep their reach.
    model_config.max_relative_positions = native
  if source.kind == 'none':
    return dataclasses.replace(source, model_config=model_config)
  params = flax.traverse_util.flatten_dict(_encoder_params(source, family))
  if TABLE not in params:  # Relative positions only (DeBERTa-v3): any length reads the same.
    return dataclasses.replace(source, model_config=model_config)
  params[TABLE] = resize_table(np.asarray(params[TABLE]), max_positions, method,
                               source.model_config.get('position_offset', 0))
  return dataclasses.replace(source, model_config=model_config,
                             pretrained=flax.traverse_util.unflatten_dict(params))
