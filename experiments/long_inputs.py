"""Documents longer than 512 tokens: truncation, sliding windows and extended positions compared.

  python -m experiments.long_inputs --out workdirs/long_inputs --results docs/long_inputs

The task (encoders/data/long_documents.py): the topic of a document whose first `--lead_tokens`
tokens are articles of other topics and whose last `--evidence` articles carry the label, every
document at most `--length` - 2 tokens. Every arm fine-tunes the installed all-MiniLM-L6-v2
(512 positions; `--init_from` for another HF directory or workdir) with the topic_minilm recipe
(mean pooling, lr 1e-4, dev picks the checkpoint) on the same documents:
- truncate: the first 512 tokens of each document;
- windows: 512-token windows every 256 tokens, each trained with its document's label, the
  logits of a document's windows averaged at evaluation;
- interpolate / copy: the position table extended to `--length` (encoders/adaptation/long_inputs.py)
  and each document read whole.
Each arm runs in <out>/<arm>/seed_<s>; an existing results.json is read, not rerun. Writes
results.json, results.md and long_inputs.png into --results.
"""
import os
import sys

import numpy as np
from absl import app, flags, logging
from etils import epath

from encoders import hf_interop, paths
from encoders.adaptation import finetune, finetune_init
from encoders.analysis import files
from encoders.configs import finetune as finetune_configs
from encoders.data import finetune_data, long_documents

NATIVE = 512
# Arm -> (row length, windows per document (0: all), config.long_inputs.method or None).
ARMS = {'truncate': (NATIVE, 1, None), 'windows': (NATIVE, 0, None),
        'interpolate': (None, 1, 'interpolate'), 'copy': (None, 1, 'copy')}
SPLITS = ('train', 'dev', 'test')


def define_flags() -> None:
  """The command line (defined when run, so that importing this module defines no flags)."""
  flags.DEFINE_string('out', None, 'Directory of the runs (<out>/<arm>/seed_<s>).')
  flags.DEFINE_string('results', 'docs/long_inputs', 'Where results.json/.md and the plot go.')
  flags.DEFINE_string('init_from', None, 'HF directory or workdir; default: the installed MiniLM.')
  flags.DEFINE_integer('length', 768, 'Tokens per row of the extended arms (specials included).')
  flags.DEFINE_integer('lead_tokens', 520, 'Tokens of other topics before the evidence.')
  flags.DEFINE_integer('evidence', 2, 'Articles of the labelled topic at the end.')
  flags.DEFINE_list('documents', ['160', '64', '160'], 'Documents of train, dev and test.')
  flags.DEFINE_integer('seeds', 1, 'Fine-tuning seeds per arm.')
  flags.DEFINE_integer('batch_size', 8, 'Rows per step.')
  flags.DEFINE_float('epochs', 3.0, 'Passes over the training rows.')
  flags.DEFINE_list('arms', list(ARMS), 'Arms to run.')
  flags.mark_flags_as_required(['out'])


def arm_config(arm: str, init_from: str, length: int, seed: int, batch_size: int, epochs: float):
  row_length, max_windows, method = ARMS[arm]
  config = finetune_configs.get_config('topic_minilm')
  config.init_from = init_from
  config.seed = seed
  config.data.max_length = row_length or length
  config.data.max_windows = max_windows
  config.data.doc_stride = NATIVE // 2
  config.train.batch_size = batch_size
  config.train.eval_batch_size = batch_size
  config.train.num_epochs = epochs
  if method:
    config.long_inputs.max_positions = length
    config.long_inputs.method = method
  return config


def build_documents(records: dict, tokenizer, counts: list[int], lead_tokens: int,
                    evidence: int, length: int) -> dict[str, long_documents.Documents]:
  """The same documents for every arm (fixed data seeds), in the source's tokens."""
  return {s: long_documents.build(records[s], tokenizer, n, lead_tokens, evidence, length - 2,
                                  seed=1000 + i)
          for i, (s, n) in enumerate(zip(SPLITS, counts))}


def task_of(config, documents, tokenizer, names) -> finetune_data.Task:
  made = {s: finetune_data.classification_split(
      d.texts, d.labels, tokenizer, config.data.max_length, config.data.doc_stride,
      config.data.max_windows) for s, d in documents.items()}
  return finetune_data.Task('classification', names, made)


