"""BERT (Devlin et al. 2019) at the sizes of Turc et al. 2019.

  python -m experiments.pretrain --config configs/bert.py:tiny --workdir /tmp/bert_tiny
  python -m experiments.pretrain --config configs/bert.py:size=base --workdir DIR \
      --config.model.num_layers=6 --config.optimizer.learning_rate=2e-4

Argument: `size` (tiny, mini, small, medium, base, large).
"""
import ml_collections

from encoders.configs import common
from encoders.configs.data import get_data_config, get_eval_data_config
from encoders.configs.model import get_model_config
from encoders.configs.training import get_training_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size='base')
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, dropout and the data order.
  config.model = get_model_config(arg.size)
  if arg.size == 'tiny':
    config.model.vocab_size = common.TINY_VOCAB_SIZE
  config.data = get_data_config(
      input_format='segment_pair_nsp',  # BERT: two spans of sentences + next-sentence prediction.
      static_masking=True,  # BERT's create_pretraining_data.py masks once, dupe_factor=10 copies.
  )
  # One vocabulary size: a command-line override of model.vocab_size also sizes the tokenizer.
  config.data.vocab_size = config.model.get_ref('vocab_size')
  if arg.size == 'tiny':
    # The embedded corpus's summaries are short: BERT's segment pairs leave more of each row as
    # padding than packed FULL-SENTENCES rows (README, "Input pipeline": packing efficiency
    # 0.70 against 0.89), so the tiny recipe uses RoBERTa's input: packed rows, dynamic
    # masking, no NSP.
    config.data.update(input_format='full_sentences', static_masking=False)
  config.eval_data = get_eval_data_config()  # Validation's overrides of config.data (none set).
  config.update(get_training_config(arg.size))
  return config
