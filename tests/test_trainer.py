"""The training loop on one device: outputs of a run, determinism, accumulation, NaN, config errors."""
import glob
import json
import math
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from encoders.config import ConfigError
from encoders.training import checkpointing, metrics, reload, sharding, synthetic, trainer
from tests import training_util


def _setup(config):
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  return trainer.setup(config, mesh), mesh


def _steps(config, num_steps, seed=0, run_and_mesh=None):
  """Losses, finite flags and final params of `num_steps` steps on one device, outside the loop."""
  run, mesh = run_and_mesh or _setup(config)
  state = run.init_state(seed)
  batches = synthetic.SyntheticIterator(config, 'train', pairs=run.sentence_head)
  losses, finite = [], []
  with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
    for _ in range(num_steps):
      state, sums = run.step_fn(state, sharding.global_batch(next(batches), mesh))
      losses.append(float(sums['loss'][0]))
      finite.append(bool(sums['finite']))
  return losses, finite, jax.device_get(state.params)


def test_run_writes_metrics_tensorboard_and_checkpoints(tmp_path):
  config = training_util.tiny_config(train__num_steps=7, train__eval_every=4, train__log_every=2,
                                     checkpoint__every_steps=2, checkpoint__keep=2)
  final = trainer.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_jsonl(str(tmp_path))
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  eval_steps = [r['step'] for r in records if 'eval/mlm_loss' in r]
  assert train_steps == [1, 2, 4, 6, 7] and eval_steps == [0, 4, 7]
  timed = [r for r in records if 'train/step_time_s' in r][-1]
  for name in ('loss', 'mlm_loss', 'mlm_accuracy', 'grad_norm', 'param_norm',
               'learning_rate', 'step_time_s', 'tokens_per_s', 'mfu'):
    assert math.isfinite(timed[f'train/{name}']), name
  assert final['mlm_perplexity'] == pytest.approx(math.exp(final['mlm_loss']))
  assert 0.0 <= final['mlm_accuracy'] <= 1.0
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  manager = checkpointing.make_manager(str(tmp_path), read_only=True)
  assert manager.all_steps() == [6, 7]  # Every 2 steps and at the end, keeping 2.
  saved = checkpointing.restore_config(manager, 7)
  assert saved.model.hidden_size == 32 and saved.train.num_steps == 7
  with open(tmp_path / 'checkpoints' / '7' / 'data' / 'process_0-of-1.json') as f:
    assert json.load(f) == {'step': 7}
  logged = training_util.train_metric(str(tmp_path), 'param_norm')
  # The norm of the parameters after that step, as checkpointed; one step moves it by
  # ~2e-6 (relative) here, so the tolerance tells the step apart.
  for step in (6, 7):
    _, _, params = reload.load_workdir(str(tmp_path), step)
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(params)]
    assert logged[step] == pytest.approx(np.linalg.norm(np.concatenate(leaves)), rel=5e-7)


def test_same_seed_same_losses_and_different_seed_differs():
  config = training_util.tiny_config()
  run_and_mesh = _setup(config)
  first = _steps(config, 3, run_and_mesh=run_and_mesh)[0]
  assert _steps(config, 3, run_and_mesh=run_and_mesh)[0] == first
  assert _steps(config, 3, seed=1, run_and_mesh=run_and_mesh)[0] != first


def test_gradient_accumulation_matches_one_batch():
  no_dropout = dict(model__hidden_dropout_rate=0.0, model__attention_dropout_rate=0.0)
  losses, _, params = _steps(training_util.tiny_config(**no_dropout), 3)
  losses_accum, _, params_accum = _steps(
      training_util.tiny_config(train__grad_accum_steps=4, **no_dropout), 3)
  assert losses_accum == pytest.approx(losses, rel=1e-5)
  # The key bias's true gradient is zero (softmax ignores a per-query shift); Adam turns its
  # rounding noise into +-lr steps, so it is left out.
  for layer in params_accum['encoder']['layers'].values():
    del layer['attention']['key']['bias']
  for layer in params['encoder']['layers'].values():
    del layer['attention']['key']['bias']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_accum, params)


