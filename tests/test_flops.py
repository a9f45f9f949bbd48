"""Model FLOPs: 6 x (matmul weights used per token) + attention + the sparse MLM head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from encoders.bert import EncoderForPreTraining
from encoders.config import EncoderConfig
from encoders.training import flops


def test_flops_per_sequence_counts_the_real_matmul_weights():
  config = EncoderConfig(vocab_size=100, hidden_size=16, num_layers=2, num_heads=2,
                         intermediate_size=40, max_position_embeddings=32)
  L, P = 24, 4
  params = EncoderForPreTraining(config).init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32))
  flat = {'/'.join(str(getattr(k, 'key', '')) for k in path): x for path, x in
          jax.tree_util.tree_flatten_with_path(params['params'])[0]}
  layer_kernels = sum(np.size(x) for name, x in flat.items() if 'layers' in name and 'kernel' in name)
  head_kernels = sum(np.size(x) for name, x in flat.items() if 'mlm_head' in name and 'kernel' in name)
  decoder = np.size(next(x for name, x in flat.items() if 'word_embeddings' in name))
  attention = 2 * 2 * L * L * config.hidden_size * config.num_layers  # QK^T and AV, forward.
  expected = 6 * L * layer_kernels + 3 * attention + 6 * P * (head_kernels + decoder)
  assert flops.flops_per_sequence(config, L, P, sentence_head=False) == pytest.approx(expected)


def test_peak_is_known_for_the_accelerators_in_the_table():
  kinds = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12,
           'NVIDIA A100-SXM4-80GB': 312e12, 'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H200': 989e12}
  for kind, peak in kinds.items():
    assert next(p for name, p in flops.PEAK_FLOPS if name.lower() in kind.lower()) == peak, kind


def test_mfu_roof_is_the_matmul_of_the_run_s_own_dtype(monkeypatch):
  measured = []
  monkeypatch.setattr(flops, 'measured_cpu_peak', lambda dtype: measured.append(dtype) or 1e9)
  assert flops.peak_flops_total(jnp.float32) == 1e9 * jax.process_count()
  flops.peak_flops_total(jnp.bfloat16)
  assert [jnp.dtype(d) for d in measured] == [jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)]


def test_albert_flops_count_every_layer_run_and_the_factorized_embeddings():
  from encoders.albert import AlbertConfig  # pylint: disable=g-import-not-at-top
  config = AlbertConfig(vocab_size=100, hidden_size=16, embedding_size=8, num_layers=3,
                        num_heads=2, intermediate_size=40, inner_group_num=2)
  L, P, H, E, I, V = 24, 4, 16, 8, 40, 100
  runs = 3 * 2  # Shared weights still cost FLOPs each time a layer runs them.
  per_token = 6 * runs * (4 * H * H + 2 * H * I) + 12 * runs * L * H + 6 * E * H
  expected = L * per_token + 6 * P * (H * E + E * V)
  assert flops.flops_per_sequence(config, L, P, sentence_head=False) == pytest.approx(expected)


SMALL_DEBERTA = dict(vocab_size=500, hidden_size=256, num_layers=2, num_heads=2,
                     intermediate_size=1024, max_position_embeddings=256, position_buckets=64)


def _xla_forward_flops(model, length: int, predictions: int | None = None) -> float:
  """XLA's own count of the FLOPs of one compiled forward of `model` on one sequence."""
  ids = jnp.ones((1, length), jnp.int32)
  kwargs = {} if predictions is None else {
      'masked_positions': jnp.arange(predictions, dtype=jnp.int32)[None]}
  params = model.init(jax.random.key(0), ids, **kwargs)
  analysis = jax.jit(lambda p: model.apply(p, ids, **kwargs)).lower(params).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)['flops']


@pytest.mark.parametrize('fields', [
    {},  # v3: c2p + p2c over log buckets.
    {'pos_att_type': ('c2p',), 'position_buckets': -1, 'share_att_key': False},
    {'conv_kernel_size': 3, 'conv_groups': 2},  # v2's ConvLayer.
])
def test_deberta_position_terms_agree_with_xla_s_count(fields):
  """What DeBERTa adds to BERT's count, against XLA's count of the forward's difference to the
  same model without relative attention (and without the ConvLayer), x3 for training. The
  relative rows' projection (once per batch, here batch 1) is added to our side."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from encoders import deberta  # pylint: disable=g-import-not-at-top
  # Wide heads: the elementwise work (not model FLOPs, but in XLA's count) stays under 1%.
  config = deberta.DebertaConfig(**{**SMALL_DEBERTA, **fields})
  plain = dataclasses.replace(config, relative_attention=False, conv_kernel_size=0)
  L, h = 96, config.hidden_size
  xla_extra = (_xla_forward_flops(deberta.Encoder(config), L)
               - _xla_forward_flops(deberta.Encoder(plain), L))
  index = deberta.relative_index(L, config)
  rows = int(index.max() - index.min()) + 1
  projections = config.num_layers * len(config.pos_att_type) * 2 * rows * h * h
  ours = config.extra_flops_per_sequence(L, 0) / 3 + projections
  assert plain.extra_flops_per_sequence(L, 0) == 0
  assert ours == pytest.approx(xla_extra, rel=0.02)
  assert flops.flops_per_sequence(config, L, 0, False) - flops.flops_per_sequence(
      plain, L, 0, False) == pytest.approx(config.extra_flops_per_sequence(L, 0))


@pytest.mark.parametrize('position_type', ['relative_key', 'relative_key_query'])
def test_relative_position_terms_agree_with_xla_s_count(position_type):
  """transformers' relative terms: one [length, length, head_dim] product per term, head and
  layer (x3 for training). XLA counts what runs: each token against all 2L - 1 distances
  (the relative shift then reads L of them)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from encoders import bert  # pylint: disable=g-import-not-at-top
  # Wide heads: the elementwise work (not model FLOPs, but in XLA's count) stays under 1%.
  plain = EncoderConfig(vocab_size=64, hidden_size=512, num_layers=2, num_heads=2,
                        intermediate_size=256, max_position_embeddings=128)
  config = dataclasses.replace(plain, position_embedding_type=position_type)
  L = 64
  xla_extra = (_xla_forward_flops(bert.Encoder(config), L)
               - _xla_forward_flops(bert.Encoder(plain), L))
  ours = config.extra_flops_per_sequence(L, 0) / 3
  assert plain.extra_flops_per_sequence(L, 0) == 0
  assert ours * (2 * L - 1) / L == pytest.approx(xla_extra, rel=0.02)


def test_deberta_emd_counts_only_the_masked_queries():
  """EMD against XLA's count (which computes the re-run layer's keys, values and p2c once)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from encoders import deberta  # pylint: disable=g-import-not-at-top
  config = deberta.DebertaConfig(**SMALL_DEBERTA, emd=True)
  without = dataclasses.replace(config, emd=False)
  L, P = 96, 16
  xla_emd = (_xla_forward_flops(deberta.EncoderForPreTraining(config), L, P)
             - _xla_forward_flops(deberta.EncoderForPreTraining(without), L, P))
  ours = (config.extra_flops_per_sequence(L, P) - without.extra_flops_per_sequence(L, P)) / 3
  assert ours == pytest.approx(xla_emd, rel=0.06)
  # A full re-run of the last layer per z step would cost several times more.
  h, i = config.hidden_size, config.intermediate_size
  assert ours < 0.5 * config.z_steps * (8 * L * h * h + 4 * L * h * i)