def summary(results: dict, documents: dict, f) -> str:
  rows = ['| arm | row length | rows (train) | test accuracy | test macro-F1 | dev accuracy | '
          'wall time |', '|---|---|---|---|---|---|---|']
  for arm, runs in results.items():
    accuracy = [r['test']['accuracy'] for r in runs]
    macro = [r['test']['macro_f1'] for r in runs]
    spread = lambda v: f'{np.mean(v):.3f}' + (f' ± {np.std(v):.3f}' if len(v) > 1 else '')
    rows.append(f'| {arm} | {ARMS[arm][0] or f.length} | {runs[0]["train_rows"]:,} | '
                f'{spread(accuracy)} | {spread(macro)} | '
                f'{np.mean([r["dev"]["accuracy"] for r in runs]):.3f} | '
                f'{np.mean([r["wall_seconds"] for r in runs]) / 60:.1f} min |')
  test = documents['test']
  facts = (f'\n\nDocuments (train/dev/test): {", ".join(f.documents)}; test documents are '
           f'{np.mean(test.num_tokens):.0f} tokens on average (min {min(test.num_tokens)}, max '
           f'{max(test.num_tokens)}), the evidence starting after {np.mean(test.lead_tokens):.0f} '
           f'(min {min(test.lead_tokens)}). Chance: 1/12 = 0.083; the majority class: '
           f'{np.bincount(test.labels).max() / len(test.labels):.3f}. Seeds: {f.seeds}.')
  return '\n'.join(rows) + facts + '\n'


def plot(results: dict, test_labels: list[int], path) -> None:
  figure, axes = files.figure(size=(6, 3.5))
  axis = axes[0, 0]
  arms = list(results)
  means = [np.mean([r['test']['accuracy'] for r in results[a]]) for a in arms]
  errors = [np.std([r['test']['accuracy'] for r in results[a]]) for a in arms]
  axis.bar(arms, means, yerr=errors, color=['#999999', '#6699cc', '#cc6633', '#cc9933'][:len(arms)])
  axis.axhline(1 / 12, color='black', linestyle=':', label='chance (1/12)')
  majority = np.bincount(test_labels).max() / len(test_labels)
  axis.axhline(majority, color='black', linestyle='--', label='majority class')
  axis.set_ylabel('test accuracy')
  axis.set_title('Topic of >512-token documents read at their end (MiniLM)')
  axis.legend()
  files.save_figure(path, figure)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  unknown = sorted(set(f.arms) - set(ARMS))
  if unknown or len(f.documents) != 3:
    raise app.UsageError(f'--arms: choose from {list(ARMS)} (got {unknown}); --documents: '
                         'three counts (train, dev, test).')
  init_from = paths.absolute(f.init_from) if f.init_from else hf_interop.installed_minilm_dir()
  out = paths.absolute(f.out)
  base = arm_config('truncate', init_from, f.length, 0, f.batch_size, f.epochs)
  tokenizer = finetune_init.resolve(base, out).tokenizer
  records, names = finetune_data.topic_records(base.data, base.data.dev_fraction)
  documents = build_documents(records, tokenizer, [int(n) for n in f.documents], f.lead_tokens,
                              f.evidence, f.length)
  results = {}
  for arm in f.arms:
    results[arm] = []
    for seed in range(f.seeds):
      workdir = os.path.join(out, arm, f'seed_{seed}')
      if epath.Path(workdir, 'results.json').exists():
        results[arm].append(paths.read_json(os.path.join(workdir, 'results.json')))
        continue
      config = arm_config(arm, init_from, f.length, seed, f.batch_size, f.epochs)
      results[arm].append(finetune.finetune(config, workdir,
                                            task_of(config, documents, tokenizer, names)))
  table = summary(results, documents, f)
  command = 'python -m experiments.long_inputs ' + ' '.join(sys.argv[1:])
  folder = files.folder(f.results)
  files.save_json(folder / 'results.json', dict(command=command, arms=results))
  (folder / 'results.md').write_text(
      f'### Documents longer than 512 tokens (MiniLM, topic read at the end)\n\n`{command}`\n\n{table}')
  plot(results, documents['test'].labels, folder / 'long_inputs.png')
  print(table)


if __name__ == '__main__':
  define_flags()
  app.run(main)
