"""ALBERT (Lan et al. 2020): factorized embeddings and cross-layer parameter sharing.

The embeddings are `embedding_size` (E) wide and always mapped to the hidden size H by
`embeddings_project` (HF: `embedding_hidden_mapping_in`). The L layers run the weights
of `num_hidden_groups` groups, each of `inner_group_num` post-LN layers; layer i runs
group int(i / (L / num_hidden_groups)), as transformers computes it. The MLM head ends at
width E, tied to the word embeddings; the SOP head is BERT's NSP head on the pooler.

`sharing` (ALBERT Table 4) says which half of a layer is shared across layers:

  all        attention and FFN both follow the groups (ALBERT; HF-compatible)
  attention  attention follows the groups, every layer has its own FFN
  ffn        FFN follows the groups, every layer has its own attention
  none       every layer has its own weights (= num_hidden_groups = L; HF-compatible)

Parameters sit at `layers/layer_{g}/attention_{j}` and `layers/layer_{g}/ffn_{j}` for
group g and inner layer j; a half that has fewer groups than the other exists only in
the first groups. With `scan_layers`, groups are one `nn.scan` over `layers/stacked/layer`
([groups, ...]) and each group's repeats one more scan over shared weights: one group is
compiled, whatever L is. The task models are BERT's with this encoder.
"""
import dataclasses

import flax.linen as nn
import numpy as np

from encoders import bert
from encoders.config import ConfigError, EncoderConfig
from encoders.heads import Pooler
from encoders.layers import MLP, REMAT_POLICIES, Embeddings, SelfAttention, layer_norm

SHARING = ('all', 'attention', 'ffn', 'none')


@dataclasses.dataclass(frozen=True)
class AlbertConfig(EncoderConfig):
  num_hidden_groups: int = 1  # Weight groups the L layers cycle through (HF num_hidden_groups).
  inner_group_num: int = 1  # Post-LN layers inside each group (HF inner_group_num).
  sharing: str = 'all'  # 'all', 'attention', 'ffn' or 'none' (ALBERT Table 4).

  @property
  def projects_embeddings(self) -> bool:
    return True  # embedding_hidden_mapping_in exists even when E == H.

  @property
  def layers_run(self) -> int:
    return self.num_layers * self.inner_group_num

  @property
  def attention_groups(self) -> int:
    return self.num_hidden_groups if self.sharing in ('all', 'attention') else self.num_layers

  @property
  def ffn_groups(self) -> int:
    return self.num_hidden_groups if self.sharing in ('all', 'ffn') else self.num_layers

  @property
  def hf_compatible(self) -> bool:
    """transformers' ALBERT shares both halves alike: sharing 'all', or 'none' (as L groups)."""
    return self.attention_groups == self.ffn_groups

  def validate(self, prefix: str = 'model') -> None:
    super().validate(prefix)

    def fail(field, message):
      raise ConfigError(f'{prefix}.{field}={getattr(self, field)!r}: {message}')

    if self.embedding_size is None:
      fail('embedding_size', "ALBERT's embedding width E must be set (the paper's 128).")
    if self.position_embedding_type != 'absolute':
      fail('position_embedding_type', "relative positions are built for BERT, RoBERTa and "
           "ELECTRA; ALBERT's interop does not map their distance tables: use 'absolute'.")
    if self.sharing not in SHARING:
      fail('sharing', f'choose one of {SHARING}.')
    if not isinstance(self.num_hidden_groups, int) or not 1 <= self.num_hidden_groups <= self.num_layers:
      fail('num_hidden_groups', f'must be an integer in [1, num_layers={self.num_layers}].')
    if not isinstance(self.inner_group_num, int) or self.inner_group_num < 1:
      fail('inner_group_num', 'must be a positive integer.')
    if self.scan_layers:
      if not self.hf_compatible:
        fail('sharing', "scan_layers scans groups of whole layers: use sharing 'all' or 'none', "
             'or scan_layers=False.')
      if self.num_layers % self.attention_groups:
        fail('num_hidden_groups', f'scan_layers needs it to divide num_layers={self.num_layers}.')


def group_index(layer: int, num_layers: int, num_groups: int) -> int:
  """The group that layer `layer` runs: transformers' int(i / (L / groups))."""
  return int(layer / (num_layers / num_groups))


class AttentionBlock(nn.Module):
  """x -> LN(x + dropout(attention(x))): the first half of a post-LN layer."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    attended = SelfAttention(self.config, name='attention')(x, mask, deterministic)
    attended = nn.Dropout(self.config.hidden_dropout_rate)(attended, deterministic=deterministic)
    x = layer_norm(self.config, 'layer_norm')(x + attended)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class FeedForwardBlock(nn.Module):
  """x -> LN(x + dropout(MLP(x))): the second half of a post-LN layer."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    transformed = MLP(self.config, name='mlp')(x)
    transformed = nn.Dropout(self.config.hidden_dropout_rate)(transformed, deterministic=deterministic)
    x = layer_norm(self.config, 'layer_norm')(x + transformed)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


