"""Model FLOPs: 6 x (matmul weights used per token) + attention + the sparse MLM head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from encoders.bert import EncoderForPreTraining
from encoders.config import EncoderConfig
from training import flops


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
