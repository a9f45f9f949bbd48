"""Which attention form is faster on this CPU: a MiniLM-shaped forward, fused or spelled out.

  python -m benchmarks.cpu_attention > docs/sentence/inference_avx2/cpu_attention.txt

Runs all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads) under jax.jit in each precision
with SelfAttention forced to `jax.nn.dot_product_attention` (XLA's fused form, 'xla') and to the
spelled-out softmax between two f32-accumulating `layers.matmul`s (SPELLED_OUT), in alternating
rounds. Reports the median over calls of wall time and of this process's CPU time (all threads):
CPU time is the fairer figure when other jobs share the machine. layers.attention_implementation
picks the spelled-out form on CPU, in every precision, from this comparison (the AVX-512
machine's run, docs/sentence/inference/cpu_attention.txt, predates the head-major form).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from encoders import bert, layers
from encoders.config import EncoderConfig

SHAPES = ((32, 128), (1, 512))
FORMS = ('xla', layers.SPELLED_OUT)


def _medians_ms(fn, calls: int) -> tuple[float, float]:
  """(wall, CPU) medians in ms of `calls` calls of fn, after 3 untimed ones."""
  for _ in range(3):
    fn()
  wall, cpu = [], []
  for _ in range(calls):
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - wall_start)
    cpu.append(time.process_time() - cpu_start)
  return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def forward_ms(form: str, dtype: str, batch: int, length: int, calls: int = 15):
  """(wall, CPU) medians of one jitted MiniLM-shaped forward with attention computed as `form`."""
  chosen = layers.attention_implementation
  layers.attention_implementation = lambda *args, **kwargs: form
  try:
    return minilm_forward_ms(dtype, batch, length, calls)
  finally:
    layers.attention_implementation = chosen


def minilm_forward_ms(dtype: str, batch: int, length: int, calls: int = 15):
  """(wall, CPU) medians of one jitted MiniLM-shaped forward (random weights), traced now."""
  config = EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, dtype=dtype)
  model = bert.Encoder(config)
  ids = jnp.ones((batch, length), jnp.int32)
  params = model.init(jax.random.key(0), ids)
  forward = jax.jit(lambda p, i: model.apply(p, i, deterministic=True))
  return _medians_ms(lambda: jax.block_until_ready(forward(params, ids)), calls)


def main(rounds: int = 2) -> None:
  print('MiniLM-shaped forward (6 x 384, 12 heads); median ms of 15 calls; best of '
        f'{rounds} alternating rounds')
  print(f"{'dtype':9s} {'batch x length':15s} {'form':12s} {'wall ms':>9s} {'CPU ms':>9s}")
  for dtype in ('bfloat16', 'float32'):
    for batch, length in SHAPES:
      best = {form: (np.inf, np.inf) for form in FORMS}
      for index in range(rounds):
        for form in FORMS if index % 2 == 0 else FORMS[::-1]:
          wall, cpu = forward_ms(form, dtype, batch, length)
          best[form] = (min(best[form][0], wall), min(best[form][1], cpu))
      for form in FORMS:
        print(f'{dtype:9s} {f"{batch} x {length}":15s} {form:12s} {best[form][0]:9.1f} '
              f'{best[form][1]:9.1f}')
      ratio = best[FORMS[1]][1] / best[FORMS[0]][1]
      print(f'{"":9s} {"":15s} spelled-out / fused CPU time {ratio:.2f}')


if __name__ == '__main__':
  main()
