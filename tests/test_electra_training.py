"""ELECTRA through the shared trainer: resume is exact, a 2x2x2 mesh equals one device, and a
pretraining workdir fine-tunes with the discriminator's weights (the MLM versions of these
tests are test_checkpointing.py, test_sharding.py and test_finetune.py)."""

import jax
import numpy as np
import pytest

from encoders.adaptation import finetune
from encoders.configs import electra as electra_configs
from encoders.configs import finetune as finetune_configs
from encoders.data import finetune_data
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import checkpointing, trainer
from tests import training_util

# training_util.TINY's model and schedule, with ELECTRA's shared embeddings narrower than the
# discriminator (so `embeddings_project` exists) and a two-head generator (tensor axis 2).
ELECTRA_TINY = {'model.embedding_size': 16, 'model.generator_size_fraction': 0.5,
                'model.generator_num_heads': 2,
                'data.input_format': 'full_sentences'}  # TINY's segment pairs need an NSP head.
STEPS = 6


def electra_config(**overrides):
  """configs/electra.py:tiny shrunk to training_util.TINY, plus `overrides` ('section__field')."""
  config = electra_configs.get_config('tiny')
  values = {**training_util.TINY, **ELECTRA_TINY, 'train.num_steps': STEPS,
            **{k.replace('__', '.'): v for k, v in overrides.items()}}
  for key, value in values.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


@pytest.mark.slow
def test_preempted_and_resumed_run_gives_the_uninterrupted_losses(tmp_path, monkeypatch):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  trainer.train_and_evaluate(electra_config(), straight)
  stop_at = 4  # Not a checkpoint step (every 3): the preemption save is the one resumed from.
  with monkeypatch.context() as patch:  # A simulated preemption notice at step 4.
    patch.setattr(trainer._Preemption, 'reached', lambda self, step, manager: step == stop_at)
    trainer.train_and_evaluate(electra_config(), resumed)
  assert checkpointing.make_manager(resumed, read_only=True).latest_step() == stop_at
  assert max(training_util.train_losses(resumed)) == stop_at
  trainer.train_and_evaluate(electra_config(), resumed)
  expected = training_util.train_losses(straight)
  assert sorted(expected) == list(range(1, STEPS + 1))
  assert training_util.train_losses(resumed) == expected


def _sharded_child():
  """Runs in a subprocess with 8 CPU devices: losses and parameters on 1 device and on 2x2x2."""
  jax.config.update('jax_threefry_partitionable', True)

  def train(mesh_shape, devices):
    config = electra_config(optimizer__eps=1e-2)  # Why eps=1e-2: see test_sharding.COMPARABLE.
    config.mesh.shape = mesh_shape
    step_sums, state, _ = training_util.train_on_mesh(config, devices, steps=3)
    losses = [{k: float(sums[k][0] / sums[k][1]) for k in ('loss', 'rtd_loss', 'mlm_loss')}
              for sums in step_sums]
    return losses, jax.device_get(state.params)

  reference, reference_params = train((1, 1, 1), jax.devices()[:1])
  losses, params = train((2, 2, 2), None)
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                          params, reference_params)))
  training_util.print_report(dict(reference=reference, sharded=losses, param_diff=diff))


@pytest.mark.slow
def test_2x2x2_mesh_gives_the_one_device_losses():
  report = training_util.child_report('test_electra_training', '_sharded_child')
  for sharded, reference in zip(report['sharded'], report['reference']):
    assert sharded == pytest.approx(reference, rel=1e-4)
  assert report['reference'][-1]['loss'] != report['reference'][0]['loss']
  assert report['param_diff'] < 1e-5, report['param_diff']


def _topic_like_task(tokenizer):
  """Two separable classes of short texts (fruit / vehicle words among fillers)."""
  rng = np.random.default_rng(0)
  words = ['apple banana cherry grape'.split(), 'car truck bus train'.split()]

  def split(n):
    texts = [' '.join(rng.permutation(list(rng.choice(words[i % 2], 6)) + ['the', 'a', 'of']))
             for i in range(n)]
    return finetune_data.classification_split(texts, [i % 2 for i in range(n)], tokenizer, 16, 8)
  return finetune_data.Task('classification', ['fruit', 'vehicle'],
                            {'train': split(16), 'dev': split(8), 'test': split(8)})


def _params(workdir):
  manager = checkpointing.make_manager(workdir, read_only=True)
  state, _ = checkpointing.restore(manager, manager.latest_step(), None, with_data=False)
  manager.close()
  return state['params']


@pytest.mark.slow
def test_pretraining_workdir_fine_tunes_from_the_discriminator(minilm_dir, tmp_path):
  pretrain_dir, tune_dir = str(tmp_path / 'pretrain'), str(tmp_path / 'tune')
  # MiniLM's tokenizer (30522 tokens) stands in for a trained one; batches are synthetic.
  trainer.train_and_evaluate(electra_config(model__vocab_size=30522, data__tokenizer_path=minilm_dir,
                                            train__num_steps=2), pretrain_dir)
  config = finetune_configs.get_config('topic')
  config.init_from = pretrain_dir
  config.train.update(batch_size=8, eval_batch_size=8, num_epochs=1.0, log_every=1)
  config.optimizer.learning_rate = 0.0  # The saved task model then holds exactly its initial weights.
  task = _topic_like_task(tokenizer_lib.load(minilm_dir))
  result = finetune.finetune(config, tune_dir, task=task)
  assert result['init_from'] == 'workdir'
  assert result['new_parameters'] == ['classifier', 'encoder/pooler']  # ELECTRA has no pooler.

  pretrained, encoder = _params(pretrain_dir), _params(tune_dir)['encoder']
  discriminator = pretrained['discriminator_encoder']
  assert encoder['embeddings_project']['kernel'].shape == (16, 32)
  for ours, theirs in ((encoder['embeddings'], pretrained['embeddings']),
                       (encoder['embeddings_project'], discriminator['embeddings_project']),
                       (encoder['layers'], discriminator['layers'])):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
