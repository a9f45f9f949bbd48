"""Fine-tuning: metrics against hand-computed references, layer-wise lr decay, every head end to end,
and initialisation from our pretraining workdir and from the HF MiniLM checkpoint (the
fine-tuning run of MiniLM itself is the measured acceptance run, too slow for a unit test)."""
import json
import os
import re
import subprocess
import sys

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from encoders import electra, families
from encoders.adaptation import finetune, finetune_ablation, finetune_init, finetune_metrics
from encoders.config import EncoderConfig
from encoders.configs import finetune as finetune_configs
from encoders.data import finetune_data
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import checkpointing
from encoders.training import sweep, trainer
from experiments import compare_inits
from tests import training_util

TINY_MODEL = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


# --------------------------------------------------------------------------- metrics
def test_macro_f1_by_hand():
  predictions, labels = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
  # class 0: tp 1, 2 predicted, 2 gold -> 1/2; class 1: 1, 1, 2 -> 2/3; class 2: 2, 3, 2 -> 4/5.
  expected = (1 / 2 + 2 / 3 + 4 / 5) / 3
  assert finetune_metrics.macro_f1(predictions, labels, 4) == pytest.approx(expected)
  assert finetune_metrics.accuracy(predictions, labels) == pytest.approx(4 / 6)


def test_window_logits_are_averaged_per_record():
  logits = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
  mean = finetune_metrics.aggregate_windows(logits, np.array([0, 0, 1]), 2)
  np.testing.assert_allclose(mean, [[0.5, 1.5], [2.0, 0.0]])


def test_entity_chunks_iob2_and_iob1():
  assert finetune_metrics.chunks(['B-PER', 'I-PER', 'O', 'B-LOC', 'I-ORG']) == {
      ('PER', 0, 1), ('LOC', 3, 3), ('ORG', 4, 4)}
  assert finetune_metrics.chunks(['I-PER', 'I-PER', 'O', 'I-LOC', 'B-LOC']) == {
      ('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4)}
  gold = [['B-PER', 'I-PER', 'O', 'B-LOC'], ['B-ORG']]
  predicted = [['B-PER', 'I-PER', 'O', 'B-ORG'], ['O']]
  # Predicted {PER 0-1, ORG 3}: 1 of 2 right; gold {PER 0-1, LOC 3, ORG 0}: 1 of 3 found.
  scores = finetune_metrics.entity_f1(predicted, gold)
  assert scores['entity_precision'] == pytest.approx(1 / 2)
  assert scores['entity_recall'] == pytest.approx(1 / 3)
  assert scores['entity_f1'] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))


def test_squad_exact_match_and_f1_by_hand():
  assert finetune_metrics.exact_match('the Eiffel Tower', 'Eiffel Tower!') == 1.0
  # 'tower in paris' vs 'eiffel tower': 1 common token, precision 1/3, recall 1/2 -> F1 0.4.
  assert finetune_metrics.span_f1('Tower in Paris', 'the Eiffel Tower') == pytest.approx(0.4)
  assert finetune_metrics.span_f1('nothing', 'else') == 0.0
  scores = finetune_metrics.squad_scores(['Tower in Paris', 'x'], [['Paris', 'the Eiffel Tower'], ['y']])
  # Record 1: EM 0, F1 max(2*(1/3)*1/(4/3) = 0.5, 0.4) = 0.5; record 2: 0, 0.
  assert scores == pytest.approx({'exact_match': 0.0, 'f1': 25.0})


def test_best_answer_is_the_best_valid_span_over_windows():
  context = 'alpha beta gamma delta'
  offsets = np.full((2, 6, 2), -1)
  offsets[0, 2:4] = [[0, 5], [6, 10]]  # Window 0 holds alpha, beta.
  offsets[1, 2:4] = [[11, 16], [17, 22]]  # Window 1 holds gamma, delta.
  is_max = offsets[..., 0] >= 0
  start = np.full((2, 6), -9.0)
  end = np.full((2, 6), -9.0)
  start[0, 0] = end[0, 0] = 10.0  # [CLS] is never an answer.
  start[0, 2:4], end[0, 2:4] = [1.0, 5.0], [-5.0, -3.0]  # alpha beta -2, beta 2, alpha -4.
  start[1, 2:4], end[1, 2:4] = [2.0, -5.0], [-5.0, 1.5]  # gamma delta 3.5: the best.
  start[1, 5], end[1, 4] = 20.0, 20.0  # Outside the context (offsets -1): never an answer.
  answers = finetune_metrics.best_answers(start, end, offsets, is_max, np.array([0, 0]), [context])
  assert answers == ['gamma delta']
  short = finetune_metrics.best_answers(start, end, offsets, is_max, np.array([0, 0]), [context],
                                        max_answer_length=1)
  assert short == ['beta']  # Single tokens only.


