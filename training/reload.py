"""Reload a trained workdir for analysis: `load_workdir(workdir, step=None) -> (config, model, params)`.

The parameters are restored onto this host's local devices (sharded over them along
the fsdp axis by the run's logical-axis rules), whatever mesh wrote the checkpoint.
"""
import jax
import ml_collections
import numpy as np

from training import checkpointing, objectives, optimizer, sharding, trainer
from training import state as state_lib


def load_workdir(workdir: str, step: int | None = None):
  """(config, model, params) of checkpoint `step` (default: the latest) in `workdir`.

  `model` is the flax module (e.g. EncoderForPreTraining); call it as
  `model.apply({'params': params}, input_ids, segment_ids, ...)`.
  """
  manager = checkpointing.make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No complete checkpoint in {checkpointing.checkpoint_dir(workdir)}.')
  config = checkpointing.restore_config(manager, step)
  devices = jax.local_devices()
  fsdp = int(np.gcd(len(devices), config.model.hidden_size))
  mesh_config = ml_collections.ConfigDict(dict(shape=(1, fsdp, 1), rules=config.mesh.rules))
  mesh = sharding.make_mesh(mesh_config, devices[:fsdp])
  sentence_head = config.data.input_format in trainer.PAIR_FORMATS
  objective = objectives.make_objective(config, sentence_head)
  tx, _ = optimizer.make_optimizer(config.optimizer, config.train.num_steps)
  abstract_state, _ = state_lib.state_shardings(
      objective, tx, trainer.batch_shapes(config, sentence_head), mesh, sharding.rules(mesh_config))
  state, _ = checkpointing.restore(manager, step, abstract_state, with_data=False)
  manager.close()
  return config, objective.model, state.params
