"""The model-family registry: `config.model.family` -> everything that family brings.

One entry per family. The trainer, fine-tuning, reloading and HF interop look a family
up here and call what it names; none of them branches on a family's name. Adding a
family is one model file (`encoders/<family>.py`), one interop table, one config file
(`configs/<family>.py`) and one entry below.

A family's model module provides `Encoder`, `EncoderForPreTraining`,
`EncoderForSequenceClassification`, `EncoderForTokenClassification`,
`EncoderForQuestionAnswering` (BERT's signatures) and `layer_depth(names, value, config)`
for layer-wise learning-rate decay, unless the family fine-tunes as another
(`finetunes_as`: ELECTRA's discriminator is a BERT encoder). The objective and the interop table are named as
'module:attribute' strings, imported on first use (the objectives live in training/,
which imports this module).
"""
import dataclasses
import importlib
import types

from encoders import albert, bert, deberta, distilbert, electra
from encoders.config import ConfigError, EncoderConfig


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_file: str  # The family's sizes and pretraining recipe, for --config.
  config_class: type  # The frozen config `config.model` is validated into.
  models: types.ModuleType  # The flax modules (see the module docstring).
  objective: str  # 'module:Class' with from_config(config, sentence_head): the pretraining loss.
  interop: str | None  # 'module:TABLE' of transformers names, or 'module' with its own API.
  hf_model_type: str | None  # transformers' config.json model_type.
  # The family whose modules fine-tune this one's pretrained encoder, and the function that
  # takes that encoder out of the pretraining params (ELECTRA: its discriminator, as BERT).
  finetunes_as: str | None = None
  finetune_params: str | None = None

  def model_config(self, model_config, prefix: str = 'model'):
    """`config.model` (a ConfigDict) -> the family's validated frozen config."""
    return self.config_class.from_config(model_config, prefix)

  def make_objective(self, config, sentence_head: bool):
    return resolve(self.objective).from_config(config, sentence_head)

  def interop_table(self):
    if self.interop is None:
      raise ConfigError(f'model.family={self.name!r} has no transformers import/export.')
    return resolve(self.interop)

  def task_model(self, kind: str, model_config, num_labels: int | None = None,
                 pooling: str = 'cls'):
    """The fine-tuning model of `kind` ('classification', 'token_classification', 'qa')."""
    if kind == 'classification':
      return self.models.EncoderForSequenceClassification(model_config, num_labels, pooling)
    if kind == 'token_classification':
      return self.models.EncoderForTokenClassification(model_config, num_labels)
    if kind == 'qa':
      return self.models.EncoderForQuestionAnswering(model_config)
    raise ConfigError(f"Unknown task kind {kind!r}; choose 'classification', "
                      "'token_classification' or 'qa'.")


_MLM = 'encoders.training.objectives:MaskedLanguageModeling'
FAMILIES = {
    'bert': Family('bert', 'configs/bert.py', EncoderConfig, bert, _MLM,
                   'encoders.hf_interop:BERT', 'bert'),
    'roberta': Family('roberta', 'configs/roberta.py', EncoderConfig, bert, _MLM,
                      'encoders.hf_interop:ROBERTA', 'roberta'),
    'electra': Family('electra', 'configs/electra.py', electra.ElectraConfig, electra,
                      'encoders.training.electra_objective:ReplacedTokenDetection',
                      'encoders.electra_interop', 'electra', finetunes_as='bert',
                      finetune_params='encoders.electra:discriminator_as_encoder'),
    'albert': Family('albert', 'configs/albert.py', albert.AlbertConfig, albert, _MLM,
                     'encoders.albert_interop:ALBERT', 'albert'),
    'deberta': Family('deberta', 'configs/deberta.py', deberta.DebertaConfig, deberta,
                      'encoders.training.electra_objective:MaskedOrReplaced',  # model.objective: mlm / rtd.
                      'encoders.deberta_interop:DEBERTA', 'deberta-v2',
                      finetune_params='encoders.deberta:pretrained_encoder'),
    'distilbert': Family('distilbert', 'configs/distilbert.py', distilbert.DistilBertConfig,
                         distilbert, _MLM, 'encoders.distilbert_interop:DISTILBERT', 'distilbert'),
}


def get(name: str) -> Family:
  """The registered family `name`; anything else is a ConfigError that lists the choices."""
  if name not in FAMILIES:
    raise ConfigError(f'model.family={name!r} is not a registered family; choose one of '
                      f'{tuple(FAMILIES)} (encoders/families.py).')
  return FAMILIES[name]


def of_config(config) -> Family:
  """The family of a run config (`config.model.family`)."""
  return get(config.model.get('family', 'bert'))


def finetuning(family: Family) -> Family:
  """The family whose modules fine-tune `family`'s encoder (itself unless `finetunes_as`)."""
  return get(family.finetunes_as) if family.finetunes_as else family


def by_hf_model_type(model_type: str | None) -> Family:
  """The family that reads a transformers checkpoint of `model_type` with one table."""
  for family in FAMILIES.values():
    if family.hf_model_type == model_type and family.interop and ':' in family.interop:
      return family
  for family in FAMILIES.values():
    if family.hf_model_type == model_type:
      raise ConfigError(f'model_type={model_type!r}: read it with {family.interop}.')
  known = tuple(f.hf_model_type for f in FAMILIES.values() if f.interop and ':' in f.interop)
  raise ConfigError(f'model_type={model_type!r} is not supported; known: {known}.')


def resolve(name: str):
  """'package.module:attribute' -> the attribute ('package.module' -> the module)."""
  module_name, _, attribute = name.partition(':')
  module = importlib.import_module(module_name)
  return getattr(module, attribute) if attribute else module
