"""Checkpoints with orbax: train state, per-process data-iterator state and the config.

Each checkpoint `<workdir>/checkpoints/<step>/` holds three items:
  state   the TrainState (params, optimizer state, step, rng), sharded arrays
  data    each process's input-iterator state, `process_<i>-of-<n>.json`
  config  the run's config as JSON
Saves are asynchronous and committed by an atomic rename, so an interrupted save
leaves only a `<step>.orbax-checkpoint-tmp*` directory, which restarts never pick.
"""
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from encoders import paths


class DataStateHandler(ocp.CheckpointHandler):
  """Per-process JSON files holding an input iterator's `get_state()` dict."""

  def _path(self, directory: epath.Path) -> epath.Path:
    return directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'

  def save(self, directory: epath.Path, args: 'DataStateSave'):
    self._path(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: 'DataStateRestore' = None) -> dict:
    path = self._path(directory)
    if not path.exists():
      raise ValueError(f'{path} does not exist: the data state was saved with another number '
                       'of processes; restore the state item alone (training.reload).')
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> Any:
    return None

  def structure(self, directory: epath.Path) -> Any:
    return None


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: dict


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(paths.absolute(workdir), 'checkpoints')


class _ReadOnlyNotice(logging.Filter):
  """Drops orbax's warning 'Given directory is read only=...': a read-only manager is what
  reloading for analysis asks for, not a problem to warn about."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


def make_manager(workdir: str, ckpt_config=None, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager over <workdir>/checkpoints keeping the last `keep` checkpoints."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=ckpt_config.keep if ckpt_config else None,
      enable_async_checkpointing=bool(ckpt_config and ckpt_config.async_save),
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      save_interval_steps=0 if read_only else 1,  # orbax warns when it has to set these itself.
      read_only=read_only)
  absl_logger, notice = logging.getLogger('absl'), _ReadOnlyNotice()  # orbax logs through absl.
  absl_logger.addFilter(notice)
  try:
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=('state', 'data', 'config'))
  finally:
    absl_logger.removeFilter(notice)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict,
         config: ml_collections.ConfigDict) -> None:
  """Starts saving checkpoint `step` (asynchronously when configured); skips a saved step."""
  if step in manager.all_steps():
    return
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=DataStateSave(data_state),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state,
            with_data: bool = True) -> tuple[Any, dict | None]:
  """(state placed by the shardings of `abstract_state`, data state or None)."""
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if with_data:
    items['data'] = DataStateRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], restored['data'] if with_data else None


def restore_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(restored['config'])
