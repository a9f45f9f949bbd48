"""DeBERTa-v2/v3 (He et al. 2021, 2023): disentangled attention, pretrained by MLM with the
Enhanced Mask Decoder (EMD), or by v3's replaced-token detection (RTD).

  python -m experiments.pretrain --config configs/deberta.py:tiny --workdir /tmp/deberta_tiny
  python -m experiments.pretrain --config configs/deberta.py:base --workdir DIR
  python -m experiments.pretrain --config configs/deberta.py:tiny,objective=rtd --workdir DIR

Arguments: `size` (tiny, xsmall, small, base, large), `objective` ('mlm': v2's MLM + EMD;
'rtd': v3's), `sharing` (RTD's embedding sharing: 'gdes', 'es' or 'nes'). Sizes are the
DeBERTa-v3 checkpoints' (microsoft/deberta-v3-*: xsmall 12 x 384, small 6 x 768, base
12 x 768, large 24 x 1024, head size 64, FFN 4H); the architecture fields are the released
experiments/language_model/deberta_base.json (microsoft/DeBERTa): 128,100-token vocabulary,
relative attention with 256 log buckets over 512 positions, c2p and p2c with shared keys,
LayerNorm'ed relative embeddings, no absolute positions in the input, no token types,
LayerNorm eps 1e-7.

The pretraining recipe is the release's `mlm.sh deberta-base` (MLM + EMD; its script and
the DeBERTa/optims defaults): AdamW (b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01,
clipping at 1.0), lr 1e-4 with 10,000 warm-up steps then linear decay to 0, batch 256 x
512 tokens for 1M steps, dropout 0.1, 15% of the tokens predicted (80% [MASK], 10% random,
10% kept) in whole-word n-grams of n <= 3 with p(n) proportional to 1/n (its
NGramMaskGenerator, max_ngram 3; ours is ALBERT's 'ngram' masking), rows of contiguous
text across documents (its prepare_data.py; our 'full_sentences'), EMD with 2 runs of the
last layer (apps/models/masked_language_model.py). The release tokenizes with its 128K
SentencePiece model; ours trains a unigram model with SentencePiece's trainer, cased as v3's.
The paper's own base runs (v1 Table 8) used batch 2K; this is the released script.
`tiny` is a 4-layer, width-128 model on BERT tiny's schedule for the embedded corpus.

objective=rtd is DeBERTa-v3 (He et al. 2023): ELECTRA's objective
(encoders/training/electra_objective.py, loss = MLM + 50 x RTD, the paper's lambda = 50 as
ELECTRA's) over a generator of the discriminator's width at half its depth (the release's
rtd_{xsmall,small,base,large}.json: generator 6/3/6/12 layers under 12/6/12/24) with the MLM head (+
EMD), and a discriminator with the release's RTD head (LMMaskPredictionHead), sharing word
embeddings by gradient-disentangled embedding sharing (`sharing=gdes`, the release's default: the
discriminator reads stop_gradient(generator table) + a zero-initialised delta; ES and NES for the
paper's Table 1 comparison). Learning rates and batches are the release's rtd.sh: xsmall 3e-4 at
batch 64, base and large 1e-4 at batch 256 (small: base's), 10,000 warm-up steps, 512 tokens, the
optimizer and masking of the MLM recipe above. tiny RTD keeps tiny's 1e-3 (measured,
docs/deberta_v3_rtd/: at ELECTRA tiny's 2e-4 the GDES discriminator fell to the all-original prior
for good once the generator learned the unigram distribution, recall 0 from step 150; at 1e-3 it
fell there too, then learned from context: validation recall 0.12 at precision 0.65 at step 300).
"""
import ml_collections

from encoders.configs import bert, common
from encoders.configs import electra as electra_configs
from encoders.configs.model import get_model_config as get_bert_model_config

OBJECTIVES = ('mlm', 'rtd')
# The release's rtd.sh: peak learning rate, batch size (small has no from-scratch entry: base's).
RTD_PRETRAINING = {'xsmall': (3e-4, 64), 'small': (1e-4, 256), 'base': (1e-4, 256),
                   'large': (1e-4, 256)}

