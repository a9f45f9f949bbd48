"""Sentence-embedding training (Sentence-BERT bi-encoder) on pairs of the embedded corpus.

  python -m experiments.train_sentence --config configs/sentence.py:minilm --workdir workdirs/sentence_minilm
  python -m experiments.train_sentence --config configs/sentence.py:bert_tiny \
      --workdir workdirs/sentence_tiny --config.init_from=workdirs/bert_tiny

Argument: a preset of PRESETS, or `size` (the model built for init_from=none). The recipe is
sentence-transformers' for MultipleNegativesRankingLoss: mean pooling, cosine x 20, in-batch
negatives, AdamW with 10% warm-up and linear decay, on description -> extract pairs (~8,900 in
'train'). Both presets add one same-topic hard negative per pair: all-MiniLM-L6-v2 already ranks
every in-batch negative below the positive (in-batch accuracy ~1.0, loss ~0.01), so in-batch
negatives alone teach it little. 'minilm' fine-tunes all-MiniLM-L6-v2 at lr 2e-5 for 100 steps
(a third of an epoch: ~25 s a step on this loaded 2-core machine), 'bert_tiny' a BERT-tiny
pretraining workdir at lr 1e-3 (the topic_tiny rate) for one epoch.
"""
import ml_collections
from ml_collections import config_dict

from encoders.configs import common
from encoders.configs.model import get_model_config
from encoders.configs.training import DEFAULT_RULES

PRESETS = {
    'minilm': {'init_from': 'minilm', 'optimizer.learning_rate': 2e-5,
               'data.hard_negatives': 'topic', 'train.num_steps': 100},
    'bert_tiny': {'optimizer.learning_rate': 1e-3, 'data.hard_negatives': 'topic'},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg if arg in PRESETS else None
  arg = common.parse_arg(None if preset else arg, size='tiny')
  config = _base_config(arg.size)
  for key, value in PRESETS.get(preset, {}).items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def _base_config(size: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds new parameters, dropout, the pair order and drawn sentences/negatives.
  # The encoder: an HF or sentence-transformers directory, a pretraining workdir, 'minilm' (the
  # installed all-MiniLM-L6-v2) or 'none' (random init of config.model).
  config.init_from = 'none'
  config.model = get_model_config(size)  # Used only with init_from='none'.
  config.pooling = 'mean'  # 'cls', 'mean', 'max', 'mean_sqrt_len', 'weighted_mean' or 'attention'.

  config.data = data = ml_collections.ConfigDict()
  data.pairs = 'description'  # 'description', 'title' or 'sentences' (encoders/data/pairs.py).
  data.hard_negatives = 'none'  # 'none' or 'topic': other articles of the same topic.
  data.num_negatives = 1  # Hard negatives per pair (with hard_negatives='topic').
  data.query_length = 32  # Tokens per query, [CLS] and [SEP] included.
  # Tokens per document (an extract's first two or three sentences; the export's max_seq_length).
  data.document_length = 64
  # For init_from='none': the tokenizer (trained into <workdir>/tokenizer on the corpus).
  data.dataset = 'wiki_offline/en'
  data.data_dir = config_dict.placeholder(str)  # TFDS data dir; None -> TFDS default.
  data.text_field = 'text'
  data.tokenizer_path = config_dict.placeholder(str)
  data.tokenizer = 'wordpiece'
  data.vocab_size = config.model.vocab_size
  data.lowercase = True
  data.train_split = 'train'

  config.loss = loss = ml_collections.ConfigDict()
  loss.scale = 20.0  # Cosine similarities are multiplied by this (1 / temperature).
  loss.symmetric = False  # Also rank queries for each document, and average the two directions.

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32  # Pairs per step: each query has batch_size - 1 in-batch negatives.
  # Rows embedded at a time (GradCache; 0: the whole batch at once). Any divisor of batch_size
  # gives the same gradient with the memory of chunk_size rows.
  train.chunk_size = 0
  train.num_epochs = 1.0  # Passes over the training pairs.
  train.num_steps = 0  # Optimizer steps; 0: as many as num_epochs takes.
  train.eval_every = 0  # Steps between validation retrievals; 0: only before and after training.
  train.log_every = 20  # Steps between train-metric writes.
  train.eval_batch_size = 64  # Texts per embedding batch in evaluation.
  train.progress_bar = True

  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.pairs = 'description'  # Queries of the held-out retrieval; documents are extracts.
  evaluation.max_articles = 0  # Index at most this many articles per split, evenly spaced (0: all).

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'adamw'
  opt.learning_rate = 2e-5
  opt.warmup_fraction = 0.1  # Warm-up steps as a fraction of all steps.
  opt.warmup_steps = 0  # Set from warmup_fraction at start.
  opt.decay = 'linear'
  opt.end_learning_rate_fraction = 0.0
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.eps = 1e-6
  opt.weight_decay = 0.01
  opt.grad_clip_norm = 1.0

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.shape = (-1, 1, 1)  # ('data', 'fsdp', 'tensor') sizes; one -1 takes the rest.
  mesh.rules = DEFAULT_RULES
  return config
