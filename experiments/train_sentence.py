"""Trains a sentence encoder on corpus pairs; see configs/sentence.py for the commands.

  python -m experiments.train_sentence --config configs/sentence.py:minilm --workdir DIR
  python -m experiments.train_sentence --config configs/sentence.py:bert_tiny --workdir DIR \
      --config.init_from=<pretraining workdir | HF or sentence-transformers dir | minilm | none>

Prints held-out retrieval (nDCG@10, MRR@10, recall@k) of the untrained pooled encoder and of
the trained one; DIR/results.json holds both, DIR/export the sentence-transformers model.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from encoders.adaptation import sentence_train
from experiments import cli

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/sentence.py:minilm.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics, results.json and the export.')
flags.mark_flags_as_required(['config', 'workdir'])


def describe(metrics: dict) -> str:
  return ', '.join(f'{k}={v:.4f}' for k, v in metrics.items() if k not in ('queries', 'documents'))


def main(argv):
  if not flags.FLAGS['verbosity'].present:  # Quiet by default; -v 0 shows all logs.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = sentence_train.train_sentence(flags.FLAGS.config, flags.FLAGS.workdir)
  for split in sentence_train.EVAL_SPLITS:
    sizes = result['before'][split]
    print(f'{split} ({sizes["queries"]} queries, {sizes["documents"]} documents)')
    print(f'  before: {describe(result["before"][split])}')
    print(f'  after (step {result["best_step"]}): {describe(result["after"][split])}')
  if result['export']:
    print(f'sentence-transformers model: {result["export"]}')
  print(f'wall time: {result["wall_seconds"]:.1f} s')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
