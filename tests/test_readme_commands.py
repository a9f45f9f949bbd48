"""Every shell command in the README is covered here, so the README cannot drift from the code.

Each command of the README's ```bash blocks (continuation lines joined, `&&` chains split,
comments dropped) matches one rule of RULES, in README order:
- RUN: run as written in a scratch copy of the repository root (its own `workdirs/`), with the
  rule's arguments appended or substituted to make it a smoke run (few steps, few articles);
- DRY: run as written with DRY_RUN=1, which the launchers honour (print, start nothing);
- CHECK: its arguments are parsed by its program and nothing runs (tests/readme_flags.py: every
  flag defined, every `--config.*` override a field of the loaded config). For paper-scale runs
  and for experiments whose smoke form has its own test;
- SKIP: not runnable here (installs, which .ci/run itself does; a SLURM cluster; a bucket's
  results), with the reason.
A README command no rule matches fails the coverage test.
"""
import dataclasses
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import training_util

README = os.path.join(training_util.ROOT, 'README.md')
# A 4-step pretraining run that validates and checkpoints at steps 2 and 4.
SHORT_PRETRAINING = ('--config.train.num_steps=4 --config.optimizer.warmup_steps=0 '
                     '--config.train.eval_every=2 --config.train.eval_steps=1 '
                     '--config.checkpoint.every_steps=2')


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str  # re.search on the command.
  how: str  # 'run', 'dry', 'check' or 'skip'.
  append: str = ''  # run: arguments appended.
  substitute: tuple[tuple[str, str], ...] = ()  # run: (old, new) replacements.
  reason: str = ''  # check, skip: why it does not run.


RULES = (
    Rule(r'^(python3 -m venv|\. \.venv/bin/activate|pip install)', 'skip',
         reason='installs: what .ci/run does before the tests'),
    Rule(r'^python -m pytest', 'skip', reason='the test command: this test is part of it'),
    Rule(r'^python -m experiments\.pretrain --config configs/bert\.py:tiny --workdir '
         r'workdirs/bert_tiny$', 'run', append=SHORT_PRETRAINING),
    Rule(r'^python -m experiments\.fill_mask --workdir workdirs/bert_tiny$', 'run'),
    Rule(r'^python -m experiments\.pretrain ', 'check',
         reason='pretraining runs of other recipes and families (their tests train them)'),
    Rule(r'^python -m experiments\.embed --query', 'run', append='--num_articles 48'),
    Rule(r'^python -m experiments\.embed --checkpoint workdirs/sentence_minilm', 'check',
         reason='needs the sentence-trained MiniLM export'),
    Rule(r'^python -m experiments\.analyze ', 'run', append='--num_texts 8 --stats_texts 4',
         substitute=(('--baseline_step 3200', '--baseline_step 2'),
                     ('--num_train 800', '--num_train 48'))),
    Rule(r'^python -m experiments\.finetune --config configs/finetune\.py:topic_tiny --workdir '
         r'workdirs/ft_tiny ', 'run', append='--config.train.num_epochs=0.02'),
    Rule(r'^python -m experiments\.finetune ', 'check',
         reason='from other pretrained models, or MiniLM at full length'),
    Rule(r'^python -m experiments\.(electra_vs_mlm(_relative)?|ablate_albert|distill_vs_teacher|'
         r'ablate_deberta|ablate_masking_strategy) ', 'check',
         reason='sweeps of many training runs; their tests run their smoke form'),
    Rule(r'^python -m experiments\.ablation_verdicts --results docs/ablations_tiny$', 'check',
         reason="rewrites the stored verdicts; tests/test_findings.py runs it on a copy's layout"),
    Rule(r'^python -m experiments\.ablate_nsp .*--mode=print > jobs\.txt$', 'run'),
    Rule(r'^python launch/run_commands\.py jobs\.txt ', 'dry'),
    Rule(r'^python -m experiments\.ablate_nsp --scale=paper --out=gs://', 'skip',
         reason="collects a bucket's results"),
    Rule(r'^python -m experiments\.(compare_inits|lora_vs_full|class_imbalance|train_sentence|'
         r'long_inputs|finetune_multitask) ',
         'check', reason='fine-tuning or sentence-training runs of minutes to hours'),
    Rule(r'^python -m experiments\.evaluate --init_from=workdirs/bert_tiny --versus_random_init ',
         'run', append='--max_train=60 --max_eval=40'),
    Rule(r'^python -m experiments\.evaluate ', 'check',
         reason='2.5-28 minutes a model; tests/test_evaluate.py runs the CLI on a tiny model'),
    Rule(r'^python -m experiments\.(benchmark|benchmark_inference|benchmark_data_scale|benchmark_pipeline) ',
         'check',
         reason='timed benchmarks; tests/test_benchmark*.py run their smoke form'),
    Rule(r'^(SETUP=1 |DRY_RUN=1 )?launch/tpu_vm\.sh ', 'dry'),
    Rule(r'^SETUP=1 sbatch ', 'skip', reason='a SLURM cluster'),
    Rule(r'gs://BUCKET/(bert_tiny|ft|ablate_nsp)\b', 'check',
         reason='a real bucket: tests/test_gcs.py runs this chain against a GCS emulator'),
)


