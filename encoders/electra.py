"""ELECTRA (Clark et al. 2020): a small MLM generator and a replaced-token discriminator.

Both networks read one shared embedding block (word, position and token-type tables
and their LayerNorm, width `embedding_size`), as in the paper and the released code
(`electra/embeddings` is shared; each network keeps its own `embeddings_project`).
Each network projects the embeddings to its own width when they differ, then runs
its own post-LN transformer stack:

  generator      [embeddings_project] -> stack (width ~1/4..1/3) -> generator_predictions
                 (dense to embedding_size, act, LayerNorm) -> tied word embeddings + bias
  discriminator  [embeddings_project] -> stack -> discriminator_predictions
                 (dense, act, dense to 1 logit per token)

`ElectraPair` holds all of it once, so one train step runs both through
`model.apply(..., method='generator')` and `model.apply(..., method='discriminator')`.
Parameter names follow HF's `ElectraForMaskedLM` / `ElectraForPreTraining`
(see `encoders/electra_interop.py`).
"""
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from encoders.bert import default_inputs, embeddings_project, project
from encoders.config import ConfigError, EncoderConfig
from encoders.heads import MaskedLMHead, gather_positions
from encoders.layers import (Dense, Embeddings, TransformerStack, activation, attention_mask,
                             zeros_init)

