"""A bad data setting stops pretraining and fine-tuning at start, naming the field: before a corpus
is built or a tokenizer trained (encoders/data/validate.py). Before, most were ValueErrors raised
once the tokenizer had been trained and the corpus tokenized."""
import os
import subprocess
import sys

import pytest

from encoders.config import ConfigError
from encoders.configs import finetune as finetune_configs
from encoders.data import corpus, tokenized, tokenizer
from encoders.data import validate
from encoders.training import trainer
from tests import training_util


@pytest.fixture
def no_work(monkeypatch):
  """Training a tokenizer, building a corpus or tokenizing it fails the test."""
  for module, name in ((tokenizer, 'train'), (corpus, 'get_builder'),
                       (tokenized, 'load_tokenized_corpus'), (tokenized, 'load_shards')):
    monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f'{name} ran before the check'))


PRETRAINING = [
    (dict(data__mask_rate=1.5), 'config.data.mask_rate=1.5: must be in (0, 1)'),
    (dict(data__input_format='pairs'), "config.data.input_format='pairs': must be one of"),
    (dict(data__masking='word'), "config.data.masking='word': must be one of"),
    (dict(data__seq_length=4), 'config.data.seq_length=4: must be an integer >= 8'),
    (dict(data__max_predictions=40), 'config.data.max_predictions=40: must be None'),
    (dict(data__random_token_prob=0.3), 'config.data.random_token_prob=0.3: must be in [0, 1 - '),
    (dict(data__dupe_factor=0), 'config.data.dupe_factor=0'),
    (dict(data__dataset='wiki_offline/de'), "config.data.dataset='wiki_offline/de'"),
    (dict(data__dataset='text_files'), 'needs config.data.text_files'),
    (dict(data__dataset='text_files', data__text_files='/nonexistent/*.txt'),
     "config.data.text_files='/nonexistent/*.txt' matches no files"),
    (dict(data__dataset='text_files', data__text_files=__file__, data__text_files_split_by='line'),
     "config.data.text_files_split_by='line'"),
    (dict(data__tokenizer='sentencepiece'), "config.data.tokenizer='sentencepiece'"),
    (dict(data__train_split='training'), "config.data.train_split='training': 'wiki_offline/en' "
     "has no split 'training'; its splits are train, validation, test"),
    (dict(data__eval_split='train[:5%]+dev'), "config.data.eval_split='train[:5%]+dev'"),
    (dict(eval_data__mask_rate=2.0), 'config.eval_data.mask_rate=2.0: must be in (0, 1)'),
    (dict(eval_data__eval_split='dev'), "config.eval_data.eval_split='dev'"),
]


def _pretraining_config(**overrides):
  return training_util.tiny_config(**{'train__synthetic_data': False, **overrides})


def test_a_good_config_passes(no_work):
  validate.check_data_config(_pretraining_config())
  validate.check_data_config(finetune_configs.get_config('topic_tiny'))


@pytest.mark.parametrize('overrides, message', PRETRAINING)
def test_pretraining_stops_at_start_naming_the_field(tmp_path, no_work, overrides, message):
  config = _pretraining_config(**overrides)
  with pytest.raises(ConfigError) as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  assert message in str(error.value)
  assert os.listdir(tmp_path) == []


def _finetuning_config(task='topic_tiny', **fields):
  config = finetune_configs.get_config(task)
  for key, value in fields.items():
    section, field = key.split('__')
    config[section][field] = value
  return config


FINETUNING = [
    (dict(task='task=glue/stsb'), "config.task='glue/stsb': supported GLUE tasks are"),
    (dict(task='task=nli'), "config.task='nli': choose 'topic'"),
    (dict(data__dev_fraction=1.0), 'config.data.dev_fraction=1.0: must be in (0, 1)'),
    (dict(data__doc_stride=0), 'config.data.doc_stride=0: must be an integer >= 1'),
    (dict(data__max_length=2), 'config.data.max_length=2: must be an integer >= 4'),
    (dict(data__max_windows=-1), 'config.data.max_windows=-1'),
    (dict(task='task=squad', data__max_length=32), 'config.data.max_length=32: leaves no room '
     'for context after a question of config.data.max_query_length=64 tokens'),
    (dict(data__dataset='text_files', data__text_files=__file__),
     "config.data.dataset='text_files' has no topic labels"),
    (dict(model__vocab_size=8192), 'config.data.vocab_size=30522: the trained tokenizer must '
     'have config.model.vocab_size=8192 tokens'),
    (dict(data__tokenizer='spm'), "config.data.tokenizer='spm'"),
]


@pytest.mark.parametrize('fields, message', FINETUNING)
def test_finetuning_data_errors_name_the_field(tmp_path, no_work, fields, message):
  fields = dict(fields)
  config = _finetuning_config(fields.pop('task', 'topic_tiny'), **fields)
  with pytest.raises(ConfigError) as error:
    validate.check_data_config(config)
  assert message in str(error.value)


@pytest.mark.parametrize('fields, message', FINETUNING[:3])
def test_the_finetune_library_call_checks_too(tmp_path, no_work, fields, message):
  """Sweeps (compare_inits, the ablations, class_imbalance) call training.finetune directly."""
  from encoders.adaptation import finetune  # pylint: disable=g-import-not-at-top
  fields = dict(fields)
  config = _finetuning_config(fields.pop('task', 'topic_tiny'), **fields)
  with pytest.raises(ConfigError) as error:
    finetune.finetune(config, str(tmp_path / 'run'))
  assert message in str(error.value)


def test_a_catalog_task_that_is_not_prepared_names_the_data_dir(tmp_path, no_work):
  config = _finetuning_config('task=glue/sst2', data__data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match=r"'glue/sst2' is not prepared in config.data.data_dir="):
    validate.check_data_config(config)


@pytest.mark.parametrize('module, config, override, message', [
    ('experiments.pretrain', 'configs/bert.py:tiny', '--config.data.mask_rate=1.5',
     'Config error: config.data.mask_rate=1.5: must be in (0, 1).'),
    ('experiments.finetune', 'configs/finetune.py:topic_tiny', '--config.data.dev_fraction=1.5',
     'Config error: config.data.dev_fraction=1.5: must be in (0, 1).'),
])
def test_entry_points_print_the_error_before_any_work(tmp_path, module, config, override,
                                                      message):
  workdir = tmp_path / 'run'
  result = subprocess.run([sys.executable, '-m', module, '--config', config, '--workdir',
                           str(workdir), override], cwd=training_util.ROOT,
                          env=training_util.env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == message, result.stderr[-3000:]
  assert not (workdir / 'tokenizer').exists()


def test_a_config_saved_before_sharding_still_passes_and_a_bad_shard_size_fails():
  """A reloaded workdir's config.json may lack the fields added with sharded caches."""
  from encoders.configs.data import get_data_config  # pylint: disable=g-import-not-at-top
  saved = get_data_config()
  del saved['shard_documents'], saved['tokenizer_max_documents']
  validate.check_pipeline(saved)
  with pytest.raises(ConfigError, match=r'config\.data\.shard_documents=0: must be an integer'):
    validate.check_pipeline(get_data_config(shard_documents=0))