def test_logged_loss_with_accumulation_is_the_global_batch_loss(tmp_path):
  """train/loss through the loop: accum=4 logs what accum=1 logs for the same global batch."""
  logged = {}
  for accum in (1, 4):
    config = training_util.tiny_config(
        train__num_steps=3, train__grad_accum_steps=accum, checkpoint__every_steps=3,
        model__hidden_dropout_rate=0.0, model__attention_dropout_rate=0.0)
    trainer.train_and_evaluate(config, str(tmp_path / str(accum)))
    logged[accum] = {r['step']: r for r in metrics.read_jsonl(str(tmp_path / str(accum)))
                     if 'train/loss' in r}
  assert sorted(logged[4]) == sorted(logged[1]) == [1, 2, 3]
  for step, record in logged[4].items():
    assert record['train/loss'] == pytest.approx(logged[1][step]['train/loss'], rel=1e-5), step
    # The objective's loss is the MLM mean plus the NSP mean (weight 1), each logged from
    # its own (sum, count) pair; with one step per log line the sum of those is the loss.
    assert record['train/loss'] == pytest.approx(
        record['train/mlm_loss'] + record['train/sentence_loss'], rel=1e-5), step


def test_run_prints_its_plan_then_a_time_estimate(tmp_path, capsys, monkeypatch):
  """Process 0 prints the model size, tokens per step, steps and total tokens before the first
  step, and the measured time per step times the steps left once a few steps are timed."""
  monkeypatch.setattr(trainer, 'ETA_MIN_SECONDS', 0.0)  # After ETA_STEPS = 3 steps, however fast.
  config = training_util.tiny_config(train__num_steps=7, checkpoint__every_steps=7)
  trainer.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  rounded = r'(?: \([\d.]+[kMBT]\))?'  # '17,186 (17.2k)'.
  plan = re.search(rf'Plan: bert L1/H32, ([\d,]+){rounded} parameters; 8 x 32 = ([\d,]+) tokens per '
                   rf'step; ([\d,]+) steps = ([\d,]+){rounded} tokens', out)
  assert plan, out
  parameters, tokens_per_step, steps, total_tokens = (int(g.replace(',', '')) for g in plan.groups())
  # BERT with TINY's sizes, counted by hand: V=128 words, H=32, I=64, 64 positions, 2 types.
  V, H, I, P, T = 128, 32, 64, 64, 2
  embeddings = V * H + P * H + T * H + 2 * H  # Word, position, type tables and a LayerNorm.
  layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H  # q, k, v, o; LN; MLP; LN.
  pooler, mlm_head, nsp_head = H * H + H, (H * H + H) + 2 * H + V, 2 * H + 2  # MLM decoder is tied.
  assert parameters == embeddings + layer + pooler + mlm_head + nsp_head == 17_186
  _, _, params = reload.load_workdir(str(tmp_path))
  assert parameters == sum(np.size(x) for x in jax.tree.leaves(params))
  assert (tokens_per_step, steps, total_tokens) == (8 * 32, 7, 8 * 32 * 7)
  eta = re.search(r'Time estimate: ([\d.e+-]+) s per step \(timed over 3 steps\) x (\d+) steps left',
                  out)
  assert eta, out
  # Step 1 compiles; steps 2-4 are timed, leaving 7 - 4.
  assert float(eta.group(1)) > 0 and int(eta.group(2)) == 3
  assert out.index('Plan: ') < out.index('Time estimate: ')


# A huge unclipped learning rate: the first update is finite, the loss after it is not.
EXPLODE = dict(optimizer__learning_rate=1e30, optimizer__warmup_steps=0,
               optimizer__grad_clip_norm=0.0)


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
  config = training_util.tiny_config(checkpoint__every_steps=1, **EXPLODE)
  with pytest.raises(FloatingPointError, match=r'at step (\d+)') as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  bad_step = int(error.value.args[0].split('at step ')[1].split()[0])
  manager = checkpointing.make_manager(str(tmp_path), read_only=True)
  assert 1 < bad_step < 12 and manager.latest_step() == bad_step - 1


def test_nonfinite_updates_are_skipped_when_configured():
  losses, finite, params = _steps(
      training_util.tiny_config(train__skip_nonfinite_updates=True, **EXPLODE), 4)
  assert finite[0] and not all(finite)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))  # Bad updates not applied.


