"""Multi-task fine-tuning of one encoder on several suite tasks; see configs/multitask.py.

  python -m experiments.finetune_multitask --config configs/multitask.py:suite_tiny --workdir DIR \
      --config.init_from=<pretraining workdir | HF checkpoint dir | none>
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from encoders.adaptation import multitask
from encoders.config import ConfigError
from experiments import cli

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/multitask.py:suite_tiny.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the checkpoint, metrics and results.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if not flags.FLAGS['verbosity'].present:  # Quiet by default (orbax logs each save); -v 0 shows all.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = multitask.finetune_multitask(flags.FLAGS.config, flags.FLAGS.workdir)
  except ConfigError as error:  # A bad config value: the message names the field.
    sys.exit(f'Config error: {error}')
  for name in result['tasks']:
    print(f'{name}: dev {result["dev"][name]}')
    print(f'{name}: test {result["test"][name]}')
  print(f'steps per task: {result["steps_per_task"]}; test mean score {result["test_score"]:.2f}')
  print(f'wall time: {result["wall_seconds"]:.1f} s')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
