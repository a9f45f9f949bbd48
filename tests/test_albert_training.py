"""ALBERT through the shared trainer: its registry entry, exact resume after SIGKILL, a 2x2x2
mesh equal to one device, and a pretraining workdir that fine-tunes with its shared weights
(BERT's versions: test_checkpointing.py, test_sharding.py, test_finetune.py)."""

import jax
import numpy as np
import pytest

from encoders.adaptation import finetune
from encoders.configs import albert as albert_configs
from encoders.configs import finetune as finetune_configs
from encoders.data import tokenizer as tokenizer_lib
from encoders.layers import stack_layers
from encoders.training import objectives, trainer
from tests import training_util
from tests.test_checkpointing import kill_and_resume
from tests.test_electra_training import _params, _topic_like_task

# training_util.TINY's widths with ALBERT's factorized embeddings (E=16 < H=32), two layers
# over one shared group of two inner layers, and SOP pairs.
ALBERT_TINY = {'model.num_layers': 2, 'model.embedding_size': 16, 'model.inner_group_num': 2,
               'data.input_format': 'sop'}


def albert_config(**overrides):
  """configs/albert.py:tiny shrunk to training_util.TINY, plus `overrides` ('section__field')."""
  config = albert_configs.get_config('tiny')
  values = {**training_util.TINY, **ALBERT_TINY,
            **{k.replace('__', '.'): v for k, v in overrides.items()}}
  for key, value in values.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_config_builds_the_albert_objective_with_sop():
  objective = objectives.make_objective(albert_config(), sentence_head=True)
  assert type(objective.model).__module__ == 'encoders.albert'
  assert objective.sentence_head
  # One shared group: the parameters do not grow with the number of layers.
  count = lambda config: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      trainer.setup(config, training_util_mesh()).abstract_state.params))
  assert count(albert_config()) == count(albert_config(model__num_layers=6))
  assert count(albert_config(model__sharing='none')) > count(albert_config())


def training_util_mesh():
  from encoders.training import sharding  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh(albert_config().mesh, jax.devices()[:1])


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path):
  # Killed after a few checkpoints (every 3 steps, saved async).
  expected, resumed = kill_and_resume(tmp_path, 24, 12, config='configs/albert.py:tiny',
                                      **{k.replace('.', '__'): v for k, v in ALBERT_TINY.items()})
  assert resumed == expected


def _sharded_child():
  """Runs in a subprocess with 8 CPU devices: losses and parameters on 1 device and on 2x2x2."""
  jax.config.update('jax_threefry_partitionable', True)

  # The unrolled stack's initial parameters, stacked for the scanned one: both runs start alike.
  _, initial, _ = training_util.train_on_mesh(albert_config(), jax.devices()[:1], steps=0)
  initial = jax.device_get(initial.params)

  def train(mesh_shape, devices, scan_layers):
    config = albert_config(optimizer__eps=1e-2, model__scan_layers=scan_layers)  # See test_sharding.COMPARABLE.
    config.mesh.shape = mesh_shape
    start = stack_layers(initial) if scan_layers else initial
    step_sums, state, _ = training_util.train_on_mesh(config, devices, steps=3, start_params=start)
    losses = [{k: float(sums[k][0] / sums[k][1]) for k in ('loss', 'mlm_loss', 'sentence_loss')}
              for sums in step_sums]
    return losses, jax.device_get(state.params)

  report = {}
  for scan_layers in (False, True):
    reference, reference_params = train((1, 1, 1), jax.devices()[:1], scan_layers)
    losses, params = train((2, 2, 2), None, scan_layers)
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                            params, reference_params)))
    report[str(scan_layers)] = dict(reference=reference, sharded=losses, param_diff=diff)
  training_util.print_report(report)


@pytest.mark.slow
def test_2x2x2_mesh_gives_the_one_device_losses_and_parameters():
  report = training_util.child_report('test_albert_training', '_sharded_child')
  for run in report.values():
    for sharded, reference in zip(run['sharded'], run['reference']):
      assert sharded == pytest.approx(reference, rel=1e-4)
    assert run['reference'][-1]['loss'] != run['reference'][0]['loss']
    assert run['param_diff'] < 1e-5, run['param_diff']
  # Scanning the shared group computes the same function as the unrolled stack.
  for scanned, unrolled in zip(report['True']['reference'], report['False']['reference']):
    assert scanned == pytest.approx(unrolled, rel=1e-4)


@pytest.mark.slow
def test_pretraining_workdir_fine_tunes_with_its_shared_weights(minilm_dir, tmp_path):
  pretrain_dir, tune_dir = str(tmp_path / 'pretrain'), str(tmp_path / 'tune')
  # MiniLM's tokenizer (30522 tokens) stands in for a trained one; batches are synthetic.
  trainer.train_and_evaluate(albert_config(model__vocab_size=30522, data__tokenizer_path=minilm_dir,
                                           train__num_steps=2), pretrain_dir)
  config = finetune_configs.get_config('topic')
  config.init_from = pretrain_dir
  config.train.update(batch_size=8, eval_batch_size=8, num_epochs=1.0, log_every=1)
  config.optimizer.update(learning_rate=0.0, layer_decay=0.8)  # Saved weights = initial weights.
  result = finetune.finetune(config, tune_dir, task=_topic_like_task(tokenizer_lib.load(minilm_dir)))
  assert result['init_from'] == 'workdir'
  assert result['new_parameters'] == ['classifier']  # SOP pretraining trained the pooler.
  pretrained, tuned = _params(pretrain_dir)['encoder'], _params(tune_dir)['encoder']
  assert jax.tree.structure(tuned) == jax.tree.structure(pretrained)
  jax.tree.map(np.testing.assert_array_equal, tuned, pretrained)
