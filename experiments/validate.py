"""Validates a pretraining checkpoint on its whole held-out split (or `--batches` of it).

  python -m experiments.validate --workdir workdirs/albert_tiny            # latest step
  python -m experiments.validate --workdir DIR --step 2000 --batches 16

Training validates on `config.train.eval_steps` batches (8 x 32 rows at tiny scale), too few
to tell a sentence-head accuracy of 0.54 from chance; this reads every full validation batch
once, on this machine's devices whatever mesh wrote the checkpoint (as encoders/training/reload.py).
Prints the metrics and the rows read, and writes them to <workdir>/validation_<step>.json.
"""
import os

from absl import app, flags, logging
import jax
import numpy as np

from encoders import paths
from encoders.training import checkpointing, sharding, trainer

flags.DEFINE_string('workdir', None, 'A pretraining workdir.')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_integer('batches', 0, 'Validation batches to read (0: the whole split, once).')
flags.mark_flag_as_required('workdir')


def validate(workdir: str, step: int | None = None, batches: int = 0) -> tuple[int, dict]:
  """(step, metrics) of checkpoint `step` of `workdir` over its validation split."""
  manager = checkpointing.make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No complete checkpoint in {checkpointing.checkpoint_dir(workdir)}.')
  config = checkpointing.restore_config(manager, step)
  # This host's devices, sharded along fsdp (as reload.load_workdir), not the training mesh.
  fsdp = int(np.gcd(len(jax.local_devices()), config.model.hidden_size))
  config.mesh.shape = (1, fsdp, 1)
  mesh = sharding.make_mesh(config.mesh, jax.local_devices()[:fsdp])
  run = trainer.setup(config, mesh)
  state, _ = checkpointing.restore(manager, step, run.abstract_state, with_data=False)
  manager.close()
  make_eval_iterator = trainer.eval_iterator_factory(config, workdir, run.sentence_head)
  rows = []

  def counted():  # The eval batches, counting the rows read (for the metrics' standard errors).
    for batch in make_eval_iterator():
      rows.append(len(batch['input_ids']))
      yield batch
  result = trainer.evaluate(run.eval_fn, state, counted, batches or 2 ** 62, mesh)
  return step, {**result, 'rows': sum(rows) * jax.process_count()}


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # Quiet by default; -v 0 shows all logs.
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  step, result = validate(f.workdir, f.step, f.batches)
  print(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in result.items() if k != 'rows')
        + f', rows={result["rows"]}')
  if jax.process_index() == 0:
    paths.write_json(os.path.join(f.workdir, f'validation_{step}.json'), {'step': step, **result},
                     indent=1)


if __name__ == '__main__':
  app.run(main)
