"""Knowledge distillation (Sanh et al. 2019, DistilBERT) as a pretraining objective.

A frozen teacher (one of our pretraining workdirs, or an HF checkpoint directory) runs
beside the student on the same masked batch; its variables are the train state's
`frozen` part (encoders/training/state.py): sharded by the same rules, checkpointed, never in
the optimizer. The loss is the released recipe's

  alpha_ce * T^2 * KL(softmax(teacher / T) || softmax(student / T))   over `kl_positions`
  + alpha_mlm * MLM(student)                                           over masked positions
  + alpha_cos * (1 - cos(student hidden, teacher hidden))              over real tokens

each a mean over the global batch (HF's distiller.py: KLDivLoss 'batchmean' over the
selected positions, CosineEmbeddingLoss over the attention mask), with `kl_positions`
'all' (every real token, the release's default) or 'masked' (its restrict_ce_to_mask).
The student starts from the teacher: embeddings, MLM head and the layers
`teacher_layers(L_teacher, L_student)` (12 -> 6: [0, 2, 4, 7, 9, 11], the released
choice), which needs the same width. A teacher without an MLM head (a sentence-
transformers checkpoint such as all-MiniLM-L6-v2) distils through its hidden states
only: alpha_ce must be 0.

  config.distill.teacher = '/path/to/workdir' or an HF directory (config.json + safetensors)
  config.data.tokenizer_path = the teacher's tokenizer (checked: same vocabulary)
"""
import dataclasses
import functools
import logging

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from encoders import families, hf_interop, paths
from encoders.adaptation import finetune_init
from encoders.config import ConfigError
from encoders.data import tokenizer as tokenizer_lib
from encoders.heads import gather_positions
from encoders.training import checkpointing, flops
from encoders.training.objectives import Metrics, mlm_terms

KL_POSITIONS = ('all', 'masked')


def teacher_layers(num_teacher: int, num_student: int) -> list[int]:
  """The teacher layers a student starts from: evenly spread from the first to the last.

  round(i * (L_t - 1) / (L_s - 1)), halves up: 12 -> 6 gives DistilBERT's released
  [0, 2, 4, 7, 9, 11]; 6 -> 3 gives [0, 3, 5].
  """
  if not 0 < num_student <= num_teacher:
    raise ConfigError(f'A {num_student}-layer student cannot start from a {num_teacher}-layer '
                      'teacher: it needs 1..teacher layers (or distill.init_from_teacher=False).')
  if num_student == 1:
    return [0]
  return [int(i * (num_teacher - 1) / (num_student - 1) + 0.5) for i in range(num_student)]


@dataclasses.dataclass(frozen=True)
class Teacher:
  """Where the teacher comes from and the module that runs it."""
  path: str
  kind: str  # 'workdir' or 'hf'.
  family: str
  model: nn.Module  # The family's EncoderForPreTraining, or its Encoder when there is no MLM head.
  has_mlm_head: bool
  tokenizer: tokenizer_lib.Tokenizer

  @property
  def config(self):
    return self.model.config


def _has_hf_mlm_head(path: str, model: nn.Module, family) -> bool:
  """Whether the HF checkpoint at `path` holds the MLM head of `model` (an EncoderForPreTraining)."""
  prefix = f'{family.interop_table().prefix}.'
  names = {name.removeprefix(prefix) for name in finetune_init.hf_tensor_names(path)}
  head = [name for path_, name in hf_interop.tensor_names(model, family.name).items()
          if path_[0] == 'mlm_head']
  return all(name in names for name in head)