def readme_commands(text: str) -> list[str]:
  """The shell commands of the README's ```bash blocks, in order."""
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = re.sub(r'\s+#.*$', '', line).strip()
      if line and not line.startswith('#'):
        commands += [re.sub(r'\s+', ' ', part).strip() for part in line.split('&&')]
  return commands


def rule_of(command: str) -> Rule | None:
  return next((rule for rule in RULES if re.search(rule.pattern, command)), None)


def smoke_form(command: str, rule: Rule) -> str:
  for old, new in rule.substitute:
    command = command.replace(old, new)
  if not rule.append:
    return command
  program, redirect, target = command.partition(' > ')
  return f'{program} {rule.append}' + (f' > {target}' if redirect else '')


def _commands_and_rules() -> list[tuple[str, Rule | None]]:
  with open(README) as f:
    return [(command, rule_of(command)) for command in readme_commands(f.read())]


def test_readme_commands_are_split_as_a_shell_would():
  text = ('```bash\npython3 -m venv .venv && . .venv/bin/activate\n# a comment\n'
          'python -m experiments.pretrain --config a.py \\\n    --workdir w   # trailing\n```\n'
          '```python\nprint(1)\n```\n```\nPlan: output\n```\n')
  assert readme_commands(text) == ['python3 -m venv .venv', '. .venv/bin/activate',
                                   'python -m experiments.pretrain --config a.py --workdir w']


def test_every_readme_command_has_a_rule():
  commands = _commands_and_rules()
  assert len(commands) >= 30
  assert [command for command, rule in commands if rule is None] == []
  # Every rule is used: a rule for a command the README dropped is drift too.
  used = {rule for _, rule in commands}
  assert [rule.pattern for rule in RULES if rule not in used] == []


def _scratch_root(tmp_path) -> str:
  """A directory that looks like the repository root to the README's commands (its code, configs
  and .venv linked, its own empty workdirs/)."""
  root = tmp_path / 'repo'
  root.mkdir()
  for name in os.listdir(training_util.ROOT):
    if name not in ('workdirs', '.git', 'README.md') and not name.startswith('.pytest'):
      os.symlink(os.path.join(training_util.ROOT, name), root / name)
  return str(root)


def _run(command: str, cwd: str, extra_env: dict | None = None) -> str:
  env = dict(training_util.env(), **(extra_env or {}))
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
  result = subprocess.run(['bash', '-c', command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
  assert result.returncode == 0, f'{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}'
  return result.stdout


@pytest.mark.slow
def test_readme_commands_run_or_parse_as_written(tmp_path, minilm_dir):
  """RUN and DRY commands run in README order (later ones read what earlier ones wrote);
  CHECK commands' arguments are accepted by their programs."""
  del minilm_dir  # Installed: the README's MiniLM paths point into the .venv.
  root = _scratch_root(tmp_path)
  outcomes = []
  for command, rule in _commands_and_rules():
    if rule.how == 'run':
      _run(smoke_form(command, rule), root)
    elif rule.how == 'dry':
      _run(command, root, {'DRY_RUN': '1'})
    elif rule.how == 'check':
      words = shlex.split(command)
      _run(shlex.join([sys.executable, 'tests/readme_flags.py', *words]), root)
    outcomes.append(rule.how)
  assert outcomes.count('run') >= 8 and outcomes.count('check') >= 15
  # What the chain left: the main command's checkpoints and the analyses' files.
  assert os.path.isdir(os.path.join(root, 'workdirs/bert_tiny'))
  assert os.listdir(os.path.join(root, 'workdirs/analysis/probe'))