# --------------------------------------------------------------------------- optimizer pieces
def test_layer_decay_scales_updates_by_depth():
  params = {'encoder': {'embeddings': {'w': jnp.ones(3)}, 'embeddings_project': {'w': jnp.ones(3)},
                        'layers': {'layer_0': {'w': jnp.ones(3)}, 'layer_1': {'w': jnp.ones(3)}}},
            'classifier': {'w': jnp.ones(3)}}
  grads = jax.tree.map(lambda x: 0.1 * x, params)
  config = finetune_configs.get_config('topic').optimizer
  config.update(warmup_steps=0, weight_decay=0.0, decay='constant')

  def first_update(decay):
    config.layer_decay = decay
    tx, _ = finetune.make_optimizer(config, 10, num_layers=2)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates

  plain, decayed = first_update(1.0), first_update(0.5)
  ratio = jax.tree.map(lambda a, b: float(a[0] / b[0]), decayed, plain)
  assert ratio == {'encoder': {'embeddings': {'w': 0.125}, 'embeddings_project': {'w': 0.125}, 'layers': {
      'layer_0': {'w': 0.25}, 'layer_1': {'w': 0.5}}}, 'classifier': {'w': 1.0}}

  # Scanned layers ([num_layers, ...] under 'stacked') get one scale per slice.
  stacked = {**params, 'encoder': {**params['encoder'],
                                   'layers': {'stacked': {'layer': {'w': jnp.ones((2, 3))}}}}}
  config.layer_decay = 0.5
  tx, _ = finetune.make_optimizer(config, 10, num_layers=2)
  scanned, _ = tx.update(jax.tree.map(lambda x: 0.1 * x, stacked), tx.init(stacked), stacked)
  np.testing.assert_allclose(scanned['encoder']['layers']['stacked']['layer']['w'] / plain['classifier']['w'],
                             [[0.25] * 3, [0.5] * 3], rtol=1e-6)


def test_balanced_class_weights():
  weights = finetune.class_weights(np.array([0, 0, 0, 1]), 3, 'balanced')
  np.testing.assert_allclose(weights, [4 / (3 * 3), 4 / (3 * 1), 0.0])
  with pytest.raises(ValueError, match='class_weights'):
    finetune.class_weights(np.array([0]), 1, 'inverse')


# --------------------------------------------------------------------------- end to end
WORDS = {0: 'apple banana cherry grape lemon mango'.split(),
         1: 'car truck bus train plane boat'.split()}
FILLER = ['the', 'a', 'of', 'and', 'with']


def _classification_task(tokenizer, rng):
  def make(n):
    texts, labels = [], []
    for i in range(n):
      words = list(rng.choice(WORDS[i % 2], 8)) + list(rng.choice(FILLER, 8))
      rng.shuffle(words)
      texts.append(' '.join(words))
      labels.append(i % 2)
    return finetune_data.classification_split(texts, labels, tokenizer, 16, 8)
  return finetune_data.Task('classification', ['fruit', 'vehicle'],
                            {'train': make(48), 'dev': make(8), 'test': make(8)})


def _tagging_task(tokenizer, rng):
  names = ['O', 'B-FRUIT', 'I-FRUIT']
  def make(n):
    sentences, tags = [], []
    for _ in range(n):
      words = list(rng.choice(FILLER + WORDS[1], 10))
      position = rng.integers(0, 9)
      words[position:position + 2] = list(rng.choice(WORDS[0], 2))
      sentences.append(words)
      tags.append([1 if i == position else 2 if i == position + 1 else 0 for i in range(10)])
    return finetune_data.token_classification_split(sentences, tags, tokenizer, 16, 8)
  return finetune_data.Task('token_classification', names,
                            {'train': make(32), 'dev': make(8), 'test': make(8)})


def _qa_task(tokenizer, rng):
  def make(n):
    questions, contexts, answers = [], [], []
    for _ in range(n):
      fruit = str(rng.choice(WORDS[0]))
      before = ' '.join(rng.choice(FILLER + WORDS[1], rng.integers(2, 12)))
      context = f'{before} we ate {fruit} today'
      questions.append('what did we eat')
      contexts.append(context)
      answers.append([(fruit, context.index(f'ate {fruit}') + 4)])
    return finetune_data.qa_split(questions, contexts, answers, tokenizer, 16, 4, max_query_length=6)
  return finetune_data.Task('qa', None, {'train': make(32), 'dev': make(8), 'test': make(8)})


