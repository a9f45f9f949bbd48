"""ALBERT (Lan et al. 2020): factorized embeddings, shared layers, SOP and n-gram masking.

  python -m experiments.pretrain --config configs/albert.py:tiny --workdir /tmp/albert_tiny
  python -m experiments.pretrain --config configs/albert.py:base --workdir DIR --config.model.sharing=none

Argument: `size` (tiny, base, large, xlarge, xxlarge). Sizes are the paper's Table 1 (heads
H/64 and FFN 4H as its section 3.2 says, except xxlarge's 16384-wide FFN and 64 heads);
the pretraining recipe is its section 4.1 and the released run_pretraining.py: LAMB at
0.00176, batch 4096, 125k steps, 3125 warm-up steps, length 512, SOP, 3-gram masking with
20 predictions per row, a 30k SentencePiece vocabulary, and no dropout (v2 models).
`tiny` is a 4-layer, width-128 model for the embedded corpus on a laptop CPU.
"""
import ml_collections

from encoders.configs import bert, common
from encoders.configs.model import get_model_config as get_bert_model_config

SIZES = {
    #           layers, hidden, embedding, heads, FFN
    'tiny':    (4, 128, 64, 2, 512),
    'base':    (12, 768, 128, 12, 3072),
    'large':   (24, 1024, 128, 16, 4096),
    'xlarge':  (24, 2048, 128, 32, 8192),  # transformers' albert-xlarge-v2 has 16 heads of 128.
    'xxlarge': (12, 4096, 128, 64, 16384),
}


def get_model_config(size: str) -> ml_collections.ConfigDict:
  """The `config.model` section: BERT's fields plus ALBERT's."""
  if size not in SIZES:
    raise ValueError(f'Unknown ALBERT size {size!r}; known sizes: {", ".join(SIZES)}.')
  num_layers, hidden_size, embedding_size, num_heads, intermediate_size = SIZES[size]
  model = get_bert_model_config('base', num_layers=num_layers, hidden_size=hidden_size,
                                num_heads=num_heads, intermediate_size=intermediate_size)
  model.family = 'albert'
  model.vocab_size = common.TINY_VOCAB_SIZE if size == 'tiny' else 30000
  model.embedding_size = embedding_size  # E: embeddings are E wide, then mapped to hidden_size.
  model.num_hidden_groups = 1  # Weight groups the layers cycle through (1: all layers share).
  model.inner_group_num = 1  # Layers inside a group.
  model.sharing = 'all'  # Shared halves (Table 4): 'all', 'attention', 'ffn' or 'none'.
  model.hidden_act = 'gelu_new'  # The tanh approximation, as the released code.
  model.hidden_dropout_rate = 0.0  # ALBERT v2 trains without dropout.
  model.attention_dropout_rate = 0.0
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size='base')
  model = get_model_config(arg.size)
  config = bert.get_config('tiny' if arg.size == 'tiny' else 'base')
  config.model = model
  config.data.vocab_size = model.get_ref('vocab_size')  # One vocabulary size, as in configs/bert.py.
  config.data.tokenizer = 'unigram'  # SentencePiece's unigram LM, lowercased.
  config.data.input_format = 'sop'  # Two consecutive segments, swapped half the time.
  config.data.masking = 'ngram'  # n <= 3 whole-word n-grams, p(n) proportional to 1/n.
  config.data.static_masking = False
  if arg.size == 'tiny':
    return config

  config.data.seq_length = 512
  config.data.max_predictions = 20
  config.train.batch_size = 4096
  config.train.num_steps = 125_000
  opt = config.optimizer
  opt.name = 'lamb'
  opt.learning_rate = 0.00176
  opt.warmup_steps = 3125
  opt.decay = 'linear'
  opt.end_learning_rate_fraction = 0.0
  opt.weight_decay = 0.01
  return config
