"""LoRA against full fine-tuning of all-MiniLM-L6-v2 on the topic task: accuracy and optimizer memory.

  python -m experiments.lora_vs_full --out workdirs/lora_vs_full --results docs/lora

Every arm starts from the installed all-MiniLM-L6-v2 (`--init_from` for another HF directory)
with the README's recipe (mean pooling, 64-token rows, batch 32, 2 epochs, dev picks the
checkpoint): `full` is configs/finetune.py:topic_minilm (every weight, lr 1e-4); `lora` is
topic_minilm_lora (LoRA r=8, alpha=16 on every linear layer of the encoder, and the head, lr
1e-3); `lora_query_value` is the same on PEFT's BERT default targets only. Each arm runs in
<out>/<arm>; an arm whose results.json exists is read, not rerun. `--max_train_examples`
trains every arm on the same first N training records (0: all). Writes results.json (per arm:
test and dev metrics, trained and frozen parameters, optimizer-state bytes, wall time; and the
command) and results.md into --results.
"""
import os
import sys

from absl import app, flags, logging
from etils import epath

from encoders import hf_interop, paths
from encoders.adaptation import finetune
from encoders.configs import finetune as finetune_configs

# Arm -> (configs/finetune.py preset, overrides).
ARMS = {'full': ('topic_minilm', {}), 'lora': ('topic_minilm_lora', {}),
        'lora_query_value': ('topic_minilm_lora', {'targets': 'query,value'})}


def define_flags() -> None:
  """The command line (defined when run, so that importing this module defines no flags)."""
  flags.DEFINE_string('out', None, 'Directory of the runs (<out>/<arm>).')
  flags.DEFINE_string('results', 'docs/lora',
                      'Where results.json and results.md go (local or gs://...).')
  flags.DEFINE_string('init_from', None, 'HF checkpoint directory; default: the installed MiniLM.')
  flags.DEFINE_integer('max_train_examples', 0, 'Training records of every arm (0: all).')
  flags.mark_flags_as_required(['out'])


def run_arm(arm: str, init_from: str, out: str, max_train_examples: int) -> dict:
  """The arm's results.json, fine-tuning first unless it exists."""
  workdir = os.path.join(out, arm)
  path = os.path.join(workdir, 'results.json')
  if not epath.Path(path).exists():
    preset, peft_overrides = ARMS[arm]
    config = finetune_configs.get_config(preset)
    config.peft.update(peft_overrides)
    config.init_from = init_from
    config.data.max_train_examples = max_train_examples
    finetune.finetune(config, workdir)
  return paths.read_json(path)


def markdown(results: dict) -> str:
  rows = ['| arm | config | trained parameters | frozen | optimizer state | test accuracy | '
          'test macro-F1 | dev accuracy | wall time |', '|---|---|---|---|---|---|---|---|---|']
  for arm, r in results.items():
    preset, overrides = ARMS[arm]
    described = ', '.join([f'`{preset}`'] + [f'peft.{k}={v}' for k, v in overrides.items()])
    rows.append(f'| {arm} | {described} | {r["trainable_parameters"]:,} | '
                f'{r["frozen_parameters"]:,} | {r["optimizer_state_bytes"] / 2**20:.2f} MiB | '
                f'{r["test"]["accuracy"]:.4f} | {r["test"]["macro_f1"]:.4f} | '
                f'{r["dev"]["accuracy"]:.4f} | {r["wall_seconds"] / 60:.1f} min |')
  full = results['full']
  lines = [f'\n\nTraining rows: {full["train_rows"]:,} (each arm the same).']
  for arm in list(results)[1:]:
    gap = 100 * (full['test']['accuracy'] - results[arm]['test']['accuracy'])
    share = results[arm]['optimizer_state_bytes'] / full['optimizer_state_bytes']
    lines.append(f'- {arm}: {gap:.1f} points of test accuracy below full fine-tuning, with '
                 f'{100 * share:.2f}% of its optimizer state.')
  return '\n'.join(rows + lines) + '\n'


def write_results(folder: str, results: dict, command: str) -> str:
  """results.json (the arms and the command) and results.md into `folder`; returns the table."""
  table = markdown(results)
  epath.Path(folder).mkdir(parents=True, exist_ok=True)
  paths.write_json(os.path.join(folder, 'results.json'), dict(command=command, arms=results),
                   indent=2)
  epath.Path(folder, 'results.md').write_text(
      '### LoRA vs full fine-tuning of all-MiniLM-L6-v2 (topic task)\n\n'
      f'`{command}`\n\n{table}')
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  init_from = paths.absolute(f.init_from) if f.init_from else hf_interop.installed_minilm_dir()
  out = paths.absolute(f.out)
  results = {arm: run_arm(arm, init_from, out, f.max_train_examples) for arm in ARMS}
  command = 'python -m experiments.lora_vs_full ' + ' '.join(sys.argv[1:])
  print(write_results(f.results, results, command))


if __name__ == '__main__':
  define_flags()
  app.run(main)
