"""Why bf16 inference is slower in JAX than in PyTorch on this CPU: one MiniLM-sized matmul.

  python -m benchmarks.cpu_matmul > docs/sentence/inference/cpu_matmul.txt

Times [4096, 384] @ [384, 1536] (32 x 128 tokens through MiniLM's FFN input projection) in
float32 and bfloat16 under jax.jit and torch (torch on 2 threads, XLA on its own pool; the
median of 30 calls after warm-up). XLA's CPU backend has no bf16 GEMM kernel: it runs bf16 at f32 speed, while torch
calls oneDNN's AVX512-BF16 kernels.
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
  for name, jax_dtype, torch_dtype in (('float32', jnp.float32, torch.float32),
                                       ('bfloat16', jnp.bfloat16, torch.bfloat16)):
    x, y = jnp.asarray(a, jax_dtype), jnp.asarray(b, jax_dtype)
    tx, ty = torch.from_numpy(a).to(torch_dtype), torch.from_numpy(b).to(torch_dtype)
    jax_ms = _median_ms(lambda: matmul(x, y).block_until_ready())
    with torch.inference_mode():
      torch_ms = _median_ms(lambda: tx @ ty)
    print(f'{name:9s} jax {jax_ms:6.2f} ms   torch {torch_ms:6.2f} ms   torch/jax speed {jax_ms / torch_ms:.2f}x')


if __name__ == '__main__':
  main()