def _config(minilm_dir, **train):
  config = finetune_configs.get_config('topic')
  config.data.tokenizer_path = minilm_dir
  config.model.update(TINY_MODEL)
  config.train.update(batch_size=8, eval_batch_size=8, log_every=1, **train)
  config.optimizer.learning_rate = 2e-3
  return config


def _train_losses(workdir):
  from encoders.training import metrics  # pylint: disable=g-import-not-at-top
  return [r['train/loss'] for r in metrics.read_jsonl(workdir) if 'train/loss' in r]


@pytest.mark.parametrize('kind', ['classification', 'token_classification', 'qa'])
def test_each_head_learns_end_to_end(kind, minilm_dir, tmp_path):
  tokenizer = tokenizer_lib.load(minilm_dir)
  make = {'classification': _classification_task, 'token_classification': _tagging_task,
          'qa': _qa_task}[kind]
  task = make(tokenizer, np.random.default_rng(0))
  config = _config(minilm_dir, num_epochs=4.0)
  if kind == 'classification':
    config.head.update(pooling='mean', class_weights='balanced')
    config.optimizer.layer_decay = 0.8
  result = finetune.finetune(config, str(tmp_path), task=task)
  losses = _train_losses(str(tmp_path))
  assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
  assert set(result['test']) == {
      'classification': {'accuracy', 'macro_f1'},
      'token_classification': {'entity_precision', 'entity_recall', 'entity_f1', 'token_accuracy'},
      'qa': {'exact_match', 'f1'}}[kind]
  if kind == 'classification':
    assert result['test']['accuracy'] == 1.0
  assert os.path.exists(tmp_path / 'results.json')


def _restored_params(workdir):
  manager = checkpointing.make_manager(workdir, read_only=True)
  state, _ = checkpointing.restore(manager, manager.latest_step(), None, with_data=False)
  return state['params']


@pytest.mark.slow
def test_init_from_pretraining_workdir_keeps_every_encoder_weight(minilm_dir, tmp_path):
  pretrain_dir = str(tmp_path / 'pretrain')
  pretrain = training_util.tiny_config(model__vocab_size=30522, train__num_steps=2,
                                       checkpoint__every_steps=2)
  pretrain.model.update(TINY_MODEL)
  pretrain.data.tokenizer_path = minilm_dir
  pretrain.data.input_format = 'full_sentences'  # No NSP head: the pooler must be new.
  trainer.train_and_evaluate(pretrain, pretrain_dir)
  config = _config(minilm_dir, num_epochs=1.0)
  config.init_from = pretrain_dir
  config.optimizer.learning_rate = 0.0  # The saved model is then exactly the initial one.
  task = _classification_task(tokenizer_lib.load(minilm_dir), np.random.default_rng(0))
  result = finetune.finetune(config, str(tmp_path / 'tune'), task=task)
  assert result['new_parameters'] == ['classifier', 'encoder/pooler']
  tuned, pretrained = _restored_params(str(tmp_path / 'tune')), _restored_params(pretrain_dir)
  pretrained_encoder = jax.tree_util.tree_leaves_with_path(pretrained['encoder'])
  assert len(pretrained_encoder) > 10
  for path, value in pretrained_encoder:
    np.testing.assert_array_equal(
        functools_get(tuned['encoder'], path), value, err_msg=jax.tree_util.keystr(path))
  config.reinit = True
  result = finetune.finetune(config, str(tmp_path / 'random'), task=task)
  random = _restored_params(str(tmp_path / 'random'))
  assert result['new_parameters'] == ['all']
  assert not np.array_equal(random['encoder']['embeddings']['word_embeddings']['embedding'],
                            pretrained['encoder']['embeddings']['word_embeddings']['embedding'])


def functools_get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_init_from_hf_minilm_reads_its_weights(minilm_dir, tmp_path):
  config = _config(minilm_dir)
  config.init_from = minilm_dir
  source = finetune_init.resolve(config, str(tmp_path))
  assert source.kind == 'hf' and source.tokenizer.vocab_size == 30522
  model = families.get('bert').task_model('classification',
                                          EncoderConfig.from_config(source.model_config), 3, 'cls')
  ids = jnp.zeros((1, 8), jnp.int32)
  fresh = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), ids)['params']))
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), fresh)
  params, new = finetune_init.initial_params(source, model, fresh, jax.random.PRNGKey(1))
  tensors = load_file(os.path.join(minilm_dir, 'model.safetensors'))
  assert 'classifier' in new
  assert ('encoder/pooler' in new) == ('pooler.dense.weight' not in tensors)
  np.testing.assert_array_equal(params['encoder']['embeddings']['word_embeddings']['embedding'],
                                tensors['embeddings.word_embeddings.weight'])
  np.testing.assert_array_equal(params['encoder']['layers']['layer_5']['mlp']['output']['kernel'],
                                tensors['encoder.layer.5.output.dense.weight'].T)
  assert params['classifier']['dense']['kernel'].shape == (384, 3)
  assert np.std(params['classifier']['dense']['kernel']) > 0  # Initialised, not left at zero.