@pytest.mark.parametrize('overrides, field', [
    (dict(train__batch_size=6, train__grad_accum_steps=4), 'config.train.batch_size'),
    (dict(train__grad_accum_steps=0), 'config.train.grad_accum_steps'),
    (dict(optimizer__warmup_steps=100), 'config.optimizer.warmup_steps'),
    (dict(data__seq_length=128), 'config.data.seq_length'),
    (dict(model__num_heads=3), 'config.model.hidden_size'),
    (dict(checkpoint__every_steps=0), 'config.checkpoint.every_steps'),
])
def test_bad_configs_name_the_field(overrides, field):
  config = training_util.tiny_config(**overrides)
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    trainer.validate_config(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))


def test_tensor_axis_must_divide_heads():
  config = training_util.tiny_config(model__num_heads=2)

  class FakeMesh:  # One real device: check the rule on a mesh shape alone.
    shape = {'data': 1, 'fsdp': 1, 'tensor': 4}
  with pytest.raises(ConfigError, match=r'config\.model\.num_heads=2'):
    trainer.validate_config(config, FakeMesh())


def test_synthetic_batches_follow_the_contract():
  config = training_util.tiny_config()
  batch = next(synthetic.SyntheticIterator(config, 'train', pairs=True))
  B, L, P = 8, 32, synthetic.max_predictions(config.data)
  assert {k: v.shape for k, v in batch.items()} == {
      'input_ids': (B, L), 'segment_ids': (B, L), 'position_ids': (B, L),
      'token_type_ids': (B, L), 'masked_positions': (B, P), 'masked_ids': (B, P),
      'masked_weights': (B, P), 'nsp_labels': (B,)}
  rows = np.arange(B)[:, None]
  original = batch['input_ids'].copy()
  original[rows, batch['masked_positions']] = np.where(
      batch['masked_weights'] > 0, batch['masked_ids'], original[rows, batch['masked_positions']])
  real = batch['segment_ids'] > 0
  assert np.all(np.diff(original, axis=1)[real[:, 1:] & real[:, :-1]] != 0)  # Progressions.
  assert np.all(batch['input_ids'][~real] == 0) and np.all(batch['position_ids'][~real] == 0)


def _loss_and_grads(config):
  """Loss and gradients of the first synthetic batch at the initial parameters, one device."""
  run, mesh = _setup(config)
  state = run.init_state(0)
  batch = sharding.global_batch(
      next(synthetic.SyntheticIterator(config, 'train', pairs=run.sentence_head)), mesh)
  rng = jax.random.fold_in(state.rng, 0)

  def loss(params):
    return run.objective.loss(params, batch, rng, run.objective.denominators(batch))[0]

  with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
    value, grads = jax.jit(jax.value_and_grad(loss))(state.params)
  leaves = jax.tree.leaves(jax.device_get(nn.unbox(grads)))
  return float(value), np.concatenate([np.ravel(g) for g in leaves]), run


# With attention dropout the softmax is spelled out (on CPU it is without it too), and its two
# einsums go through layers.matmul's bf16 backward.
@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_bfloat16_compute_keeps_float32_params_and_gives_the_f32_gradients(dropout):
  rates = dict(model__hidden_dropout_rate=dropout, model__attention_dropout_rate=dropout)
  loss_bf16, grads_bf16, run = _loss_and_grads(
      training_util.tiny_config(model__dtype='bfloat16', **rates))
  dtypes = {x.dtype for x in jax.tree.leaves((run.abstract_state.params,
                                               run.abstract_state.opt_state)) if x.ndim}
  assert dtypes == {np.dtype('float32')}
  # Same keys, so the same dropout masks: the two differ by bf16 rounding only (8 bits of
  # mantissa; a gradient from a wrong backward pass would be off by far more).
  loss_f32, grads_f32, _ = _loss_and_grads(training_util.tiny_config(**rates))
  assert loss_bf16 == pytest.approx(loss_f32, rel=2e-2)
  assert np.linalg.norm(grads_bf16 - grads_f32) < 0.05 * np.linalg.norm(grads_f32)


def test_eval_data_overrides_only_the_validation_batches(tmp_path):
  config = training_util.tiny_config(train__num_steps=2, train__eval_every=2)
  config.eval_data.mask_rate = 0.5
  train_iter, make_eval_iterator = trainer.make_iterators(config, str(tmp_path), False)
  # P = ceil(rate * L) rounded up to a multiple of 8, with L = 32: 8 at 15%, 16 at 50%.
  assert next(train_iter)['masked_ids'].shape == (8, 8)
  assert next(make_eval_iterator())['masked_ids'].shape == (8, 16)
  assert config.data.mask_rate == 0.15
  final = trainer.train_and_evaluate(config, str(tmp_path))  # Eval compiles for its own P.
  assert 0.0 <= final['mlm_accuracy'] <= 1.0


