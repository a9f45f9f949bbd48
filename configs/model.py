"""The `config.model` section: an encoder's architecture, from a family's defaults and a size."""
import ml_collections
from ml_collections import config_dict

from encoders.configs import common


def get_model_config(size: str, **overrides) -> ml_collections.ConfigDict:
  """BERT's architecture at `size`; families override what differs (e.g. RoBERTa's positions)."""
  config = ml_collections.ConfigDict()
  config.family = 'bert'  # Which module family builds the model (encoders/<family>.py).
  config.vocab_size = 30522  # Word-embedding rows; must equal the tokenizer's vocabulary size.
  config.update(common.size_fields(size))  # num_layers, hidden_size, num_heads, intermediate_size.
  config.hidden_act = 'gelu'  # 'gelu' (exact, BERT), 'gelu_new' (tanh approximation) or 'relu'.
  config.max_position_embeddings = 512  # Rows of the learned position table.
  config.type_vocab_size = 2  # Token types (sentence A/B); RoBERTa uses 1.
  config.position_offset = 0  # Added to position ids (RoBERTa: pad_token_id + 1 = 2).
  config.pad_token_id = 0  # Padding token id of the vocabulary.
  config.hidden_dropout_rate = 0.1  # Dropout on embeddings and residual branches.
  config.attention_dropout_rate = 0.1  # Dropout on attention probabilities; 0 runs fused attention.
  config.layer_norm_eps = 1e-12  # LayerNorm epsilon (RoBERTa: 1e-5).
  config.initializer_range = 0.02  # Stddev of the normal initialiser.
  config.position_init = 'normal'  # Position table's init: 'normal' or 'sinusoidal' (same std).
  # 'absolute' (the position table at the input), or transformers' 'relative_key' /
  # 'relative_key_query': a learned distance table read in every attention layer instead.
  config.position_embedding_type = 'absolute'
  config.distance_init_range = config_dict.placeholder(float)  # Its init's std; None: initializer_range.
  config.distance_layer_norm = False  # LayerNorm its rows (DeBERTa's norm_rel_ebd); no HF export.
  config.dtype = 'auto'  # Compute dtype: 'float32', 'bfloat16' or 'auto' (bf16 on GPU/TPU, f32 on CPU).
  config.param_dtype = 'float32'  # Parameter (and optimizer state) dtype.
  config.remat_policy = 'none'  # Per-layer rematerialisation: 'none', 'full' or 'dots'.
  config.scan_layers = False  # True: nn.scan over stacked layers (one layer compiled; deep models).
  config.update(overrides)
  return config
