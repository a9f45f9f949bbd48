"""Pretrains an encoder: `python -m experiments.pretrain --config configs/bert.py:tiny --workdir DIR`.

Every config field can be overridden, e.g. `--config.model.num_layers=2`. Re-running the
same command resumes from the latest checkpoint in DIR.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from encoders.config import ConfigError
from encoders.training import trainer
from experiments import cli

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/bert.py:tiny.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the tokenizer.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if not flags.FLAGS['verbosity'].present:  # Quiet by default; -v 0 shows all logs.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except ConfigError as error:  # A bad config value: the message names the field.
    sys.exit(f'Config error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
