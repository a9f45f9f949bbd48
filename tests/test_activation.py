"""The encoder's activations against float64 references: one bf16 rounding in bf16."""
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from encoders.config import EncoderConfig
from encoders import layers
from encoders.layers import activation

REFERENCES = {  # float64, from the formulas of the BERT and GPT-2 papers.
    'gelu': np.vectorize(lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))),
    'gelu_new': lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    'relu': lambda x: np.maximum(x, 0.0),
}
# The absolute error of x / 2 * (1 + erf(x / sqrt 2)) in f32 for x < 0, where 1 + erf cancels:
# about |x| / 2 times the f32 spacing near 1 (what PyTorch's formula does too).
GELU_CANCELLATION = 1e-6


@pytest.mark.parametrize('name', REFERENCES)
def test_bf16_activation_is_the_rounded_f64_value(name):
  config = EncoderConfig(hidden_act=name, dtype='bfloat16')
  x = (3 * np.random.default_rng(0).normal(size=4096)).astype(ml_dtypes.bfloat16)
  out = activation(config, jnp.asarray(x))
  assert out.dtype == jnp.bfloat16
  expected = REFERENCES[name](x.astype(np.float64))
  # f32 arithmetic then one rounding: the bf16 nearest to the exact value, but for values
  # within f32 error of a rounding boundary (GELU in bf16 arithmetic: ~60%). Where the
  # value is tiny (x << 0: gelu_new's 1 + tanh cancels in f32) only the bound holds.
  out64 = np.asarray(out, np.float64)
  sizable = np.abs(expected) > 1e-3
  matches = out64 == expected.astype(ml_dtypes.bfloat16).astype(np.float64)
  assert matches[sizable].mean() > 0.99, matches[sizable].mean()
  # Half a bf16 ulp is at most 2**-8 of the value; 1e-6 covers the cancellation.
  assert np.all(np.abs(out64 - expected) <= 2.0 ** -8 * np.abs(expected) + 1e-6)


def test_f32_activation_matches_f64():
  config = EncoderConfig(hidden_act='gelu', dtype='float32')
  x = 3 * np.random.default_rng(1).normal(size=4096).astype(np.float32)
  out = activation(config, jnp.asarray(x))
  assert out.dtype == jnp.float32
  # rtol for the values, atol where 1 + erf(x / sqrt 2) cancels (x < -3, |GELU| < 4e-3).
  np.testing.assert_allclose(out, REFERENCES['gelu'](x.astype(np.float64)), rtol=1e-6,
                             atol=GELU_CANCELLATION)


def test_gelu_over_its_whole_range_and_its_gradient():
  """Through the select at -20 and out to where GELU underflows; d/dx x Phi(x) = Phi + x phi."""
  x = np.linspace(-40, 10, 2001)
  edge = np.float32(-20.0)  # The select's threshold and the f32 just above it.
  x = np.concatenate([x.astype(np.float32), [edge, np.nextafter(edge, np.float32(0))]])
  np.testing.assert_allclose(layers.gelu(jnp.asarray(x)), REFERENCES['gelu'](x.astype(np.float64)),
                             rtol=1e-6, atol=GELU_CANCELLATION)
  x64 = x.astype(np.float64)
  cdf = np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0)))(x64)
  derivative = cdf + x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
  grad = jax.vmap(jax.grad(layers.gelu))(jnp.asarray(x))
  np.testing.assert_allclose(grad, derivative, rtol=1e-5, atol=1e-6)
