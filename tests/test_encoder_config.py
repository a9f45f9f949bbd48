"""EncoderConfig's dtype='auto': the compute dtype follows the backend JAX runs on."""
import jax
import jax.numpy as jnp
import pytest

from encoders.config import ConfigError, EncoderConfig


def test_auto_dtype_follows_the_backend(monkeypatch):
  config = EncoderConfig(dtype='auto')
  config.validate()
  assert jax.default_backend() == 'cpu' and config.compute_dtype == jnp.float32
  for backend, expected in (('gpu', jnp.bfloat16), ('tpu', jnp.bfloat16), ('cpu', jnp.float32)):
    monkeypatch.setattr(jax, 'default_backend', lambda backend=backend: backend)
    assert config.compute_dtype == expected
  assert config.storage_dtype == jnp.float32  # Parameters stay f32 whatever the compute dtype.


def test_auto_is_not_a_parameter_dtype():
  with pytest.raises(ConfigError, match='model.param_dtype'):
    EncoderConfig(param_dtype='auto').validate()
