"""The model under analysis: `load(path, step)` from a workdir or an HF directory, and its inputs.

A `Subject` holds a model built unrolled (`layer_{i}` parameters) and without remat, so that
encoders/analysis/forward.py can read each layer's attention weights and input, with its params and
tokenizer. Its model is the family's `EncoderForPreTraining` when the checkpoint has an MLM
head, else its `Encoder` (all-MiniLM-L6-v2; ELECTRA's discriminator as a BERT encoder).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from encoders import families, hf_interop
from encoders.data import tokenizer as tokenizer_lib
from encoders.layers import unroll_layers
from encoders.training import checkpointing, reload


@dataclasses.dataclass
class Subject:
  name: str  # What the plots and tables call it, e.g. 'bert_tiny@4000'.
  family: str
  model: nn.Module  # EncoderForPreTraining when has_mlm_head, else Encoder; unrolled, no remat.
  params: dict
  tokenizer: tokenizer_lib.Tokenizer

  @property
  def has_mlm_head(self) -> bool:
    return 'mlm_head' in self.params

  @property
  def num_layers(self) -> int:
    """Attention calls per forward pass (ALBERT runs inner_group_num per layer)."""
    return getattr(self.model.config, 'layers_run', self.model.config.num_layers)


def analysable(model: nn.Module) -> nn.Module:
  """`model` unrolled and without remat: flax's method interceptors then see every layer."""
  return model.clone(config=dataclasses.replace(model.config, scan_layers=False,
                                                remat_policy='none'))


def is_hf_dir(path: str) -> bool:
  return (epath.Path(path) / 'config.json').exists()


def from_workdir(workdir: str, step: int | None = None) -> Subject:
  """The checkpoint `step` (default: latest) of a pretraining workdir."""
  if step is None:
    manager = checkpointing.make_manager(workdir, read_only=True)
    step = manager.latest_step()
    manager.close()
  config, model, params = reload.load_workdir(workdir, step)
  family = families.of_config(config)
  params = jax.tree.map(np.asarray, params)
  if family.finetune_params:  # ELECTRA: its discriminator, as the fine-tuning family's encoder.
    params = families.resolve(family.finetune_params)(params)['encoder']
    encoder_family = families.finetuning(family)
    model = encoder_family.models.Encoder(encoder_family.model_config(config.model))
  tokenizer = tokenizer_lib.get_tokenizer(config.data, workdir)
  name = f'{epath.Path(workdir).name}@{step}'
  return Subject(name, family.name, analysable(model), unroll_layers(params), tokenizer)


def from_hf_dir(checkpoint_dir: str) -> Subject:
  """An HF checkpoint directory: with its MLM head when it has one, else the bare encoder."""
  model_config = hf_interop.read_model_config(checkpoint_dir)
  family = families.get(model_config.family)
  config = dataclasses.replace(family.model_config(model_config), scan_layers=False,
                               remat_policy='none')
  try:
    model = family.models.EncoderForPreTraining(config)
    params = hf_interop.load_params(checkpoint_dir, model)
  except ValueError:  # No MLM head in the checkpoint (e.g. a BertModel).
    model = family.models.Encoder(config, add_pooler=True)
    params = hf_interop.load_params(checkpoint_dir, model)
  name = epath.Path(checkpoint_dir).name
  if name == 'model':  # The installed MiniLM package's folder.
    name = epath.Path(checkpoint_dir).parent.name
  return Subject(name, family.name, model, params, tokenizer_lib.load(checkpoint_dir))


def load(path: str, step: int | None = None) -> Subject:
  """A workdir (any saved `step`) or an HF checkpoint directory (no steps)."""
  if is_hf_dir(path):
    if step is not None:
      raise ValueError(f'{path} is an HF checkpoint directory: it has no steps (step={step}).')
    return from_hf_dir(path)
  return from_workdir(path, step)


def reinitialized(subject: Subject, seed: int = 0) -> Subject:
  """The same architecture and tokenizer with freshly initialised parameters (a probe control)."""
  ids = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(jax.jit(subject.model.init)(jax.random.key(seed), ids)['params'])
  return dataclasses.replace(subject, name=f'{subject.name} (random init)',
                             params=jax.tree.map(np.asarray, params))


@dataclasses.dataclass
class Encoded:
  """Texts as model inputs, each row [CLS] text [SEP] right-padded to `length`."""
  input_ids: np.ndarray  # int32 [texts, length]
  segment_ids: np.ndarray  # int32 [texts, length]: 1 on [CLS] text [SEP], 0 on padding.
  offsets: np.ndarray  # int32 [texts, length, 2]: character span of each token, (0, 0) if none.


def encode(tokenizer: tokenizer_lib.Tokenizer, texts: list[str], max_length: int,
           length: int | None = None) -> Encoded:
  """Texts truncated to max_length tokens with [CLS] and [SEP], padded to `length`
  (default: the longest row)."""
  encodings = tokenizer.backend.encode_batch(list(texts), add_special_tokens=False)
  rows = [e.ids[:max_length - 2] for e in encodings]
  length = length or max(len(row) for row in rows) + 2
  input_ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((len(rows), length), np.int32)
  offsets = np.zeros((len(rows), length, 2), np.int32)
  for i, (row, encoding) in enumerate(zip(rows, encodings)):
    input_ids[i, :len(row) + 2] = [tokenizer.cls_id, *row, tokenizer.sep_id]
    segment_ids[i, :len(row) + 2] = 1
    offsets[i, 1:len(row) + 1] = encoding.offsets[:len(row)]
  return Encoded(input_ids, segment_ids, offsets)


def tokens(tokenizer: tokenizer_lib.Tokenizer, input_ids: np.ndarray) -> list[str]:
  """The token strings of one row of ids, padding left out."""
  return [tokenizer.id_to_token(t) for t in input_ids if t != tokenizer.pad_id]
