"""Multi-task fine-tuning (encoders/adaptation/multitask.py, experiments/finetune_multitask.py):
the task sampler against its formula, a one-task run against finetune.py, separate heads, a real
run on the embedded corpus against chance, and config errors."""
import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from encoders import bert
from encoders.adaptation import finetune, finetune_init, finetune_metrics, multitask
from encoders.config import ConfigError, EncoderConfig
from encoders.configs import finetune as finetune_configs
from encoders.configs import multitask as multitask_configs
from encoders.data import suite as suite_data
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import checkpointing
from encoders.training import state as state_lib
from tests import training_util

TINY_MODEL = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                  max_position_embeddings=64, vocab_size=30522)


# --------------------------------------------------------------------------- the sampler
def test_sampler_frequencies_follow_the_formula():
  sizes = [100, 400, 1600]
  expected = {'proportional': np.array([1, 4, 16]) / 21,  # n_k / sum n
              'uniform': np.full(3, 1 / 3),
              'temperature': np.array([10, 20, 40]) / 70}  # sqrt(n_k) / sum sqrt(n), T = 2
  draws = 200_000
  for sampler, p in expected.items():
    np.testing.assert_allclose(multitask.task_probabilities(sizes, sampler, 2.0), p, rtol=1e-12)
    sequence = multitask.task_sequence(multitask.task_probabilities(sizes, sampler, 2.0), draws, 3)
    frequency = np.bincount(sequence, minlength=3) / draws
    # Within 5 binomial standard deviations of p (a wrong p is off by > 0.03, i.e. > 30 sigma).
    assert np.all(np.abs(frequency - p) < 5 * np.sqrt(p * (1 - p) / draws)), (sampler, frequency)
  np.testing.assert_allclose(multitask.task_probabilities(sizes, 'temperature', 1.0),
                             expected['proportional'])
  p = expected['temperature']
  assert np.array_equal(multitask.task_sequence(p, 50, 0), multitask.task_sequence(p, 50, 0))
  assert not np.array_equal(multitask.task_sequence(p, 50, 0), multitask.task_sequence(p, 50, 1))


def test_row_stream_is_epochs_of_permutations():
  order = np.random.default_rng(7)
  stream = multitask.RowStream(10, order)
  taken = np.concatenate([stream.take(4) for _ in range(6)])  # 24 rows: 2.4 epochs.
  reference = np.random.default_rng(7)
  expected = np.concatenate([reference.permutation(10) for _ in range(3)])[:24]
  np.testing.assert_array_equal(taken, expected)


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize('field, value', [
    ('tasks', 'topic,sentiment'), ('tasks', 'topic,topic'), ('tasks', 'search'), ('tasks', ''),
    ('sampler', 'annealed'), ('temperature', 0.0), ('temperature', -1.0),
    ('loss_weights', '1,2'), ('loss_weights', '1,x,1'), ('loss_weights', '1,-1,1')])
def test_bad_multitask_settings_are_config_errors_naming_the_field(field, value, tmp_path):
  config = multitask_configs.get_config('suite_tiny')
  config.multitask[field] = value
  with pytest.raises(ConfigError, match=f'config.multitask.{field}='):
    multitask.finetune_multitask(config, str(tmp_path))  # Before any data is read.


def test_the_command_reports_a_config_error(tmp_path):
  command = [sys.executable, '-m', 'experiments.finetune_multitask', '--config',
             'configs/multitask.py:suite_tiny', '--workdir', str(tmp_path),
             '--config.multitask.sampler=annealed']
  result = subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'Config error: config.multitask.sampler=' in result.stderr, result.stderr[-2000:]


def test_config_reads_no_single_task_setting():
  config = multitask_configs.get_config('suite_minilm')
  assert 'peft' not in config and 'task' not in config and 'class_weights' not in config.head
  assert config.optimizer.learning_rate == 1e-4
  assert config.multitask.tasks == 'topic,mention,pair'
  with pytest.raises(ValueError, match='preset'):
    multitask_configs.get_config('glue')


# --------------------------------------------------------------------------- one task = finetune.py
def _restored_params(workdir):
  manager = checkpointing.make_manager(workdir, read_only=True)
  state, _ = checkpointing.restore(manager, manager.latest_step(), None, with_data=False)
  return state['params']


