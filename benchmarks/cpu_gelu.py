"""Which exact-GELU form is faster on this CPU, inside a jitted MiniLM-shaped forward.

  python -m benchmarks.cpu_gelu > docs/sentence/inference_bf16_weights/cpu_gelu.txt

The forms compute the same function (BERT's x * Phi(x)); they differ in how XLA:CPU fuses
them. `nn.gelu(approximate=False)` is jax's erfc form; 'erf' is PyTorch's
x / 2 * (1 + erf(x / sqrt 2)); '+ select' wraps either in `where(x > -20, gelu, 0)`, which
changes no f32 value and keeps the GELU out of the next matmul's YNNPACK fusion. Alternating
rounds; median wall and CPU time of 15 calls, best round. 'erf + select' is layers.gelu.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchmarks import cpu_attention
from encoders import layers


def _erf(x):
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2))))


def _erfc(x):
  return nn.gelu(x, approximate=False)


def _selected(form):
  return lambda x: jnp.where(x > -20.0, form(x), 0.0)


FORMS = {'erfc (nn.gelu)': _erfc, 'erfc + select': _selected(_erfc), 'erf': _erf,
         'erf + select': layers.gelu}


def forward_ms(form: str, dtype: str, batch: int = 32, length: int = 128, calls: int = 15):
  """(wall, CPU) medians of one jitted MiniLM-shaped forward with GELU computed as `form`."""
  chosen = layers.ACTIVATIONS['gelu']
  layers.ACTIVATIONS['gelu'] = FORMS[form]
  try:
    return cpu_attention.minilm_forward_ms(dtype, batch, length, calls)
  finally:
    layers.ACTIVATIONS['gelu'] = chosen


def main(rounds: int = 3) -> None:
  print('MiniLM-shaped forward (6 x 384, 12 heads), batch 32 x length 128; median ms of 15 '
        f'calls; best of {rounds} alternating rounds')
  print(f"{'dtype':9s} {'GELU form':16s} {'wall ms':>9s} {'CPU ms':>9s}")
  names = list(FORMS)
  for dtype in ('bfloat16', 'float32'):
    best = {name: (np.inf, np.inf) for name in names}
    for index in range(rounds):
      for name in names if index % 2 == 0 else names[::-1]:
        wall, cpu = forward_ms(name, dtype)
        best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    for name in names:
      print(f'{dtype:9s} {name:16s} {best[name][0]:9.1f} {best[name][1]:9.1f}')


if __name__ == '__main__':
  main()
