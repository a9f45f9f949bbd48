"""Accelerator runs: a run that asks for GPU or TPU devices and finds only the CPU stops at start
with a config error; on GPU, attention runs cuDNN's fused kernel where that supports it."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from encoders import bert, layers
from encoders.adaptation import finetune
from encoders.config import ConfigError, EncoderConfig
from encoders.configs import finetune as finetune_configs
from encoders.training import sharding, trainer
from tests import training_util


# --------------------------------------------------------------------------- the platform check
@pytest.mark.parametrize('platform, jax_platforms, expected', [
    ('any', '', 'any'), ('any', 'cpu', 'any'), ('any', 'cuda', 'gpu'), ('any', 'rocm', 'gpu'),
    ('any', 'tpu', 'tpu'), ('any', 'cuda,cpu', 'any'),  # JAX may fall back to the CPU there.
    ('gpu', '', 'gpu'), ('tpu', 'cpu', 'tpu'), ('cpu', 'cuda', 'cpu'),
])
def test_required_platform_from_the_config_then_jax_platforms(monkeypatch, platform,
                                                               jax_platforms, expected):
  monkeypatch.setenv('JAX_PLATFORMS', jax_platforms)
  mesh = ml_collections.ConfigDict(dict(platform=platform))
  assert sharding.required_platform(mesh)[0] == expected
  without_field = ml_collections.ConfigDict()  # configs/finetune.py's mesh: as 'any'.
  assert sharding.required_platform(without_field) == sharding.required_platform(
      ml_collections.ConfigDict(dict(platform='any')))
  with pytest.raises(ConfigError, match=r"config.mesh.platform='cuda': choose one of"):
    sharding.required_platform(ml_collections.ConfigDict(dict(platform='cuda')))


def _no_work(monkeypatch):
  """Makes training a tokenizer, building a corpus or initialising a state fail the test."""
  from encoders.data import corpus, tokenizer  # pylint: disable=g-import-not-at-top
  for module, name in ((tokenizer, 'train'), (corpus, 'get_builder'), (trainer, 'setup')):
    monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail('work done before the check'))


def test_pretraining_that_asks_for_gpus_on_this_cpu_stops_at_start(tmp_path, monkeypatch):
  _no_work(monkeypatch)
  config = training_util.tiny_config(train__synthetic_data=False)
  config.mesh.platform = 'gpu'
  with pytest.raises(ConfigError) as error:  # _no_work: before any data or state is built.
    trainer.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert "config.mesh.platform='gpu' asks for GPU devices, but JAX" in message
  assert 'runs on CPU' in message and 'pip install -r requirements-gpu.txt' in message
  assert os.listdir(tmp_path) == []


def test_finetuning_that_asks_for_a_tpu_on_this_cpu_stops_at_start(tmp_path, monkeypatch):
  _no_work(monkeypatch)
  config = finetune_configs.get_config('topic_tiny')
  assert config.mesh.platform == 'any'  # --config.mesh.platform=tpu sets it.
  config.mesh.platform = 'tpu'
  with pytest.raises(ConfigError, match=r"asks for TPU devices.*requirements-tpu\.txt"):
    finetune.finetune(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('module, config, jax_platforms, accelerator', [
    ('experiments.pretrain', 'configs/bert.py:tiny', 'cuda', 'GPU'),
    ('experiments.finetune', 'configs/finetune.py:topic_tiny', 'tpu', 'TPU'),
])
def test_launchers_jax_platforms_refuses_the_cpu(tmp_path, module, config, jax_platforms,
                                                 accelerator):
  """launch/ sets JAX_PLATFORMS=cuda (SLURM) or tpu (TPU VM): with the CPU build of JAX the entry
  points print one config-error line (JAX alone raised a bare AssertionError for cuda)."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', module, '--config', config, '--workdir', str(workdir)],
      cwd=training_util.ROOT, env=dict(training_util.env(), JAX_PLATFORMS=jax_platforms),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'Config error: JAX_PLATFORMS={jax_platforms} asks for {accelerator} '
                         'devices'), result.stderr[-3000:]
  assert f'requirements-{accelerator.lower()}.txt' in last and 'Traceback' not in result.stderr
  assert not workdir.exists() or not any(workdir.iterdir())  # No tokenizer, no checkpoint.


# --------------------------------------------------------------------------- cuDNN attention
@pytest.mark.parametrize('backend, dtype, dropout, head_dim, length, expected', [
    ('gpu', jnp.bfloat16, False, 64, 128, 'cudnn'),  # BERT-base in bf16.
    ('gpu', jnp.float16, False, 128, 512, 'cudnn'),
    ('gpu', jnp.float32, False, 64, 128, 'xla'),  # The kernel has no f32.
    ('gpu', jnp.bfloat16, True, 64, 128, 'xla'),  # Nor dropout.
    ('gpu', jnp.bfloat16, False, 60, 128, 'xla'),  # Head dim not a multiple of 8.
    ('gpu', jnp.bfloat16, False, 256, 128, 'xla'),  # Over 128.
    ('gpu', jnp.bfloat16, False, 64, 127, 'xla'),  # Odd length with a mask (a bias) in training.
    ('cpu', jnp.bfloat16, False, 64, 128, layers.SPELLED_OUT),  # XLA:CPU's bf16 products.
    ('cpu', jnp.float32, False, 64, 128, layers.SPELLED_OUT),  # Head-major: the faster form.
    ('tpu', jnp.bfloat16, False, 64, 128, 'xla'),
])
def test_attention_implementation(backend, dtype, dropout, head_dim, length, expected):
  assert layers.attention_implementation(backend, dtype, dropout, head_dim, length) == expected
  # A trained bias (relative positions): XLA's form, never cuDNN's (layers.attention_implementation).
  with_bias = layers.attention_implementation(backend, dtype, dropout, head_dim, length, bias=True)
  assert with_bias == ('xla' if expected == 'cudnn' else expected)