def test_one_task_is_single_task_fine_tuning(minilm_dir, tmp_path):
  """Same seed, rows and batch order: multi-task fine-tuning of the topic task alone ends at the
  parameters finetune.py reaches (dropout on, layer decay on)."""
  tokenizer = tokenizer_lib.load(minilm_dir)
  splits = suite_data.article_splits(max_train=48, max_eval=8)
  task = suite_data.build_task('topic', splits, tokenizer, 32)
  single = finetune_configs.get_config('topic_tiny')
  tuned = multitask_configs.get_config('suite_tiny')
  for config in (single, tuned):
    config.model.update(TINY_MODEL)
    config.data.update(tokenizer_path=minilm_dir, max_length=32)
    config.train.update(batch_size=8, eval_batch_size=8, num_epochs=2.0, eval_every=1000,
                        progress_bar=False)
    config.optimizer.update(learning_rate=3e-3, layer_decay=0.8)
  tuned.multitask.tasks = 'topic'
  expected = finetune.finetune(single, str(tmp_path / 'single'), task=task)
  result = multitask.finetune_multitask(tuned, str(tmp_path / 'multi'), tasks={'topic': task})
  assert result['num_steps'] == expected['num_steps'] == 12
  assert result['best_step'] == expected['best_step'] == 12  # The saved model is the last one.
  single_params = _restored_params(str(tmp_path / 'single'))
  multi_params = _restored_params(str(tmp_path / 'multi'))
  assert set(multi_params['heads']) == {'topic'}
  reference = {'encoder': single_params['encoder'], 'heads': {'topic': {
      'classifier': single_params['classifier']}}}
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), reference, multi_params)
  assert max(jax.tree.leaves(moved)) <= 1e-6, moved
  assert result['test']['topic'] == pytest.approx(expected['test'], abs=1e-6)


def test_init_from_hf_minilm_reads_the_encoder_and_gives_each_task_a_new_head(minilm_dir):
  config = multitask_configs.get_config('suite_minilm')
  config.init_from = minilm_dir
  source = finetune_init.resolve(config, None)
  encoder_config = EncoderConfig.from_config(source.model_config)
  model = multitask.MultiTaskModel({  # 'cls' pooling: the topic model alone has the pooler.
      'topic': bert.EncoderForSequenceClassification(encoder_config, 12, 'cls'),
      'mention': bert.EncoderForTokenClassification(encoder_config, 3)})
  fresh = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 8), jnp.int32))['params']))
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), fresh)
  params, new = multitask.initial_params(source, model, fresh, jax.random.PRNGKey(1))
  tensors = load_file(os.path.join(minilm_dir, 'model.safetensors'))
  np.testing.assert_array_equal(params['encoder']['embeddings']['word_embeddings']['embedding'],
                                tensors['embeddings.word_embeddings.weight'])
  np.testing.assert_array_equal(params['encoder']['layers']['layer_5']['mlp']['output']['kernel'],
                                tensors['encoder.layer.5.output.dense.weight'].T)
  pooler_is_new = 'pooler.dense.weight' not in tensors
  assert new == sorted(['heads/mention/classifier', 'heads/topic/classifier']
                       + ['encoder/pooler'] * pooler_is_new)
  assert 'pooler' in params['encoder'] and 'pooler' not in model.task_params(params, 'mention')['encoder']
  for name, labels in (('topic', 12), ('mention', 3)):
    kernel = params['heads'][name]['classifier']['dense']['kernel']
    assert kernel.shape == (384, labels) and np.std(kernel) > 0  # Initialised, not left at zero.


# --------------------------------------------------------------------------- separate heads
def test_a_step_moves_its_own_head_and_the_encoder_only():
  config = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_position_embeddings=16)
  model = multitask.MultiTaskModel({
      'a': bert.EncoderForSequenceClassification(config, 3, 'mean'),
      'b': bert.EncoderForTokenClassification(config, 3)})
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 8), jnp.int32))['params']))()
  assert set(params['heads']) == {'a', 'b'} and 'encoder' not in params['heads']['a']
  opt = finetune_configs.get_config('topic').optimizer
  opt.update(warmup_steps=0, weight_decay=0.1, learning_rate=1e-2)
  tx, schedule = finetune.make_optimizer(opt, 10, 1)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=jax.jit(tx.init)(params), rng=jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 50, (4, 8)).astype(np.int32)
  batch = dict(input_ids=ids, segment_ids=np.ones_like(ids), position_ids=np.tile(np.arange(8), (4, 1)),
               token_type_ids=np.zeros_like(ids), row_weight=np.ones(4, np.float32),
               label=rng.integers(0, 3, 4).astype(np.int32),
               labels=rng.integers(0, 3, (4, 8)).astype(np.int32),
               label_weights=np.ones((4, 8), np.float32))
  step = lambda state, name, kind, weight=1.0: jax.jit(functools.partial(
      multitask.train_step, view=model.view(name), tx=tx, schedule=schedule, kind=kind,
      num_labels=3, loss_weight=weight))(state, batch)
  after_b, _ = step(state, 'b', 'token_classification')  # b's head now has Adam moments.
  after_a, step_metrics = step(after_b, 'a', 'classification')
  _, weighted = step(after_b, 'a', 'classification', 2.5)  # The loss weight scales the gradient.
  np.testing.assert_allclose([weighted['loss'], weighted['grad_norm']],
                             [2.5 * step_metrics['loss'], 2.5 * step_metrics['grad_norm']], rtol=1e-5)
  leaves = lambda tree: jax.tree.leaves(tree)
  differs = lambda x, y: any(not np.array_equal(u, v) for u, v in zip(leaves(x), leaves(y)))
  assert differs(after_a.params['heads']['a'], after_b.params['heads']['a'])
  assert differs(after_a.params['encoder'], after_b.params['encoder'])
  assert not differs(after_a.params['heads']['b'], after_b.params['heads']['b'])
  # Its optimizer state (Adam's moments) too.
  moments = lambda s, name: [x['heads'][name] for x in _parameter_trees(s.opt_state)]
  assert len(moments(after_a, 'b')) == 2
  assert not differs(moments(after_a, 'b'), moments(after_b, 'b'))
  assert differs(moments(after_a, 'a'), moments(after_b, 'a'))
  # What keeping it prevents: with a zero gradient, AdamW's momentum and weight decay move b.
  unkept, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, after_b.params),
                                 after_b.opt_state, after_b.params)
  assert differs(unkept['heads']['b'], jax.tree.map(jnp.zeros_like, unkept['heads']['b']))