def load_teacher(path: str, run_model: ml_collections.ConfigDict) -> Teacher:
  """The teacher at `path`, built to compute in the run's dtype and layer layout."""
  path = paths.absolute(path)
  if finetune_init.is_hf_dir(path):
    kind, model_config, tokenizer = 'hf', hf_interop.read_model_config(path), tokenizer_lib.load(path)
  elif finetune_init.is_pretraining_workdir(path):
    manager, step = finetune_init.pretraining_checkpoint(path)
    teacher_run = checkpointing.restore_config(manager, step)
    manager.close()
    kind, model_config = 'workdir', teacher_run.model
    tokenizer = tokenizer_lib.get_tokenizer(teacher_run.data, path)
  else:
    raise ConfigError(f'config.distill.teacher={path!r} is neither an HF checkpoint directory '
                      '(config.json + model.safetensors) nor a pretraining workdir (checkpoints/).')
  family = families.get(model_config.get('family', 'bert'))
  if family.finetunes_as or not hasattr(family.models, 'EncoderForPreTraining'):
    raise ConfigError(f'config.distill.teacher={path!r} is a {family.name} model; a teacher is '
                      'an MLM encoder (bert, roberta, albert, distilbert, ...).')
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  model_config.update(dtype=run_model.dtype, remat_policy='none',
                      hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
  if kind == 'hf':  # A workdir's params keep the layout they were saved in.
    model_config.scan_layers = run_model.scan_layers
  config = family.model_config(model_config, prefix='teacher')
  model = family.models.EncoderForPreTraining(config, sentence_head=False)
  has_mlm_head = kind == 'workdir' or _has_hf_mlm_head(path, model, family)
  if not has_mlm_head:
    model = family.models.Encoder(config)
  return Teacher(path, kind, family.name, model, has_mlm_head, tokenizer)


def _check_tokenizer(teacher: Teacher, data_config) -> None:
  if not data_config.get('tokenizer_path'):
    raise ConfigError('config.data.tokenizer_path is not set: a student reads the teacher\'s '
                      f'tokens; set it to the teacher\'s tokenizer ({teacher.path}'
                      f'{"/tokenizer" if teacher.kind == "workdir" else ""}).')
  student = tokenizer_lib.load(data_config.tokenizer_path, data_config.lowercase)
  if student.backend.get_vocab() != teacher.tokenizer.backend.get_vocab():
    raise ConfigError(f'config.data.tokenizer_path={data_config.tokenizer_path!r} is not the '
                      f'teacher\'s vocabulary ({teacher.path}): teacher and student must share '
                      'the tokenizer.')


class Distillation:
  """Student MLM + distillation from a frozen teacher (module docstring)."""

  def __init__(self, student: nn.Module, teacher: Teacher, *, alpha_ce: float = 5.0,
               alpha_mlm: float = 2.0, alpha_cos: float = 1.0, temperature: float = 2.0,
               kl_positions: str = 'all', init_from_teacher: bool = True,
               layers: list[int] | None = None):
    self.model = student  # Reloading and fine-tuning see the student, like any objective's model.
    self.teacher = teacher
    self.alpha_ce, self.alpha_mlm, self.alpha_cos = alpha_ce, alpha_mlm, alpha_cos
    self.temperature = temperature
    self.kl_positions = kl_positions
    self.init_from_teacher = init_from_teacher
    self.layers = layers
    self._validate()

  @classmethod
  def from_config(cls, config, sentence_head: bool) -> 'Distillation':
    """The student of `config.model` and the teacher of `config.distill` (configs/distilbert.py)."""
    if sentence_head:
      raise ConfigError(f'config.data.input_format={config.data.input_format!r}: distillation '
                        "has no sentence-level loss; use 'doc_sentences' or 'full_sentences'.")
    distill = config.distill
    teacher = load_teacher(distill.teacher, config.model)
    _check_tokenizer(teacher, config.data)
    family = families.of_config(config)
    student = family.models.EncoderForPreTraining(family.model_config(config.model),
                                                  sentence_head=False)
    layers = distill.get('teacher_layers')
    return cls(student, teacher, alpha_ce=distill.alpha_ce, alpha_mlm=distill.alpha_mlm,
               alpha_cos=distill.alpha_cos, temperature=distill.temperature,
               kl_positions=distill.kl_positions, init_from_teacher=distill.init_from_teacher,
               layers=list(layers) if layers else None)

  def _validate(self) -> None:
    s, t = self.model.config, self.teacher.config
    for name in ('alpha_ce', 'alpha_mlm', 'alpha_cos'):
      if getattr(self, name) < 0:
        raise ConfigError(f'config.distill.{name}={getattr(self, name)}: must be >= 0.')
    if self.temperature <= 0:
      raise ConfigError(f'config.distill.temperature={self.temperature}: must be > 0.')
    if self.kl_positions not in KL_POSITIONS:
      raise ConfigError(f'config.distill.kl_positions={self.kl_positions!r}: choose one of '
                        f'{KL_POSITIONS}.')
    if self.alpha_ce and not self.teacher.has_mlm_head:
      raise ConfigError(f'config.distill.teacher={self.teacher.path!r} has no MLM head (e.g. a '
                        'sentence-transformers checkpoint): there are no teacher logits for the '
                        'KL term; set config.distill.alpha_ce=0 to distil its hidden states.')
    if s.vocab_size != t.vocab_size:
      raise ConfigError(f'config.model.vocab_size={s.vocab_size} but the teacher has '
                        f'{t.vocab_size}: the student uses the teacher\'s vocabulary.')
    if (self.alpha_cos or self.init_from_teacher) and s.hidden_size != t.hidden_size:
      raise ConfigError(
          f'config.model.hidden_size={s.hidden_size} but the teacher\'s is {t.hidden_size}: the '
          'cosine loss and the start from teacher layers need the same width (or set '
          'config.distill.alpha_cos=0 and config.distill.init_from_teacher=False).')
    if self.init_from_teacher and s.position_embedding_type != t.position_embedding_type:
      raise ConfigError(
          f'config.model.position_embedding_type={s.position_embedding_type!r} but the teacher\'s '
          f'is {t.position_embedding_type!r}: the start from the teacher copies its position '
          'parameters, which the two would read differently (or set '
          'config.distill.init_from_teacher=False).')
    if self.init_from_teacher:
      self.layers = self.layers or teacher_layers(t.num_layers, s.num_layers)
      if len(self.layers) != s.num_layers or not all(0 <= i < t.num_layers for i in self.layers):
        raise ConfigError(f'config.distill.teacher_layers={self.layers}: need {s.num_layers} '
                          f'indices of the teacher\'s {t.num_layers} layers.')
      self._check_teacher_start()

  def _inputs(self, batch):
    return (batch['input_ids'], batch['segment_ids'], batch['position_ids'],
            batch['token_type_ids'])

  def init(self, rng, batch):
    return self.model.init(rng, *self._inputs(batch), batch['masked_positions'])['params']

  def init_frozen(self, rng, batch):
    """The teacher's variables' shapes and logical axes (boxed); `load_frozen` gives values.

    A teacher without an MLM head is its Encoder, kept under 'encoder' as in the
    pretraining model's tree (so the student's names find it)."""
    params = self.teacher.model.init(rng, *self._inputs(batch))['params']
    return params if self.teacher.has_mlm_head else {'encoder': params}

  @functools.cached_property
  def _teacher_shapes(self):
    """The teacher model's parameter shapes and dtypes (unboxed), in its own tree."""
    model = self.teacher.model
    return nn.meta.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']))

  def load_frozen(self):
    """The teacher's parameters as host arrays, in `init_frozen`'s tree and dtypes."""
    if self.teacher.kind == 'hf':
      params = hf_interop.load_params(self.teacher.path, self.teacher.model)
      return params if self.teacher.has_mlm_head else {'encoder': params}
    manager, step = finetune_init.pretraining_checkpoint(self.teacher.path)
    state, _ = checkpointing.restore(manager, step, None, with_data=False)
    manager.close()
    saved = flax.traverse_util.flatten_dict(state['params'])
    params = {}
    for path, shape in flax.traverse_util.flatten_dict(self._teacher_shapes).items():
      if path not in saved or saved[path].shape != shape.shape:
        raise ValueError(f'{self.teacher.path}: the checkpoint lacks {"/".join(path)} '
                         f'{shape.shape} of the teacher model.')
      params[path] = np.asarray(saved[path]).astype(shape.dtype)
    logging.info('Teacher: %s step %d.', self.teacher.path, step)
    return flax.traverse_util.unflatten_dict(params)

  def init_from_frozen(self, params, frozen):
    """The student's start (pure): embeddings, MLM head and `self.layers` copied from the
    teacher. `_check_teacher_start` made sure at start that every encoder parameter has its
    teacher counterpart; a head the teacher lacks (MiniLM has no MLM head) keeps its init."""
    if not self.init_from_teacher:
      return params
    teacher = flax.traverse_util.flatten_dict(_unrolled(frozen))
    student = flax.traverse_util.flatten_dict(_unrolled(params))
    sources, kept = self._sources(student, teacher)
    if kept:
      logging.info('Student parameters not in the teacher (random init): %s',
                   ['/'.join(path) for path in kept])
    copied = {path: teacher[source].astype(student[path].dtype) for path, source in sources.items()}
    result = flax.traverse_util.unflatten_dict({**student, **copied})
    return _stacked(result) if _is_stacked(params) else result

  def _sources(self, student: dict, teacher: dict) -> tuple[dict, list]:
    """({student path: teacher path} where the teacher has the parameter with that name and
    shape (student layer i reads teacher layer self.layers[i]), [student paths it lacks]),
    over flattened, unrolled parameter trees (values or shapes)."""
    sources, missing = {}, []
    for path, value in student.items():
      source = path
      if path[:2] == ('encoder', 'layers'):
        source = path[:2] + (f'layer_{self.layers[int(path[2].removeprefix("layer_"))]}',) + path[3:]
      if source in teacher and teacher[source].shape == value.shape:
        sources[path] = source
      else:
        missing.append(path)
    return sources, missing

  def _check_teacher_start(self) -> None:
    """Fails at start when a student encoder parameter (embeddings or layers) has no teacher
    parameter of its name and shape: it would silently keep its random init. (A stored run
    started so, from teacher layers under random embeddings; it was only logged.)"""
    batch = {name: jnp.zeros((1, 8), jnp.int32)
             for name in ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids')}
    batch['masked_positions'] = jnp.zeros((1, 2), jnp.int32)
    flat = lambda tree: flax.traverse_util.flatten_dict(_unrolled(nn.meta.unbox(tree)))
    student = jax.eval_shape(lambda: flat(self.init(jax.random.key(0), batch)))
    teacher = self._teacher_shapes  # In init_frozen's tree:
    teacher = jax.eval_shape(flat, teacher if self.teacher.has_mlm_head else {'encoder': teacher})
    _, missing = self._sources(student, teacher)
    missing = ['/'.join(path) for path in missing if path[0] == 'encoder']
    if missing:
      raise ConfigError(
          f'config.distill.init_from_teacher=True, but the teacher {self.teacher.path!r} has no '
          f'parameter of the name and shape of these student parameters: {missing[:8]}'
          f'{" ..." if len(missing) > 8 else ""} ({len(missing)} in all). Match the student to '
          'the teacher (family, sizes) or set config.distill.init_from_teacher=False.')

  def denominators(self, batch) -> dict[str, jax.Array]:
    tokens = jnp.maximum(jnp.sum(batch['segment_ids'] > 0).astype(jnp.float32), 1.0)
    masked = jnp.maximum(jnp.sum(batch['masked_weights']), 1.0)
    return {'mlm': masked, 'kl': tokens if self.kl_positions == 'all' else masked,
            'cos': tokens}

  def loss(self, params, batch, rng, denominators, deterministic: bool = False, frozen=None):
    inputs = self._inputs(batch)
    masked = batch['masked_positions']
    logit_positions = masked if self.kl_positions == 'masked' else None
    student = self.model.apply({'params': params}, *inputs, logit_positions,
                               deterministic=deterministic,
                               rngs=None if deterministic else {'dropout': rng})
    teacher = _run_teacher(self.teacher.model, jax.lax.stop_gradient(frozen), inputs,
                           logit_positions)
    mlm_logits = student['mlm_logits']  # [batch, predictions or length, vocab]
    if logit_positions is None:
      mlm_logits = gather_positions(mlm_logits, masked)
    loss, metrics = mlm_terms(mlm_logits, batch['masked_ids'], batch['masked_weights'],
                              denominators['mlm'])
    loss = self.alpha_mlm * loss
    tokens = (batch['segment_ids'] > 0).astype(jnp.float32)  # [batch, length]
    if 'mlm_logits' in teacher:
      weights = tokens if logit_positions is None else batch['masked_weights']
      kl_loss, kl_metrics = self._kl_terms(student['mlm_logits'], teacher['mlm_logits'], weights,
                                           denominators['kl'])
      loss += self.alpha_ce * kl_loss
      metrics.update(kl_metrics)
    cos_loss, cos_metrics = _cosine_terms(student['hidden'], teacher['hidden'], tokens,
                                          denominators['cos'])
    metrics.update(cos_metrics)
    return loss + self.alpha_cos * cos_loss, metrics

  def _kl_terms(self, student_logits, teacher_logits, weights, denominator):
    """T^2 KL(teacher/T || student/T) per position, summed with `weights`, / `denominator`."""
    t = self.temperature
    teacher_logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
    student_logp = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
    kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), -1)  # [batch, positions]
    kl_sum = jnp.sum(kl * weights) * t ** 2
    agree = jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)
    count = jnp.sum(weights)
    return kl_sum / denominator, {'distill_kl': (kl_sum, count),
                                  'teacher_agreement': (jnp.sum(agree * weights), count)}

  def flops_per_sequence(self, seq_length: int, num_predictions: int) -> float:
    """The student's training FLOPs plus the teacher's forward pass (1/3 of its training)."""
    positions = seq_length if self.kl_positions == 'all' else num_predictions
    teacher_positions = positions if self.teacher.has_mlm_head else 0
    return (flops.flops_per_sequence(self.model.config, seq_length, positions, False)
            + flops.flops_per_sequence(self.teacher.config, seq_length, teacher_positions,
                                       False) / 3)