SIZES = {
    #           layers, hidden, heads, FFN
    'tiny':    (4, 128, 2, 512),
    'xsmall':  (12, 384, 6, 1536),
    'small':   (6, 768, 12, 3072),
    'base':    (12, 768, 12, 3072),
    'large':   (24, 1024, 16, 4096),
}


def get_model_config(size: str) -> ml_collections.ConfigDict:
  """The `config.model` section: BERT's fields plus DeBERTa's."""
  if size not in SIZES:
    raise ValueError(f'Unknown DeBERTa size {size!r}; known sizes: {", ".join(SIZES)}.')
  num_layers, hidden_size, num_heads, intermediate_size = SIZES[size]
  model = get_bert_model_config('base', num_layers=num_layers, hidden_size=hidden_size,
                                num_heads=num_heads, intermediate_size=intermediate_size)
  model.family = 'deberta'
  model.vocab_size = common.TINY_VOCAB_SIZE if size == 'tiny' else 128100
  model.type_vocab_size = 0  # No token-type embeddings.
  model.layer_norm_eps = 1e-7
  model.relative_attention = True  # c2p / p2c terms over shared relative position embeddings.
  model.pos_att_type = ('p2c', 'c2p')  # Position terms: any subset of ('c2p', 'p2c').
  model.position_buckets = 256  # Exact distances below 128, log-spaced buckets beyond; -1: none.
  model.max_relative_positions = -1  # Distance the buckets reach; -1: max_position_embeddings.
  model.share_att_key = True  # Position terms reuse each layer's query/key projections.
  model.norm_rel_ebd = 'layer_norm'  # LayerNorm on the relative embeddings ('none': off).
  model.position_biased_input = False  # Absolute positions enter only through EMD.
  model.conv_kernel_size = 0  # > 0: v2-xlarge's ConvLayer after the first layer (width 3 there).
  model.conv_act = 'tanh'  # Its activation (v2-xlarge: 'gelu').
  model.conv_groups = 1
  model.pooler_hidden_act = 'gelu'  # ContextPooler of sequence classification.
  model.pooler_dropout_rate = 0.0
  model.emd = True  # Enhanced Mask Decoder for the MLM head (pretraining only).
  model.z_steps = 2  # EMD runs of the last layer's weights.
  model.objective = 'mlm'  # 'mlm' (v2: MLM + EMD) or 'rtd' (v3: generator + discriminator).
  # RTD only (encoders/deberta.py: RTDConfig; the generator's fields as configs/electra.py's).
  model.embedding_sharing = 'gdes'  # 'gdes', 'es' or 'nes': how the discriminator gets word vectors.
  # None derives a generator field as v3 does: the discriminator's width, heads and MLP at half
  # its depth (encoders/deberta.py: RTDConfig).
  electra_configs.add_generator_fields(model, 1.0)
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size='base', objective='mlm', sharing='gdes')
  if arg.objective not in OBJECTIVES:
    raise ValueError(f'Unknown objective {arg.objective!r}; choose one of {OBJECTIVES}.')
  model = get_model_config(arg.size)
  model.objective = arg.objective
  model.embedding_sharing = arg.sharing
  config = bert.get_config('tiny' if arg.size == 'tiny' else 'base')
  config.model = model
  config.data.vocab_size = model.get_ref('vocab_size')  # One vocabulary size, as in configs/bert.py.
  config.data.tokenizer = 'unigram'
  config.data.lowercase = False
  config.data.input_format = 'full_sentences'  # Contiguous text, no sentence-level task.
  config.data.masking = 'ngram'  # n <= 3 whole-word n-grams, p(n) proportional to 1/n.
  config.data.static_masking = False
  if arg.size == 'tiny':
    return config

  config.data.seq_length = 512
  config.train.batch_size = 256
  config.train.num_steps = 1_000_000
  opt = config.optimizer
  opt.name = 'adamw'
  opt.learning_rate = 1e-4
  opt.warmup_steps = 10_000
  opt.decay = 'linear'
  opt.end_learning_rate_fraction = 0.0
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.eps = 1e-6
  opt.weight_decay = 0.01
  opt.grad_clip_norm = 1.0
  if arg.objective == 'rtd':
    opt.learning_rate, config.train.batch_size = RTD_PRETRAINING[arg.size]
  return config
