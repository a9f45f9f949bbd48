"""The data configuration of a run, checked at start: before a corpus is built or a tokenizer trained.

`check_data_config(config)` raises ConfigError naming the first bad field of `config.data`
(and of `config.eval_data`, or of a fine-tuning `config.task`). The pretraining trainer
calls it first thing (encoders/training/trainer.py: validate_config), and experiments/finetune.py
before fine-tuning. The checks of what a corpus holds (an empty split, fewer examples than
hosts, a validation split smaller than one batch) need the corpus and stay where it is read.
"""
import ml_collections

from encoders.config import ConfigError
from encoders.data import corpus, examples, finetune_data, masking, tokenizer


def _fail(prefix: str, field: str, value, requirement: str):
  raise ConfigError(f'{prefix}.{field}={value!r}: {requirement}.')


def check_pipeline(data: ml_collections.ConfigDict, prefix: str = 'config.data') -> None:
  """The example-construction, masking and batching fields of a pretraining `data` section."""

  def check(field, ok, requirement):
    if not ok:
      _fail(prefix, field, data[field], requirement)

  check('input_format', data.input_format in examples.INPUT_FORMATS,
        f'must be one of {examples.INPUT_FORMATS}')
  check('seq_length', isinstance(data.seq_length, int) and data.seq_length >= 8,
        'must be an integer >= 8')
  check('short_seq_prob', 0 <= data.short_seq_prob <= 1, 'must be in [0, 1]')
  check('packing_buffer', data.packing_buffer >= 1, 'must be >= 1')
  check('mask_rate', 0 < data.mask_rate < 1, 'must be in (0, 1)')
  check('mask_token_prob', 0 <= data.mask_token_prob <= 1, 'must be in [0, 1]')
  # A sum with a rounding margin, not 1 - mask_token_prob: in floats 1 - 0.8 < 0.2, which
  # refused 80% [MASK] + 20% random.
  check('random_token_prob', 0 <= data.random_token_prob
        and data.mask_token_prob + data.random_token_prob <= 1 + 1e-9,
        f'must be in [0, 1 - mask_token_prob = {1 - data.mask_token_prob:g}]')
  check('masking', data.masking in masking.MASKING_UNITS,
        f'must be one of {masking.MASKING_UNITS}')
  check('max_predictions', data.max_predictions is None
        or 1 <= data.max_predictions <= data.seq_length,
        f'must be None (derived from mask_rate) or in [1, seq_length={data.seq_length}]')
  check('dupe_factor', data.dupe_factor >= 1, 'must be >= 1')
  check('shuffle_seed', 0 <= data.shuffle_seed < 2**32, 'must be in [0, 2**32)')
  # Configs saved before these fields existed (a reloaded workdir) lack them: defaults apply.
  for field in ('shard_documents', 'tokenizer_max_documents'):
    if field in data:
      check(field, isinstance(data[field], int) and data[field] >= 1, 'must be an integer >= 1')
  check('num_workers', data.num_workers >= 0, 'must be >= 0')
  check('prefetch', data.prefetch >= 0, 'must be >= 0')


def check_tokenizer(config) -> None:
  """config.data's tokenizer: a known kind, and, when one is trained, config.model's vocabulary
  size (an HF tokenizer_path is compared with the model when it is loaded, at start too)."""
  data = config.data
  if data.tokenizer not in tokenizer.KINDS:
    _fail('config.data', 'tokenizer', data.tokenizer, f'must be one of {tokenizer.KINDS}')
  trains = not data.get('tokenizer_path') and config.get('init_from', 'none') == 'none'
  if trains and data.vocab_size != config.model.vocab_size:
    _fail('config.data', 'vocab_size', data.vocab_size,
          f'the trained tokenizer must have config.model.vocab_size={config.model.vocab_size} '
          'tokens: set both')


def check_finetuning(config) -> None:
  """The windowing fields of a fine-tuning `config.data`, and the task's source (finetune_data)."""
  data = config.data
  for field, low in (('max_length', 4), ('doc_stride', 1), ('max_query_length', 1),
                     ('max_answer_length', 1), ('max_windows', 0), ('max_examples', 0),
                     ('max_train_examples', 0)):
    if not isinstance(data[field], int) or data[field] < low:
      _fail('config.data', field, data[field], f'must be an integer >= {low}')
  if not 0 < data.dev_fraction < 1:
    _fail('config.data', 'dev_fraction', data.dev_fraction, 'must be in (0, 1)')
  if config.task == 'squad' and data.max_length < data.max_query_length + 4:
    _fail('config.data', 'max_length', data.max_length,
          f'leaves no room for context after a question of config.data.max_query_length='
          f'{data.max_query_length} tokens and 3 special tokens')
  finetune_data.check_task(config)


def check_data_config(config, eval_data: ml_collections.ConfigDict | None = None) -> None:
  """Raises ConfigError naming the first field of `config` whose data settings cannot work.

  A fine-tuning config (it has `task`) gets its windows and task checked; a pretraining
  config its pipeline fields, and `eval_data` (config.data with config.eval_data's
  overrides: training.trainer.eval_config) as config.eval_data. Runs on synthetic data
  check only what the synthetic batches read (the pipeline fields). Reads no document.
  """
  data = config.data
  if 'task' in config:
    corpus.check_source(data)
    check_tokenizer(config)
    check_finetuning(config)
    return
  check_pipeline(data)
  if eval_data is not None:
    check_pipeline(eval_data, 'config.eval_data')
  if config.train.get('synthetic_data'):
    return
  corpus.check_source(data)
  check_tokenizer(config)
  splits = {'config.data.train_split': data.train_split, 'config.data.eval_split': data.eval_split}
  if eval_data is not None and eval_data.eval_split != data.eval_split:
    splits['config.eval_data.eval_split'] = eval_data.eval_split
  corpus.check_splits(data, splits)