def _asked_implementations(monkeypatch, backend: str, **fields) -> list:
  """The `implementation`s SelfAttention passes to jax.nn.dot_product_attention (run as XLA's) in
  one forward and one training pass of a tiny BERT, with jax.default_backend() returning
  `backend` inside encoders/layers.py."""
  asked = []
  fused = jax.nn.dot_product_attention

  def recording(*args, implementation=None, **kwargs):
    asked.append(implementation)
    return fused(*args, implementation='xla', **kwargs)

  monkeypatch.setattr(layers.jax, 'default_backend', lambda: backend)
  monkeypatch.setattr(layers.jax.nn, 'dot_product_attention', recording)
  config = EncoderConfig(**{**dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=4,
                                   intermediate_size=64, max_position_embeddings=16), **fields})
  model = bert.Encoder(config)
  ids = jnp.ones((2, 8), jnp.int32)
  params = model.init(jax.random.key(0), ids)
  model.apply(params, ids, deterministic=False, rngs={'dropout': jax.random.key(1)})
  return asked


def test_gpu_bf16_attention_without_dropout_asks_for_cudnn(monkeypatch):
  assert set(_asked_implementations(monkeypatch, 'gpu', dtype='bfloat16',
                                    attention_dropout_rate=0.0)) == {'cudnn'}
  # Dropout in training: the softmax is spelled out (no fused call); at init (deterministic)
  # the fused kernel runs.
  assert _asked_implementations(monkeypatch, 'gpu', dtype='bfloat16') == ['cudnn']
  assert set(_asked_implementations(monkeypatch, 'gpu', dtype='float32',
                                    attention_dropout_rate=0.0)) == {'xla'}
  assert set(_asked_implementations(monkeypatch, 'tpu', dtype='float32',
                                    attention_dropout_rate=0.0)) == {'xla'}
  # On CPU the softmax is spelled out in every precision: no fused call.
  for dtype in ('float32', 'bfloat16'):
    assert not _asked_implementations(monkeypatch, 'cpu', dtype=dtype, attention_dropout_rate=0.0)


def test_xla_is_what_the_default_ran():
  """Where 'xla' is chosen (TPU; GPU in f32) it computes bit for bit what implementation=None did."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 8, 4, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((2, 1, 8, 8)) > 0.3) | jnp.eye(8, dtype=bool)
  default = jax.nn.dot_product_attention(q, k, v, mask=mask)
  chosen = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=(
      layers.attention_implementation('tpu', q.dtype, False, 8, 8)))
  np.testing.assert_array_equal(np.asarray(chosen), np.asarray(default))


def _numpy_attention(q, k, v, mask, keep=None):
  """Softmax attention from its definition: [batch, length, heads, head_dim] in and out;
  `keep` [batch, heads, query, key] scales the probabilities (dropout's mask / keep rate)."""
  scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  if keep is not None:
    probs = probs * keep
  return np.einsum('bhqk,bkhd->bqhd', probs, v), probs


def test_spelled_out_attention_is_softmax_attention():
  """Head-major with the sum divided out last: the definition's values, probabilities,
  dropout (of the probabilities) and, against jax.nn.dot_product_attention, gradients."""
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 8, 4, 8)).astype(np.float32) * 3 for _ in range(3))
  mask = (rng.random((2, 1, 8, 8)) > 0.3) | np.eye(8, dtype=bool)
  sown = []
  context = layers.spelled_out_attention(q, k, v, mask, jnp.float32, sow=sown.append)
  expected, probs = _numpy_attention(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(context), expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sown[0]), probs, atol=1e-6)

  keep = (rng.random((2, 4, 8, 8)) > 0.2) / 0.8
  dropped = layers.spelled_out_attention(q, k, v, mask, jnp.float32, dropout=lambda w: w * keep)
  np.testing.assert_allclose(np.asarray(dropped), _numpy_attention(q, k, v, mask, keep)[0],
                             atol=1e-5, rtol=1e-5)

  # bf16: the definition on operands rounded to bf16, up to the weights' and the output's
  # roundings to bf16 (2**-8 relative each).
  half = layers.spelled_out_attention(q, k, v, mask, jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  rounded = [np.asarray(jnp.asarray(t, jnp.bfloat16), np.float32) for t in (q, k, v)]
  np.testing.assert_allclose(np.asarray(half, np.float32), _numpy_attention(*rounded, mask)[0],
                             atol=2.0 ** -6 * np.abs(v).max(), rtol=2.0 ** -7)

  cotangent = rng.normal(size=q.shape).astype(np.float32)
  def loss(attend):
    return lambda q, k, v: jnp.sum(attend(q, k, v) * cotangent)
  ours = jax.grad(loss(lambda *a: layers.spelled_out_attention(*a, mask, jnp.float32)),
                  argnums=(0, 1, 2))(q, k, v)
  fused = jax.grad(loss(lambda *a: jax.nn.dot_product_attention(*a, mask=mask)),
                   argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(ours, fused):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)