def _parameter_trees(opt_state) -> list[dict]:
  """The parameter-shaped trees in an optax state (Adam's mu and nu)."""
  if isinstance(opt_state, dict):
    return [opt_state] if 'heads' in opt_state else []
  if isinstance(opt_state, (tuple, list)):
    return [tree for child in opt_state for tree in _parameter_trees(child)]
  return []


# --------------------------------------------------------------------------- real data
def _chance_entity_f1(train, test, seed=0, draws=20):
  """Entity F1 of a tagger blind to its input: each word's tag drawn from the training words'
  tag frequencies (mean over draws)."""
  prior = np.bincount(np.concatenate(train), minlength=3) / sum(len(t) for t in train)
  rng = np.random.default_rng(seed)
  gold = [[suite_data.TAGS[t] for t in tags] for tags in test]
  scores = []
  for _ in range(draws):
    predicted = [[suite_data.TAGS[t] for t in rng.choice(3, len(tags), p=prior)] for tags in test]
    scores.append(finetune_metrics.entity_f1(predicted, gold)['entity_f1'])
  return float(np.mean(scores))


def test_the_command_beats_chance_on_every_task(minilm_dir, tmp_path):
  """One command, a tiny random-init model, topic + mention on the embedded corpus: every task
  clearly above what an input-blind predictor gets; a progress bar and no INFO logs."""
  workdir = str(tmp_path / 'mt')
  max_train, max_eval = 600, 100
  model = [f'--config.model.{k}={v}' for k, v in TINY_MODEL.items()]
  command = [sys.executable, '-m', 'experiments.finetune_multitask', '--config',
             'configs/multitask.py:suite_tiny', '--workdir', workdir, '--config.init_from=none',
             f'--config.data.tokenizer_path={minilm_dir}', '--config.multitask.tasks=topic,mention',
             f'--config.data.max_train={max_train}', f'--config.data.max_eval={max_eval}',
             '--config.data.max_length=64', '--config.train.batch_size=16',
             '--config.train.num_epochs=6', '--config.optimizer.learning_rate=5e-3', *model]
  run = subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(),
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    result = json.load(f)
  output = run.stdout + run.stderr
  num_steps = result['num_steps']
  assert f'{num_steps}/{num_steps} [' in output and 'dev mean score' in output
  assert 'I1' not in ''.join(line[:2] for line in output.splitlines())  # absl INFO lines.
  assert sum(result['steps_per_task'].values()) == result['steps_run'] == num_steps
  assert min(result['steps_per_task'].values()) > 0.3 * num_steps / 2

  splits = suite_data.article_splits(max_train, max_eval)
  names = suite_data.topic_names()
  test_topics = np.asarray([names.index(a['topic']) for a in splits['test']])
  # An input-blind classifier's expected accuracy is at most the largest class's share.
  majority = np.bincount(test_topics).max() / len(test_topics)
  margin = 3 * np.sqrt(majority * (1 - majority) / len(test_topics))
  assert result['test']['topic']['accuracy'] > majority + margin, (result['test'], majority)
  assert result['test']['topic']['macro_f1'] > 2 / len(names)

  tags = {s: [suite_data.mention_tags(a['title'], a['extract'])[1] for a in splits[s]]
          for s in ('train', 'test')}
  chance = _chance_entity_f1(tags['train'], tags['test'])
  assert result['test']['mention']['entity_f1'] > max(2 * chance, chance + 0.05), (
      result['test']['mention'], chance)
