"""The project installs as one top-level package, `encoders` (pyproject.toml), that a notebook or
script outside the repository imports: configs, models, data, pretraining, adaptation, analysis."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests import training_util

# Outside the repository: a config, its model's forward pass, the trainer and fine-tuning.
USE_FROM_ELSEWHERE = """
import jax, jax.numpy as jnp
from encoders import families
from encoders.adaptation import finetune, lora
from encoders.analysis import subject
from encoders.configs import bert
from encoders.data import pipeline
from encoders.training import trainer

config = bert.get_config('tiny')
family = families.get(config.model.family)
model = family.models.Encoder(family.model_config(config.model))
input_ids = jnp.ones((2, 16), jnp.int32)
params = model.init(jax.random.key(0), input_ids)['params']
hidden, _ = model.apply({'params': params}, input_ids)
assert hidden.shape == (2, 16, config.model.hidden_size), hidden.shape
print(families.__file__)
"""


def _python_outside(code: str, cwd, pythonpath: str | None = None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in training_util.env().items() if k != 'PYTHONPATH'}
  if pythonpath:
    env['PYTHONPATH'] = pythonpath
  return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def test_installed_package_is_usable_outside_the_repository(tmp_path):
  """`pip install -e .` (requirements-test.txt, the README): before, `No module named 'training'`."""
  result = _python_outside(USE_FROM_ELSEWHERE, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == os.path.join(training_util.ROOT, 'encoders', 'families.py')


@pytest.mark.slow
def test_the_wheel_holds_only_encoders_and_every_module_imports_from_it(tmp_path):
  """The built distribution's one top-level name is `encoders` (configs/ included through the
  encoders/configs link), and each of its modules imports with the wheel's copy first on the path,
  so none needs the repository (experiments/, tests/, a top-level `configs`)."""
  source = tmp_path / 'source'  # setuptools builds in the source tree: a copy, not the checkout.
  source.mkdir()
  for name in ('pyproject.toml', 'README.md', 'requirements.txt'):
    shutil.copy(os.path.join(training_util.ROOT, name), source / name)
  for name in ('encoders', 'configs'):
    shutil.copytree(os.path.join(training_util.ROOT, name), source / name, symlinks=True,
                    ignore=shutil.ignore_patterns('__pycache__'))
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', str(source),
                  '-w', str(tmp_path / 'dist')], check=True, capture_output=True, timeout=600)
  wheel, = (tmp_path / 'dist').glob('*.whl')
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    archive.extractall(tmp_path / 'site')
  assert {name.split('/')[0] for name in names if '.dist-info/' not in name} == {'encoders'}
  modules = sorted(name[:-3].replace('/', '.').removesuffix('.__init__')
                   for name in names if name.endswith('.py'))
  for expected in ('encoders.configs.bert', 'encoders.training.trainer',
                   'encoders.adaptation.finetune', 'encoders.data.pipeline',
                   'encoders.analysis.subject'):
    assert expected in modules
  code = (f'import importlib, encoders\nassert encoders.__file__.startswith({str(tmp_path)!r})\n'
          f'for name in {modules!r}:\n  importlib.import_module(name)\n')
  (tmp_path / 'elsewhere').mkdir()
  result = _python_outside(code, tmp_path / 'elsewhere', pythonpath=str(tmp_path / 'site'))
  assert result.returncode == 0, result.stderr[-3000:]
