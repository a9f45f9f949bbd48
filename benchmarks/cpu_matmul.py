"""Where bf16 is fast in JAX on this CPU: one MiniLM-sized matmul, three ways.

  python -m benchmarks.cpu_matmul > docs/sentence/inference/cpu_matmul.txt

Times [4096, 384] @ [384, 1536] (32 x 128 tokens through MiniLM's FFN input projection) in
float32, bfloat16 with a bfloat16 result, and bfloat16 accumulated in float32
(`preferred_element_type`, as encoders/layers.matmul does) under jax.jit, against torch
(torch on 2 threads, XLA on its own pool; the median of 30 calls after warm-up). On this CPU
XLA is fast only for the f32-accumulating bf16 dot; a dot with a bf16 result runs at f32 speed.
"""
import time

import numpy as np


def _median_ms(fn, repeats: int = 30) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  m, k, n = 4096, 384, 1536
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  print(f'[{m}, {k}] @ [{k}, {n}], {2 * m * k * n / 1e9:.2f} GFLOP; median ms of 30 calls')
  accumulate_f32 = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  for name, jax_dtype, torch_dtype in (('float32', jnp.float32, torch.float32),
                                       ('bfloat16', jnp.bfloat16, torch.bfloat16)):
    x, y = jnp.asarray(a, jax_dtype), jnp.asarray(b, jax_dtype)
    tx, ty = torch.from_numpy(a).to(torch_dtype), torch.from_numpy(b).to(torch_dtype)
    with torch.inference_mode():
      torch_ms = _median_ms(lambda: tx @ ty)
    for how, fn in (('', matmul), (' -> f32', accumulate_f32))[:1 if name == 'float32' else 2]:
      jax_ms = _median_ms(lambda: fn(x, y).block_until_ready())
      print(f'{name + how:17s} jax {jax_ms:6.2f} ms   torch {name:9s} {torch_ms:6.2f} ms   '
            f'torch/jax speed {jax_ms / torch_ms:.2f}x')


if __name__ == '__main__':
  main()