def _remat(block, config: AlbertConfig, static_argnums):
  if config.remat_policy == 'none':
    return block
  return nn.remat(block, policy=REMAT_POLICIES[config.remat_policy], static_argnums=static_argnums)


class LayerGroup(nn.Module):
  """Group g's inner layers: the halves it holds (`attention_{j}`, `ffn_{j}`)."""
  config: AlbertConfig
  has_attention: bool = True
  has_ffn: bool = True

  def setup(self):
    c = self.config
    inner = range(c.inner_group_num)
    if self.has_attention:
      self.attention = [_remat(AttentionBlock, c, (3,))(c, name=f'attention_{j}') for j in inner]
    if self.has_ffn:
      self.ffn = [_remat(FeedForwardBlock, c, (2,))(c, name=f'ffn_{j}') for j in inner]

  def attend(self, j: int, x, mask, deterministic: bool):
    return self.attention[j](x, mask, deterministic)

  def feed_forward(self, j: int, x, deterministic: bool):
    return self.ffn[j](x, deterministic)

  def __call__(self, x, mask, deterministic: bool):
    """The group's inner layers once (it holds both halves)."""
    for j in range(self.config.inner_group_num):
      x = self.feed_forward(j, self.attend(j, x, mask, deterministic), deterministic)
    return x


def _repeat_group(group: LayerGroup, x, mask, deterministic: bool, repeats: int):
  """`repeats` passes of one group over its shared weights, as one scan."""
  body = lambda module, carry, _: (module(carry, mask, deterministic), None)
  scan = nn.scan(body, variable_broadcast='params', split_rngs={'params': False, 'dropout': True},
                 length=repeats)
  return scan(group, x, None)[0]


class ScannedGroup(nn.Module):
  """One group as the body of the scan over groups: (x, mask) -> (x, None)."""
  config: AlbertConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    repeats = c.num_layers // c.attention_groups
    return _repeat_group(LayerGroup(c, name='layer'), x, mask, self.deterministic, repeats), None


class AlbertStack(nn.Module):
  """The L layers over shared groups (the module docstring has the layout)."""
  config: AlbertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    if c.scan_layers:
      stacked = nn.scan(
          ScannedGroup, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=nn.broadcast, length=c.attention_groups,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      return stacked(c, deterministic, name='stacked')(x, mask)[0]
    groups = [LayerGroup(c, g < c.attention_groups, g < c.ffn_groups, name=f'layer_{g}')
              for g in range(max(c.attention_groups, c.ffn_groups))]
    for i in range(c.num_layers):
      attention = groups[group_index(i, c.num_layers, c.attention_groups)]
      ffn = groups[group_index(i, c.num_layers, c.ffn_groups)]
      for j in range(c.inner_group_num):
        x = ffn.feed_forward(j, attention.attend(j, x, mask, deterministic), deterministic)
    return x


class Encoder(bert.Encoder):
  """Embeddings at width E, the E -> H mapping, the shared layers, BERT's pooler."""
  config: AlbertConfig

  def setup(self):
    c = self.config
    self.embeddings = Embeddings(c.embedding)
    self.embeddings_project = bert.embeddings_project(c)  # Even when E == H, as HF.
    self.layers = AlbertStack(c)
    if self.add_pooler:
      self.pooler = Pooler(c)


class EncoderForPreTraining(bert.EncoderForPreTraining):
  """MLM head at width E tied to the word embeddings, plus the SOP head when `sentence_head`."""
  encoder_class = Encoder


class EncoderForSequenceClassification(bert.EncoderForSequenceClassification):
  encoder_class = Encoder


class EncoderForTokenClassification(bert.EncoderForTokenClassification):
  encoder_class = Encoder


class EncoderForQuestionAnswering(bert.EncoderForQuestionAnswering):
  encoder_class = Encoder


def layer_depth(names: list[str], value, config: AlbertConfig):
  """Depth for layer-wise lr decay of the encoder parameter at `names` (None: not in the stack).

  A shared half is one parameter set however many layers run it: it is decayed once, at
  the depth of the topmost layer that runs it (an all-shared stack gets the top layer's
  rate), never once per layer as if the copies were separate.
  """
  if names[:2] != ['encoder', 'layers']:
    return None
  c = config
  if names[2] == 'stacked':  # [groups, ...]: group g's repeats end at layer (g + 1) * L / groups.
    groups = c.attention_groups
    return (np.arange(1, groups + 1) * (c.num_layers // groups)).reshape(
        (groups,) + (1,) * (np.ndim(value) - 1))
  group = int(names[2].removeprefix('layer_'))
  num_groups = c.attention_groups if names[3].startswith('attention_') else c.ffn_groups
  return max(i for i in range(c.num_layers) if group_index(i, c.num_layers, num_groups) == group) + 1
