"""Entry points report a bad --config override in one line, before any work, with exit code 2."""
import subprocess
import sys

import pytest

from tests import training_util


@pytest.mark.parametrize('module,config', [('experiments.pretrain', 'configs/bert.py:tiny'),
                                           ('experiments.finetune', 'configs/finetune.py:topic')])
def test_misspelled_override_is_one_line_naming_it(module, config, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', module, '--config', config, '--workdir', str(tmp_path / 'run'),
       '--config.train.batch_size=8', '--config.optimizer.learnig_rate=1e-3'],
      cwd=training_util.ROOT, env=training_util.env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert ('Config override error (--config.optimizer.learnig_rate=1e-3): '
          "'learnig_rate'") in result.stderr
  assert 'Did you mean "learning_rate"' in result.stderr
  assert not (tmp_path / 'run').exists()  # Nothing was built or written.
