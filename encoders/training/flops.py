"""Model FLOPs per training sequence and model-FLOPs utilisation (MFU).

Counted as in Kaplan et al. 2020 / PaLM appendix B: a matmul with N weights costs
2N FLOPs per token forward and 4N backward (6N), plus attention scores and values
(2 matmuls of L x L x hidden per layer: 12 * L * hidden per token and layer for
forward + backward). The MLM head runs only at the P predicted positions (sparse
prediction), so it counts per prediction, not per token. Embedding lookups are free. A
family's own terms come from its config's `extra_flops_per_sequence` (relative positions,
DeBERTa's).
"""
import functools
import time

import jax
import jax.numpy as jnp

from encoders.config import EncoderConfig

# Dense bf16 peak FLOP/s per chip (vendor datasheets). Matched in order against device_kind.
PEAK_FLOPS = (
    ('TPU v6', 918e12),  # Trillium (v6e)
    ('TPU v5p', 459e12),
    ('TPU v5 lite', 197e12),  # v5e
    ('TPU v5e', 197e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
    ('H200', 989e12),  # Same SXM compute as H100.
    ('H100', 989e12),  # SXM; the PCIe card has 756 TFLOP/s.
    ('A100', 312e12),
)


def flops_per_sequence(model: EncoderConfig, seq_length: int, num_predictions: int,
                       sentence_head: bool) -> float:
  """Training FLOPs (forward + backward) for one sequence of `seq_length` tokens."""
  h, L, e = model.hidden_size, seq_length, model.embedding.hidden_size
  layers = model.layers_run  # ALBERT runs inner_group_num layers per layer.
  layer_weights = 4 * h * h + 2 * h * model.intermediate_size  # Q, K, V, O; MLP in and out.
  per_token = 6 * layers * layer_weights + 12 * layers * L * h
  if model.projects_embeddings:
    per_token += 6 * e * h  # embeddings_project: embedding width -> hidden.
  per_prediction = 6 * (h * e + e * model.vocab_size)  # MLM transform + tied decoder (width e).
  sentence = 6 * (h * h + 2 * h) if sentence_head else 0  # Pooler + classifier, once per row.
  extra = model.extra_flops_per_sequence(seq_length, num_predictions)  # Relative positions.
  return float(L * per_token + num_predictions * per_prediction + sentence + extra)


@functools.cache
def measured_cpu_peak(dtype=jnp.float32, size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a jitted matmul of `dtype` operands accumulated in f32 on this host's CPU.

  The CPU has no datasheet peak; a bf16 run's roof is the bf16 x bf16 -> f32 matmul (about
  twice the f32 rate on a CPU with AVX512-BF16), an f32 run's the f32 one.
  """
  device = jax.local_devices(backend='cpu')[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def peak_flops_total(dtype=jnp.bfloat16) -> float | None:
  """Peak FLOP/s of all devices in the run for matmuls of `dtype`; None where unknown.

  Accelerators: the datasheet's dense bf16 peak, for bf16 runs only (an f32 run has
  another roof, not in the table). CPU: measured here, in `dtype`.
  """
  device = jax.devices()[0]
  if device.platform == 'cpu':  # Fake CPU devices share the host: count hosts, not devices.
    return measured_cpu_peak(jnp.dtype(dtype).type) * jax.process_count()
  if jnp.dtype(dtype) != jnp.bfloat16:
    return None
  for name, peak in PEAK_FLOPS:
    if name.lower() in device.device_kind.lower():
      return peak * jax.device_count()
  return None
