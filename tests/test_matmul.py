"""layers.matmul: bf16 operands with f32 accumulation, forward and backward, vs numpy in f64."""
import jax
import jax.extend
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from encoders import layers
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
# (dtype, forward tolerance, gradient tolerance). The operands and cotangent are exact in
# bf16, and the gradients of f32 operands are the f32 accumulators, never rounded to bf16.
TOLERANCES = {'bfloat16': (jnp.bfloat16, 1e-5, 1e-5), 'float32': (jnp.float32, 1e-5, 1e-5)}


def _bf16(shape, rng):
  """Random values that bf16 holds exactly, as f32 (so the reference sees the same operands)."""
  return rng.normal(size=shape).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize('precision', TOLERANCES)
@pytest.mark.parametrize('equation', EQUATIONS)
def test_forward_and_gradients_match_f64(equation, precision):
  dtype, forward_tolerance, grad_tolerance = TOLERANCES[precision]
  rng = np.random.default_rng(0)
  x, y = (_bf16(shape, rng) for shape in EQUATIONS[equation])
  out, vjp = jax.vjp(lambda a, b: matmul(equation, a, b, dtype), x, y)
  assert out.dtype == jnp.float32
  cotangent = _bf16(out.shape, rng)
  grad_x, grad_y = vjp(cotangent)
  assert grad_x.dtype == grad_y.dtype == jnp.float32  # The dtype of the operands.

  # numpy sums no ellipsis away, so the reference names the two leading axes.
  x_spec, y_spec, out_spec = equation.replace('...', 'AB').replace('->', ',').split(',')
  x64, y64, cotangent64 = (a.astype(np.float64) for a in (x, y, cotangent))
  expected = np.einsum(f'{x_spec},{y_spec}->{out_spec}', x64, y64)
  expected_x = np.einsum(f'{out_spec},{y_spec}->{x_spec}', cotangent64, y64)
  expected_y = np.einsum(f'{x_spec},{out_spec}->{y_spec}', x64, cotangent64)
  # The operands are exact in bf16, so the forward output differs by f32 accumulation only.
  np.testing.assert_allclose(out, expected, rtol=forward_tolerance, atol=forward_tolerance)
  for grad, expected_grad in ((grad_x, expected_x), (grad_y, expected_y)):
    np.testing.assert_allclose(grad, expected_grad, rtol=grad_tolerance,
                               atol=grad_tolerance * np.abs(expected_grad).max())


def _dots(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _dots(sub)


@pytest.mark.parametrize('equation', EQUATIONS)
def test_every_bf16_matmul_of_the_backward_pass_accumulates_in_f32(equation):
  shapes = EQUATIONS[equation]  # A bf16 activation and an f32 parameter, as in the encoder.
  x, y = jnp.ones(shapes[0], jnp.bfloat16), jnp.ones(shapes[1], jnp.float32)
  grad = jax.grad(lambda a, b: matmul(equation, a, b, jnp.bfloat16).sum(), (0, 1))
  assert [g.dtype for g in grad(x, y)] == [jnp.bfloat16, jnp.float32]
  dots = list(_dots(jax.make_jaxpr(grad)(x, y).jaxpr))
  assert len(dots) == 3  # Forward, and the gradients of both operands.
  for dot in dots:
    assert [v.aval.dtype for v in dot.invars] == [jnp.bfloat16, jnp.bfloat16]
    assert dot.params['preferred_element_type'] == jnp.float32


def test_cpu_gradient_lhs_is_laid_out_batch_free_contracting():
  """The context einsum's value gradient: probs [b,h,q,k] contracted over q -> [b,h,k,q]."""
  probs = jnp.ones((2, 2, 5, 7), jnp.bfloat16)
  spec, transposed = layers._contracting_last('bhqk', 'bqhd', 'bkhd', probs)
  assert spec == 'bhkq' and transposed.shape == (2, 2, 7, 5)
  # The score gradient's lhs is already in that order, and is left as it is.
  assert layers._contracting_last('bhqk', 'bkhd', 'bqhd', probs)[0] == 'bhqk'


def test_attention_key_gradient_is_the_same_dot_as_the_value_gradient():
  """The form XLA:CPU runs in its fused bf16 kernel (see layers._gradient_einsum)."""
  queries = keys = values = jnp.ones((2, 5, 2, 8), jnp.bfloat16)  # [batch, length, heads, dim]
  probs = jnp.ones((2, 2, 5, 5), jnp.bfloat16)
  key_grad = jax.grad(lambda k: matmul('bqhd,bkhd->bhqk', queries, k, jnp.bfloat16).sum())
  value_grad = jax.grad(lambda v: matmul('bhqk,bkhd->bqhd', probs, v, jnp.bfloat16).sum())

  def gradient_dot(grad, operand):  # Dots: forward, x's gradient, then y's.
    dot = list(_dots(jax.make_jaxpr(grad)(operand).jaxpr))[2]
    return [v.aval.shape for v in dot.invars], dot.params['dimension_numbers']

  assert gradient_dot(key_grad, keys) == gradient_dot(value_grad, values)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize('equation', ['ij,jk->k', 'ii,ij->ij', '...i,io->o', 'bi,...io->...o'])
def test_an_equation_whose_gradient_is_no_einsum_of_the_same_form_is_refused(equation, dtype):
  with pytest.raises(ValueError, match='matmul'):
    matmul(equation, jnp.ones((2, 2)), jnp.ones((2, 2, 2)), dtype)
