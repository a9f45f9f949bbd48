"""HF transformers' Flax BERT trained as examples/flax/language-modeling/run_mlm_flax.py does.

Logits at every position, loss where labels are set, optax AdamW with run_mlm_flax's
weight-decay mask and linear schedule, a jitted step with a split dropout key and the
state donated (run_mlm_flax pmaps the same step; on one device jit is equivalent).
"""
import os
import time

os.environ.setdefault('USE_TORCH', '0')  # Keep torch (and its threads) out of this process.

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from flax.training.common_utils import onehot

from benchmarks.measure import Spec, model_fields

INPUTS = ('input_ids', 'attention_mask', 'token_type_ids', 'labels')


def decay_mask_fn(params):
  """run_mlm_flax's mask: no decay on biases and LayerNorm parameters."""
  flat_params = traverse_util.flatten_dict(params)
  layer_norm_params = {path[-2:] for path in flat_params
                       if any(n in ''.join(path).lower() for n in ('layernorm', 'layer_norm', 'ln'))}
  return traverse_util.unflatten_dict(
      {path: path[-1] != 'bias' and path[-2:] not in layer_norm_params for path in flat_params})


def build(spec: Spec, batch: dict[str, np.ndarray]):
  """-> (step: () -> None that runs and blocks on one step, compile_s, info)."""
  from transformers import BertConfig, FlaxBertForMaskedLM  # pylint: disable=g-import-not-at-top

  fields = model_fields(spec)
  config = BertConfig(
      vocab_size=fields['vocab_size'], hidden_size=fields['hidden_size'],
      num_hidden_layers=fields['num_layers'], num_attention_heads=fields['num_heads'],
      intermediate_size=fields['intermediate_size'], max_position_embeddings=512)
  dtype = {'f32': jnp.float32, 'bf16': jnp.bfloat16}[spec.precision]
  model = FlaxBertForMaskedLM(config, seed=spec.seed, dtype=dtype)
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, 1e-4, 1000), optax.linear_schedule(1e-4, 0.0, 100_000)], [1000])
  tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, mask=decay_mask_fn)
  state = train_state.TrainState.create(apply_fn=model.__call__, params=model.params, tx=tx)

  def train_step(state, batch, dropout_rng):
    dropout_rng, new_dropout_rng = jax.random.split(dropout_rng)

    def loss_fn(params):
      labels = batch.pop('labels')
      logits = state.apply_fn(**batch, params=params, dropout_rng=dropout_rng, train=True)[0]
      label_mask = jnp.where(labels > 0, 1.0, 0.0)
      loss = optax.softmax_cross_entropy(logits, onehot(labels, logits.shape[-1])) * label_mask
      return loss.sum(), label_mask.sum()

    (loss, num_labels), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad = jax.tree.map(lambda x: x / num_labels, grad)
    return state.apply_gradients(grads=grad), loss / num_labels, new_dropout_rng

  inputs = {k: jnp.asarray(batch[k]) for k in INPUTS}
  rng = jax.random.PRNGKey(spec.seed + 1)
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(state, inputs, rng).compile()
  compile_s = time.perf_counter() - start
  holder = [state, rng]

  def step():
    holder[0], loss, holder[1] = compiled(holder[0], inputs, holder[1])
    loss.block_until_ready()

  num_params = sum(x.size for x in jax.tree.leaves(model.params))
  return step, compile_s, dict(num_params=int(num_params), head_positions=spec.seq)
