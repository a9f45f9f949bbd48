"""The family registry (encoders/families.py): every entry resolves, unknown names fail at start
naming the choices, and the training code never branches on a family's name."""
import glob
import importlib.util
import os
import re

import jax
import numpy as np
import pytest

from encoders import families, hf_interop
from encoders.config import ConfigError
from encoders.training import objectives, sharding, trainer
from tests import training_util


def _config_module(family):
  path = os.path.join(training_util.ROOT, family.config_file)
  spec = importlib.util.spec_from_file_location(f'config_{family.name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('name', list(families.FAMILIES))
def test_each_family_config_builds_its_objective(name):
  family = families.get(name)
  config = _config_module(family).get_config('tiny')
  assert config.model.family == name
  objective = objectives.make_objective(config, config.data.input_format in trainer.PAIR_FORMATS)
  ids = np.zeros((2, 16), np.int32)
  batch = dict(input_ids=ids, segment_ids=ids + 1, position_ids=ids, token_type_ids=ids,
               masked_positions=np.zeros((2, 4), np.int32))
  params = jax.eval_shape(objective.init, jax.random.key(0), batch)
  assert jax.tree.leaves(params)
  assert objective.flops_per_sequence(16, 4) > 0
  if family.interop:
    assert family.interop_table() is not None


def test_unknown_family_fails_at_start_naming_the_choices():
  config = training_util.tiny_config()
  config.model.family = 'bart'
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  with pytest.raises(ConfigError, match=r"model.family='bart'.*'bert', 'roberta', 'electra', 'albert'"):
    trainer.setup(config, mesh)
  with pytest.raises(ConfigError, match='bart'):
    hf_interop.save_checkpoint('unused', None, {}, family='bart')


def test_checkpoint_model_type_picks_the_family(tmp_path):
  (tmp_path / 'config.json').write_text('{"model_type": "xlnet"}')
  with pytest.raises(ConfigError, match=r"model_type='xlnet'.*'bert'.*'albert'"):
    hf_interop.read_model_config(str(tmp_path))


def test_training_code_has_no_family_branches():
  names = '|'.join(families.FAMILIES)
  branch = re.compile(rf"family\s*(==|!=|in)\s|['\"]({names})['\"]\s*(==|!=|in)\s|(==|!=)\s*['\"]({names})['\"]")
  paths = [path for room in ('training', 'adaptation')
           for path in glob.glob(os.path.join(training_util.ROOT, 'encoders', room, '*.py'))]
  assert len(paths) > 10, paths  # The glob still finds the trainer and fine-tuning.
  for path in paths:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        assert not branch.search(line), f'{os.path.relpath(path, training_util.ROOT)}:{number}: {line}'