def _run_teacher(model, params, inputs, logit_positions) -> dict[str, jax.Array]:
  """{'hidden': [batch, length, hidden], and 'mlm_logits' when the teacher has the head}."""
  if 'mlm_head' in params:
    return model.apply({'params': params}, *inputs, logit_positions)
  hidden, _ = model.apply({'params': params['encoder']}, *inputs)
  return {'hidden': hidden}


def _cosine_terms(student_hidden, teacher_hidden, weights, denominator) -> tuple[jax.Array, Metrics]:
  """1 - cos(student, teacher) per real token ([batch, length, hidden] each)."""
  s = student_hidden.astype(jnp.float32)
  t = teacher_hidden.astype(jnp.float32)
  cosine = jnp.sum(s * t, -1) / jnp.maximum(
      jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-8)
  loss_sum = jnp.sum((1.0 - cosine) * weights)
  return loss_sum / denominator, {'cos_loss': (loss_sum, jnp.sum(weights))}


def _is_stacked(params) -> bool:
  return 'stacked' in params.get('encoder', {}).get('layers', {})


def _unrolled(params):
  """`encoder/layers/stacked/layer/...` [L, ...] -> `encoder/layers/layer_{i}/...` (traceable)."""
  if not _is_stacked(params):
    return params
  layers = params['encoder']['layers']['stacked']['layer']
  count = jax.tree.leaves(layers)[0].shape[0]
  unrolled = {f'layer_{i}': jax.tree.map(lambda a, i=i: a[i], layers) for i in range(count)}
  return {**params, 'encoder': {**params['encoder'], 'layers': unrolled}}


def _stacked(params):
  """The inverse of `_unrolled` (traceable)."""
  layers = params['encoder']['layers']
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *(layers[f'layer_{i}'] for i in range(len(layers))))
  return {**params, 'encoder': {**params['encoder'], 'layers': {'stacked': {'layer': stacked}}}}