# config.model.embedding_gradients: which losses train the shared embeddings.
#   mlm+rtd  both (ELECTRA: the released code's one `electra/embeddings` scope);
#   mlm      only the generator's MLM loss: the discriminator reads them through stop_gradient
#            (as DeBERTa-v3's GDES reads the generator's table, without GDES's delta);
#   gdes     only MLM, and the discriminator adds a zero-initialised word table of its own
#            (`discriminator_word_delta`, which only RTD trains) to the stopped word vectors,
#            before the shared LayerNorm: DeBERTa-v3's gradient-disentangled embedding sharing
#            over ELECTRA's shared block. Fine-tuning and export fold the delta into the
#            discriminator's word table (`discriminator_as_encoder`).
EMBEDDING_GRADIENTS = ('mlm+rtd', 'mlm', 'gdes')


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
  """The two encoders' configs; both carry the width of the embeddings they share."""
  discriminator: EncoderConfig
  generator: EncoderConfig
  embedding_gradients: str = 'mlm+rtd'  # EMBEDDING_GRADIENTS.
  encoder_class: ClassVar[type] = EncoderConfig  # Both networks' config (DeBERTa-v3's pair: its own).

  @property
  def embedding_size(self) -> int:
    return self.discriminator.embedding.hidden_size

  @property
  def embedding(self) -> EncoderConfig:
    """The shared embeddings' config: the discriminator's, at width embedding_size."""
    return self.discriminator.embedding

  def sharded_sizes(self, prefix: str = 'model') -> list[tuple[str, int, str]]:
    """EncoderConfig.sharded_sizes of both networks (the generator under its generator_*
    fields), the shared embeddings' width included: all must divide the mesh axes."""
    generator_fields = {field: f'generator_{field}'
                        for field in ('hidden_size', 'num_heads', 'intermediate_size')}
    return (self.discriminator.sharded_sizes(prefix)
            + self.generator.sharded_sizes(prefix, generator_fields))

  @classmethod
  def from_config(cls, model_config, prefix: str = 'model') -> 'ElectraConfig':
    """Builds from `config.model`: the discriminator's BERT fields plus the ELECTRA fields.

    A generator field left None follows the released code's `get_generator_config`:
    hidden = round(generator_size_fraction * hidden), heads = max(1, hidden // 64),
    MLP = 4 * hidden, as many layers as the discriminator.
    """
    values = dict(model_config.items()) if hasattr(model_config, 'items') else dict(model_config)
    discriminator = cls.encoder_class.from_config(values, prefix)
    # Explicit in both networks: the generator projects from it whenever it is narrower.
    discriminator = dataclasses.replace(discriminator,
                                        embedding_size=discriminator.embedding.hidden_size)

    def fail(field, message):
      raise ConfigError(f'{prefix}.{field}={values.get(field)!r}: {message}')

    fraction = values.get('generator_size_fraction', 0.25)
    if not 0.0 < fraction <= 1.0:
      fail('generator_size_fraction', 'must be in (0, 1]: the generator width over hidden_size.')
    hidden = values.get('generator_hidden_size') or int(round(fraction * discriminator.hidden_size))
    sizes = {
        'generator_hidden_size': hidden,
        'generator_num_heads': values.get('generator_num_heads') or max(1, hidden // 64),
        'generator_intermediate_size': values.get('generator_intermediate_size') or 4 * hidden,
        'generator_num_layers': values.get('generator_num_layers') or discriminator.num_layers,
    }
    for field, value in sizes.items():
      if not isinstance(value, int) or value <= 0:
        fail(field, f'gives {value!r}; must be a positive integer (or None to derive it).')
    if hidden % sizes['generator_num_heads']:
      fail('generator_num_heads', f'does not divide the generator width {hidden}.')
    generator = dataclasses.replace(
        discriminator, hidden_size=hidden, num_heads=sizes['generator_num_heads'],
        intermediate_size=sizes['generator_intermediate_size'],
        num_layers=sizes['generator_num_layers'])
    gradients = values.get('embedding_gradients') or 'mlm+rtd'
    if gradients not in EMBEDDING_GRADIENTS:
      fail('embedding_gradients', f'choose one of {EMBEDDING_GRADIENTS}.')
    return cls(discriminator=discriminator, generator=generator, embedding_gradients=gradients)


class ProjectedStack(nn.Module):
  """`embeddings_project` (only when the widths differ) and a transformer stack."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, embedded, mask, deterministic: bool):
    """embedded [batch, length, embedding_size] -> [batch, length, hidden]."""
    x = project(embeddings_project(self.config), embedded)
    return TransformerStack(self.config, name='layers')(x, mask, deterministic)


class DiscriminatorHead(nn.Module):
  """ELECTRA's per-token replaced/original head: dense, activation, dense to one logit."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden):
    """hidden [batch, length, hidden] -> logits [batch, length] (> 0: replaced)."""
    c = self.config
    x = Dense(c, c.hidden_size, ('embed', 'embed_out'), name='dense')(hidden)
    x = activation(c, x)
    return Dense(c, 1, ('embed', None), name='dense_prediction')(x)[..., 0].astype(jnp.float32)


class PairOutputs(nn.Module):
  """`__call__` of a generator/discriminator pair: both networks on the same input (what `init`
  traces); training calls its `generator` and `discriminator` methods one by one."""

  def __call__(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None,
               masked_positions=None, *, deterministic: bool = True) -> dict[str, jax.Array]:
    inputs = (input_ids, segment_ids, position_ids, token_type_ids)
    return {'mlm_logits': self.generator(*inputs, masked_positions, deterministic=deterministic),
            'rtd_logits': self.discriminator(*inputs, deterministic=deterministic)}


class ElectraPair(PairOutputs):
  """Generator and discriminator over one shared embedding block."""
  config: ElectraConfig
  config_class = ElectraConfig  # What encoders/training/electra_objective.py builds `config` with.

  def setup(self):
    c = self.config
    self.embeddings = Embeddings(c.embedding)
    self.generator_encoder = ProjectedStack(c.generator)
    # BERT's MLM head at the embedding width: dense to embedding_size, act, LayerNorm, tied decoder.
    self.generator_predictions = MaskedLMHead(c.embedding)
    self.discriminator_encoder = ProjectedStack(c.discriminator)
    self.discriminator_predictions = DiscriminatorHead(c.discriminator)
    if c.embedding_gradients == 'gdes':
      e = c.embedding
      self.discriminator_word_delta = nn.Embed(
          e.vocab_size, e.hidden_size, dtype=e.compute_dtype, param_dtype=e.storage_dtype,
          embedding_init=zeros_init(('vocab', 'embed')))

  def _encode(self, stack, input_ids, segment_ids, position_ids, token_type_ids, deterministic):
    segment_ids, position_ids, token_type_ids = default_inputs(
        input_ids, segment_ids, position_ids, token_type_ids)
    gradients = self.config.embedding_gradients
    gdes = stack is self.discriminator_encoder and gradients == 'gdes'
    embedded = self.embeddings(input_ids, position_ids, token_type_ids, deterministic,
                               self.discriminator_word_delta(input_ids) if gdes else None)
    if stack is self.discriminator_encoder and gradients == 'mlm':
      embedded = jax.lax.stop_gradient(embedded)
    return stack(embedded, attention_mask(segment_ids), deterministic)

  def generator(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None,
                masked_positions=None, *, deterministic: bool = True) -> jax.Array:
    """MLM logits [batch, predictions, vocab] at masked_positions ([batch, length, vocab] if None)."""
    hidden = self._encode(self.generator_encoder, input_ids, segment_ids, position_ids,
                          token_type_ids, deterministic)  # [batch, length, generator hidden]
    if masked_positions is not None:
      hidden = gather_positions(hidden, masked_positions)  # [batch, predictions, generator hidden]
    return self.generator_predictions(hidden, self.embeddings.attend)

  def discriminator(self, input_ids, segment_ids=None, position_ids=None, token_type_ids=None, *,
                    deterministic: bool = True) -> jax.Array:
    """Replaced-token logits [batch, length] (> 0: the token was replaced)."""
    hidden = self._encode(self.discriminator_encoder, input_ids, segment_ids, position_ids,
                          token_type_ids, deterministic)  # [batch, length, hidden]
    return self.discriminator_predictions(hidden)


def with_word_delta(params: dict) -> dict:
  """The discriminator's embeddings: the shared block, its word table plus the GDES delta
  (`discriminator_word_delta`) when the pair has one."""
  if 'discriminator_word_delta' not in params:
    return params['embeddings']
  delta = params['discriminator_word_delta']['embedding']
  words = params['embeddings']['word_embeddings']['embedding']
  return {**params['embeddings'], 'word_embeddings': {'embedding': words + delta}}


def discriminator_as_encoder(params: dict) -> dict:
  """ElectraPair params -> {'encoder': ...}: the discriminator as a BERT encoder (fine-tuning).

  The discriminator is a BERT encoder over the shared embeddings, with its
  `embeddings_project` when the embeddings are narrower than hidden (ELECTRA small:
  128 -> 256); config.model carries embedding_size, so the BERT encoder built from it
  has the same projection.
  """
  discriminator = params['discriminator_encoder']
  return {'encoder': {'embeddings': with_word_delta(params),
                      **{name: discriminator[name] for name in ('embeddings_project', 'layers')
                         if name in discriminator}}}
