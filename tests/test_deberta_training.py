"""DeBERTa (MLM + EMD) through the shared trainer: its registry entry, a 2x2x2 mesh equal to one
device (scanned and not), exact resume after SIGKILL, and a pretraining workdir that fine-tunes
(BERT's and ALBERT's versions: test_sharding.py, test_checkpointing.py, test_albert_training.py)."""

import jax
import numpy as np
import pytest

from encoders.adaptation import finetune
from encoders.configs import deberta as deberta_configs
from encoders.configs import finetune as finetune_configs
from encoders.data import tokenizer as tokenizer_lib
from encoders.layers import stack_layers
from encoders.training import objectives, trainer
from tests import training_util
from tests.test_checkpointing import kill_and_resume
from tests.test_electra_training import _params, _topic_like_task

# training_util.TINY's widths with two layers (EMD reruns the second on the first's output),
# 16 buckets over the 32-token rows (distances from 8 on are log-bucketed) and single-segment
# rows (no sentence head).
DEBERTA_TINY = {'model.num_layers': 2, 'model.position_buckets': 16,
                'data.input_format': 'full_sentences'}


def deberta_config(**overrides):
  """configs/deberta.py:tiny shrunk to training_util.TINY, plus `overrides` ('section__field')."""
  config = deberta_configs.get_config('tiny')
  values = {**training_util.TINY, **DEBERTA_TINY,
            **{k.replace('__', '.'): v for k, v in overrides.items()}}
  for key, value in values.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_config_builds_the_deberta_objective_with_emd():
  objective = objectives.make_objective(deberta_config(), sentence_head=False)
  assert type(objective.model).__module__ == 'encoders.deberta'
  assert objective.model.config.emd and objective.model.config.type_vocab_size == 0
  # EMD brings the absolute position table; the input does not use it.
  config = deberta_config()
  mesh = training_util_mesh()
  params = trainer.setup(config, mesh).abstract_state.params
  assert 'position_embeddings' in params['encoder']['embeddings']
  assert 'token_type_embeddings' not in params['encoder']['embeddings']
  assert 'position_embeddings' not in trainer.setup(deberta_config(model__emd=False), mesh) \
      .abstract_state.params['encoder']['embeddings']


def training_util_mesh():
  from encoders.training import sharding  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh(deberta_config().mesh, jax.devices()[:1])


def one_device_and_2x2x2(config, keys, start_params=None) -> dict:
  """`config` trained 3 steps on one device and on a 2x2x2 mesh (in an 8-device child):
  {'reference' / 'sharded': [{key: mean} per step], 'param_diff': the largest difference}."""
  runs = []
  for mesh_shape, devices in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), None)):
    config.mesh.shape = mesh_shape
    step_sums, state, _ = training_util.train_on_mesh(config, devices, steps=3,
                                                      start_params=start_params)
    runs.append(([{k: float(sums[k][0] / sums[k][1]) for k in keys} for sums in step_sums],
                 jax.device_get(state.params)))
  (reference, reference_params), (losses, params) = runs
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                          params, reference_params)))
  return dict(reference=reference, sharded=losses, param_diff=diff)


def _sharded_child():
  """Runs in a subprocess with 8 CPU devices: losses and parameters on 1 device and on 2x2x2."""
  jax.config.update('jax_threefry_partitionable', True)

  # The unrolled stack's initial parameters, stacked for the scanned one: both runs start alike.
  _, initial, _ = training_util.train_on_mesh(deberta_config(), jax.devices()[:1], steps=0)
  initial = jax.device_get(initial.params)
  report = {}
  for scan_layers in (False, True):
    config = deberta_config(optimizer__eps=1e-2, model__scan_layers=scan_layers)  # See test_sharding.COMPARABLE.
    report[str(scan_layers)] = one_device_and_2x2x2(
        config, ('loss', 'mlm_loss'), stack_layers(initial) if scan_layers else initial)
  training_util.print_report(report)


@pytest.mark.slow
def test_2x2x2_mesh_gives_the_one_device_losses_and_parameters():
  report = training_util.child_report('test_deberta_training', '_sharded_child')
  for run in report.values():
    for sharded, reference in zip(run['sharded'], run['reference']):
      assert sharded == pytest.approx(reference, rel=1e-4)
    assert run['reference'][-1]['loss'] != run['reference'][0]['loss']
    assert run['param_diff'] < 1e-5, run['param_diff']
  # Scanning the layers computes the same function as the unrolled stack.
  for scanned, unrolled in zip(report['True']['reference'], report['False']['reference']):
    assert scanned == pytest.approx(unrolled, rel=1e-4)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path):
  # Killed after a few checkpoints (every 3 steps, saved async).
  expected, resumed = kill_and_resume(tmp_path, 24, 12, config='configs/deberta.py:tiny',
                                      **{k.replace('.', '__'): v for k, v in DEBERTA_TINY.items()})
  assert resumed == expected


@pytest.mark.slow
def test_pretraining_workdir_fine_tunes(minilm_dir, tmp_path):
  pretrain_dir, tune_dir = str(tmp_path / 'pretrain'), str(tmp_path / 'tune')
  # MiniLM's tokenizer (30522 tokens) stands in for a trained one; batches are synthetic.
  trainer.train_and_evaluate(deberta_config(model__vocab_size=30522, data__tokenizer_path=minilm_dir,
                                            train__num_steps=2), pretrain_dir)
  config = finetune_configs.get_config('topic')
  config.init_from = pretrain_dir
  config.train.update(batch_size=8, eval_batch_size=8, num_epochs=1.0, log_every=1)
  config.optimizer.update(learning_rate=0.0, layer_decay=0.8)  # Saved weights = initial weights.
  result = finetune.finetune(config, tune_dir, task=_topic_like_task(tokenizer_lib.load(minilm_dir)))
  assert result['init_from'] == 'workdir'
  # DeBERTa's ContextPooler is new (MLM pretraining has none); EMD's absolute position table
  # is not read by a classifier, so it is not carried over. Everything else is.
  assert result['new_parameters'] == ['classifier', 'encoder/pooler']
  pretrained, tuned = _params(pretrain_dir)['encoder'], _params(tune_dir)['encoder']
  tuned.pop('pooler')
  pretrained['embeddings'].pop('position_embeddings')
  assert jax.tree.structure(tuned) == jax.tree.structure(pretrained)
  jax.tree.map(np.testing.assert_array_equal, tuned, pretrained)