def test_eval_data_unknown_field_names_it():
  config = training_util.tiny_config()
  config.eval_data = {'mask_rte': 0.15}
  with pytest.raises(ConfigError, match=r'config\.eval_data\.mask_rte'):
    trainer.validate_config(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))


def test_validation_split_smaller_than_a_batch_stops_at_start(tmp_path):
  """A text_files corpus whose validation split is one short paragraph: one row of 32 tokens."""
  from encoders.data import corpus  # pylint: disable=g-import-not-at-top
  articles = [a['extract'].replace('\n\n', '\n')
              for a in list(corpus.wiki_offline_articles('en').values())[:40]]
  split = [corpus.split_of(f'corpus.txt#{i}') for i in range(len(articles))]
  assert split.count('validation') == 1  # Paragraph i is the document 'corpus.txt#i'.
  paragraphs = ['A short paragraph.' if s == 'validation' else a for s, a in zip(split, articles)]
  (tmp_path / 'corpus.txt').write_text('\n\n'.join(paragraphs))
  config = training_util.tiny_config(train__synthetic_data=False, train__num_steps=2,
                                     data__input_format='full_sentences', model__vocab_size=512)
  config.data.update(dataset='text_files', text_files=str(tmp_path / 'corpus.txt'), vocab_size=512,
                     text_files_split_by='paragraph', data_dir=str(tmp_path / 'tfds'))
  workdir = str(tmp_path / 'work')
  with pytest.raises(ConfigError, match=r"eval_split='validation'.* gives 1 row of 32 tokens, "
                     r'fewer than one validation batch of config\.train\.batch_size=8 rows'):
    trainer.train_and_evaluate(config, workdir)
  assert checkpointing.make_manager(workdir, read_only=True).latest_step() is None
  assert not (tmp_path / 'work' / 'metrics.jsonl').exists()  # Stopped before step 0's validation.
  config.train.batch_size = 1  # The one row is a whole batch.
  _, make_eval_iterator = trainer.make_iterators(config, workdir, False)
  assert [b['input_ids'].shape for b in make_eval_iterator()] == [(1, 32)]


def test_text_files_with_one_document_per_file_validate(tmp_path):
  """Six files that the title hash all puts in train (tests/test_corpus.py): the run validates on
  the one moved to validation, where it stopped with TFDS's "Unknown split 'validation'"."""
  from tests import test_corpus  # pylint: disable=g-import-not-at-top
  test_corpus.six_train_files(tmp_path / 'files')
  config = training_util.tiny_config(train__synthetic_data=False, train__num_steps=2,
                                     data__input_format='full_sentences', model__vocab_size=512)
  config.data.update(dataset='text_files', text_files=str(tmp_path / 'files'), vocab_size=512,
                     data_dir=str(tmp_path / 'tfds'))
  final = trainer.train_and_evaluate(config, str(tmp_path / 'work'))
  assert math.isfinite(final['mlm_loss'])


def test_validation_reads_its_examples_once(tmp_path, monkeypatch):
  """Three validations (steps 0, 2 and 4) and the start-up check cut the validation split into
  examples once, as training cuts its split once (each is cached with its shard)."""
  from encoders.data import examples  # pylint: disable=g-import-not-at-top
  from tests import test_corpus  # pylint: disable=g-import-not-at-top
  test_corpus.six_train_files(tmp_path / 'files')
  config = training_util.tiny_config(train__synthetic_data=False, train__num_steps=4,
                                     train__eval_every=2, train__batch_size=1,
                                     data__input_format='full_sentences', model__vocab_size=512)
  config.data.update(dataset='text_files', text_files=str(tmp_path / 'files'), vocab_size=512,
                     data_dir=str(tmp_path / 'tfds'))
  cuts = []
  original = examples.build_examples
  monkeypatch.setattr(examples, 'build_examples', lambda corpus, *a: cuts.append(
      corpus.num_documents) or original(corpus, *a))
  trainer.train_and_evaluate(config, str(tmp_path / 'work'))
  assert sorted(cuts) == [1, 5]  # The validation file, then the five training ones.
  evaluations = [r for r in metrics.read_jsonl(str(tmp_path / 'work')) if 'eval/mlm_loss' in r]
  assert [r['step'] for r in evaluations] == [0, 2, 4]
