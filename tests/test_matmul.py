"""layers.matmul: bf16 operands with f32 accumulation, forward and backward, vs numpy in f64."""
import jax
import jax.extend
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from encoders.layers import matmul

# The einsums the encoder runs: dense, to/from heads, attention scores and context, tied decoder.
EQUATIONS = {
    '...i,io->...o': ((2, 5, 16), (16, 24)),
    'bld,dhk->blhk': ((2, 5, 16), (16, 2, 8)),
    'blhk,hkd->bld': ((2, 5, 2, 8), (2, 8, 16)),
    'bqhd,bkhd->bhqk': ((2, 5, 2, 8), (2, 7, 2, 8)),
    'bhqk,bkhd->bqhd': ((2, 2, 5, 7), (2, 7, 2, 8)),
    '...d,vd->...v': ((2, 3, 16), (40, 16)),
}


def _bf16(shape, rng):
  """Random values that bf16 holds exactly, as f32 (so the reference sees the same operands)."""
  return rng.normal(size=shape).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize('equation', EQUATIONS)
def test_bf16_forward_and_gradients_match_f64(equation):
  rng = np.random.default_rng(0)
  x, y = (_bf16(shape, rng) for shape in EQUATIONS[equation])
  out, vjp = jax.vjp(lambda a, b: matmul(equation, a, b, jnp.bfloat16), x, y)
  assert out.dtype == jnp.float32
  cotangent = _bf16(out.shape, rng)
  grad_x, grad_y = vjp(cotangent)

  # numpy sums no ellipsis away, so the reference names the two leading axes.
  x_spec, y_spec, out_spec = equation.replace('...', 'AB').replace('->', ',').split(',')
  x64, y64, cotangent64 = (a.astype(np.float64) for a in (x, y, cotangent))
  expected = np.einsum(f'{x_spec},{y_spec}->{out_spec}', x64, y64)
  expected_x = np.einsum(f'{out_spec},{y_spec}->{x_spec}', cotangent64, y64)
  expected_y = np.einsum(f'{x_spec},{out_spec}->{y_spec}', x64, cotangent64)
  # The forward output is f32-accumulated: f32 rounding only. The gradients come back in the
  # operands' dtype (bf16, 8 mantissa bits), then as f32 through the cast to bf16.
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  for grad, expected in ((grad_x, expected_x), (grad_y, expected_y)):
    np.testing.assert_allclose(grad, expected, rtol=2 ** -7, atol=2 ** -7 * np.abs(expected).max())


def test_every_bf16_matmul_of_the_backward_pass_accumulates_in_f32():
  x, y = jnp.ones((4, 8, 16)), jnp.ones((16, 32))
  grad = jax.grad(lambda a, b: matmul('...i,io->...o', a, b, jnp.bfloat16).sum(), (0, 1))

  def dots_in(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general':
        yield eqn
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from dots_in(sub)

  dots = list(dots_in(jax.make_jaxpr(grad)(x, y).jaxpr))
  assert len(dots) == 3  # Forward, and the gradients of both operands.
  for dot in dots:
    assert [v.aval.dtype for v in dot.invars] == [jnp.bfloat16, jnp.bfloat16]
    assert dot.params['preferred_element_type'] == jnp.float32


def test_f32_is_plain_einsum():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=(16, 5)).astype(np.float32)
  np.testing.assert_array_equal(matmul('...i,io->...o', x, y, jnp.float32),
                                jnp.einsum('...i,io->...o', x, y))


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_an_index_summed_inside_one_operand_is_refused(dtype):
  with pytest.raises(ValueError, match='summed within one operand'):
    matmul('ij,jk->k', jnp.ones((2, 3)), jnp.ones((3, 4)), dtype)
