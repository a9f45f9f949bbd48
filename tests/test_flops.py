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
