"""Fine-tunes an encoder on a labelled task; see configs/finetune.py for the commands.

  python -m experiments.finetune --config configs/finetune.py:topic_tiny --workdir DIR \
      --config.init_from=<pretraining workdir | HF checkpoint dir | none>
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from encoders.adaptation import finetune
from encoders.config import ConfigError
from encoders.data import validate
from experiments import cli

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/finetune.py:topic.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the checkpoint, metrics and results.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if not flags.FLAGS['verbosity'].present:  # Quiet by default (orbax logs each save); -v 0 shows all.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    validate.check_data_config(flags.FLAGS.config)  # Before a tokenizer is trained or data read.
    result = finetune.finetune(flags.FLAGS.config, flags.FLAGS.workdir)
  except ConfigError as error:  # A bad config value: the message names the field.
    sys.exit(f'Config error: {error}')
  print('dev:', result['dev'])
  print('test:', result['test'])
  print(f'wall time: {result["wall_seconds"]:.1f} s')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
