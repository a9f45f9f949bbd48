"""The encoder's hyperparameters as a frozen (hashable) dataclass, validated.

Flax modules need hashable attributes, so the `config.model` ConfigDict of a run is
turned into an `EncoderConfig` once, at start, by `EncoderConfig.from_config`; that
is also where bad values are caught, with the offending field named.
"""
import dataclasses

import jax
import jax.numpy as jnp

ACTIVATIONS = ('gelu', 'gelu_new', 'relu')
POSITION_INITS = ('normal', 'sinusoidal')
# transformers' BERT/ELECTRA `position_embedding_type`: 'absolute' adds the position table to the
# input; the relative types (Shaw et al. 2018; Huang et al. 2020, "method 4") leave it out and add,
# in every layer, query (and key) products with a learned table of distances to the attention scores.
POSITION_EMBEDDING_TYPES = ('absolute', 'relative_key', 'relative_key_query')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# dtype='auto': bf16 where it is always the faster one (GPU/TPU matmul units run it at several
# times the f32 rate). On CPU it depends on the chip (README, "Speed"): with AVX512-BF16, bf16
# trained 1.2-1.5x faster at widths 512 and 768; without it, slower. 'auto' keeps f32
# there, so a run's numerics do not change with the machine it resumes on.
AUTO_DTYPES = {'cpu': 'float32', 'gpu': 'bfloat16', 'tpu': 'bfloat16'}
# The tied MLM decoder runs over the vocabulary padded with zero rows to a multiple of this
# (padded_vocab_size), so that a tensor axis of 2, 4, ..., 128 devices splits its matmul evenly:
# BERT's 30,522 and RoBERTa's 50,265 tokens do not divide by 4. The padding exists only inside
# the step (encoders/layers.py: Embeddings.attend); parameters, checkpoints, HF exports and
# the MLM logits have vocab_size rows / columns.
VOCAB_MULTIPLE = 128


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names the field."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  # Width of the token/position/type embeddings; a dense `embeddings_project` maps them to
  # hidden_size when it differs (ELECTRA-small: 128 -> 256). None: hidden_size, no projection.
  embedding_size: int | None = None
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'  # 'gelu' is BERT's exact erf GELU; 'gelu_new' the tanh approximation.
  max_position_embeddings: int = 512
  type_vocab_size: int = 2  # RoBERTa: 1.
  position_offset: int = 0  # Added to position ids; RoBERTa: pad_token_id + 1 = 2.
  pad_token_id: int = 0
  hidden_dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1  # 0 lets attention run as one fused kernel (GPU, TPU).
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  # Initial absolute position table: 'normal' (BERT's N(0, initializer_range)) or 'sinusoidal'
  # (the Transformer's sin/cos table scaled to the same per-entry std; still learned).
  position_init: str = 'normal'
  position_embedding_type: str = 'absolute'  # POSITION_EMBEDDING_TYPES.
  # Std of the relative distance table's normal init; None: initializer_range (transformers').
  distance_init_range: float | None = None
  # LayerNorm on each row of the distance table before it is read (not transformers': no export),
  # as DeBERTa LayerNorms its relative embeddings (norm_rel_ebd).
  distance_layer_norm: bool = False
  dtype: str = 'float32'  # Compute dtype of matmuls and activations; 'auto': per backend.
  param_dtype: str = 'float32'  # Storage dtype of parameters.
  remat_policy: str = 'none'  # Rematerialisation of each layer: 'none', 'full' or 'dots'.
  scan_layers: bool = False  # One nn.scan over stacked layers: compiles one layer, not num_layers.

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    """Rows the tied decoder computes: vocab_size rounded up to a multiple of VOCAB_MULTIPLE."""
    return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

  def sharded_sizes(self, prefix: str = 'model', names: dict[str, str] | None = None
                    ) -> list[tuple[str, int, str]]:
    """(field, the parameter dimension it sets, that dimension's logical axis) of every parameter
    dimension a mesh may split (the axes of encoders/layers.py), which the mesh axes must
    divide. The vocabulary need not: its tables are replicated over mesh axes that do not
    divide it (encoders/training/sharding.py) and the decoder pads it. `names` renames fields
    (ELECTRA's generator_hidden_size, ...)."""
    name = lambda field: f'{prefix}.{(names or {}).get(field, field)}'
    sizes = [(name('num_heads'), self.num_heads, 'heads'),
             (name('intermediate_size'), self.intermediate_size, 'mlp')]
    # Hidden states are 'embed' (inputs of kernels) and 'embed_out' (outputs of square ones);
    # the embeddings, their projection's input and a tied MLM head have the embedding width.
    for field, width in (('hidden_size', self.hidden_size),
                         ('embedding_size', self.embedding.hidden_size)):
      sizes += [(name(field), width, 'embed'), (name(field), width, 'embed_out')]
    return sizes

  @property
  def layers_run(self) -> int:
    """Transformer layers a forward pass runs (ALBERT: num_layers x inner_group_num)."""
    return self.num_layers

  @property
  def relative_position_terms(self) -> int:
    """Products with the distance table per attention layer: 0 (absolute), 1 (query), 2 (and key)."""
    return POSITION_EMBEDDING_TYPES.index(self.position_embedding_type)

  def extra_flops_per_sequence(self, seq_length: int, num_predictions: int) -> float:
    """Training FLOPs per sequence that the family adds to encoders/training/flops.py's count of
    BERT's layers and head: the relative position products (each [length, length, hidden] per
    layer, forward and backward), none with absolute positions; DeBERTa's own terms and EMD."""
    del num_predictions
    return 6.0 * self.relative_position_terms * self.layers_run * seq_length ** 2 * self.hidden_size

  @property
  def projects_embeddings(self) -> bool:
    return self.embedding_size not in (None, self.hidden_size)

  @property
  def embedding(self) -> 'EncoderConfig':
    """The config the embeddings (and a tied MLM head) are built with: width embedding_size."""
    if not self.projects_embeddings:
      return self
    return dataclasses.replace(self, hidden_size=self.embedding_size, num_heads=1,
                               embedding_size=None)

  @property
  def compute_dtype(self):
    if self.dtype == 'auto':
      return DTYPES[AUTO_DTYPES.get(jax.default_backend(), 'float32')]
    return DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return DTYPES[self.param_dtype]

  @classmethod
  def from_config(cls, model_config, prefix: str = 'model') -> 'EncoderConfig':
    """Builds from a ConfigDict / mapping (extra keys such as `family` are ignored)."""
    values = dict(model_config.items()) if hasattr(model_config, 'items') else dict(model_config)
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in values.items() if k in fields})
    config.validate(prefix)
    return config

  def validate(self, prefix: str = 'model') -> None:
    def fail(field, message):
      raise ConfigError(f'{prefix}.{field}={getattr(self, field)!r}: {message}')

    for field in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                  'intermediate_size', 'max_position_embeddings', 'type_vocab_size'):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        fail(field, 'must be a positive integer.')
    if self.embedding_size is not None and (not isinstance(self.embedding_size, int)
                                            or self.embedding_size <= 0):
      fail('embedding_size', 'must be a positive integer, or None for hidden_size.')
    if self.hidden_size % self.num_heads:
      fail('hidden_size', f'is not divisible by {prefix}.num_heads={self.num_heads}.')
    if self.position_init not in POSITION_INITS:
      fail('position_init', f'choose one of {POSITION_INITS}.')
    if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
      fail('position_embedding_type', f'choose one of {POSITION_EMBEDDING_TYPES}.')
    if self.position_init != 'normal' and self.relative_position_terms:
      fail('position_init', f'sets the absolute position table, which '
           f'{prefix}.position_embedding_type={self.position_embedding_type!r} does not read.')
    for field in ('distance_init_range', 'distance_layer_norm'):  # Unset: None, False.
      if getattr(self, field) not in (None, False) and not self.relative_position_terms:
        fail(field, 'sets the relative distance table, which absolute positions lack: set '
             f'{prefix}.position_embedding_type to a relative type, or leave it unset.')
    if self.distance_init_range is not None and (
        not isinstance(self.distance_init_range, (int, float)) or self.distance_init_range <= 0):
      fail('distance_init_range', 'must be a positive std, or None for initializer_range.')
    if self.hidden_act not in ACTIVATIONS:
      fail('hidden_act', f'unknown activation; choose one of {ACTIVATIONS}.')
    if self.dtype not in (*DTYPES, 'auto'):
      fail('dtype', f"unknown dtype; choose one of {(*DTYPES, 'auto')}.")
    if self.param_dtype not in DTYPES:
      fail('param_dtype', f'unknown dtype; choose one of {tuple(DTYPES)}.')
    for field in ('hidden_dropout_rate', 'attention_dropout_rate'):
      if not 0.0 <= getattr(self, field) < 1.0:
        fail(field, 'must be in [0, 1).')
    if not 0 <= self.pad_token_id < self.vocab_size:
      fail('pad_token_id', f'must be a token id below {prefix}.vocab_size={self.vocab_size}.')
    if self.position_offset < 0:
      fail('position_offset', 'must be >= 0.')
    if self.remat_policy not in ('none', 'full', 'dots'):
      fail('remat_policy', "choose one of 'none', 'full', 'dots'.")