def test_electra_discriminator_becomes_the_encoder():
  stack = {'layer_0': {'w': np.ones(2)}}
  params = {'embeddings': {'e': np.zeros(2)}, 'generator_encoder': {'layers': {}},
            'discriminator_encoder': {'layers': stack}, 'discriminator_predictions': {}}
  assert electra.discriminator_as_encoder(params) == {
      'encoder': {'embeddings': {'e': params['embeddings']['e']}, 'layers': stack}}
  params['discriminator_encoder']['embeddings_project'] = project = {'kernel': np.ones((2, 4))}
  assert electra.discriminator_as_encoder(params)['encoder']['embeddings_project'] is project


def test_bad_init_from_is_named(minilm_dir, tmp_path):
  config = _config(minilm_dir)
  config.init_from = str(tmp_path / 'nothing')
  with pytest.raises(ValueError, match='init_from'):
    finetune.finetune(config, str(tmp_path / 'out'), task=None)


# --------------------------------------------------------------------------- the command line
def test_readme_recipes_are_presets():
  """`configs/finetune.py:topic_tiny` is the recipe of the README's 0.760 (\"Does pretraining
  help?\": mean pooling, L=64, lr 1e-3, batch 32, 2 epochs, all records), and `topic_minilm` the
  same at lr 1e-4; both are what experiments.compare_inits runs on all records."""
  recipe = dict(task='topic', pooling='mean', max_length=64, batch_size=32, num_epochs=2.0,
                max_examples=0, max_train_examples=0)
  for name, learning_rate in (('topic_tiny', 1e-3), ('topic_minilm', 1e-4)):
    config = finetune_configs.get_config(name)
    assert dict(task=config.task, pooling=config.head.pooling, max_length=config.data.max_length,
                batch_size=config.train.batch_size, num_epochs=config.train.num_epochs,
                max_examples=config.data.max_examples,
                max_train_examples=config.data.max_train_examples) == recipe, name
    assert config.optimizer.learning_rate == learning_rate, name
  # What compare_inits ran for the README's table, n=all (its base, then the cell's overrides).
  base = finetune_ablation.finetune_config('tiny')
  base.data.max_examples = 0
  cells = {c.name: c for c in compare_inits.make_cells('ours', 'hf', [0], 1e-4,
                                                       base.train.num_epochs, 5000)}
  for cell, preset in (('pretrained n=all', 'topic_tiny'), ('HF n=all', 'topic_minilm')):
    ran = sweep.apply_overrides(base, {k: v for k, v in cells[cell].overrides.items()
                                       if k != 'init_from'})
    assert ran.to_dict() == finetune_configs.get_config(preset).to_dict(), cell
  with open(os.path.join(training_util.ROOT, 'README.md')) as f:
    readme = f.read()
  assert 'configs/finetune.py:topic_tiny --workdir workdirs/ft_tiny' in readme


@pytest.mark.slow
def test_command_shows_progress_and_no_info_logs(minilm_dir, tmp_path):
  """experiments.finetune: a tqdm bar up to the last step, the dev lines, and none of orbax's INFO
  lines (absl's `I1203 ...` format) unless asked for with -v."""
  workdir = str(tmp_path / 'ft')
  model = [f'--config.model.{k}={v}' for k, v in TINY_MODEL.items()]
  command = [sys.executable, '-m', 'experiments.finetune', '--config', 'configs/finetune.py:topic',
             '--workdir', workdir, '--config.init_from=none', f'--config.data.tokenizer_path={minilm_dir}',
             '--config.model.vocab_size=30522', '--config.data.max_examples=48',
             '--config.data.max_length=32', '--config.data.max_windows=1',
             '--config.train.batch_size=8', '--config.train.num_epochs=0.5', *model]
  result = subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    num_steps = json.load(f)['num_steps']
  output = result.stdout + result.stderr
  assert f'{num_steps}/{num_steps} [' in output, output[-3000:]
  assert re.search(rf'step {num_steps}: dev accuracy=', output)
  assert not re.findall(r'^I\d{4} ', output, flags=re.M), output[-3000:]
  assert 'test: ' in result.stdout
