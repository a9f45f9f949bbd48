"""Our training step at a benchmark spec: `configs/bert.py:<shape>` plus overrides, sparse MLM.

Until the trainer (`training/`) provides its step, this is the minimal equivalent: the
pretraining model on the batch contract, softmax cross-entropy at `masked_positions`
only, optax AdamW, state donated, dropout key folded from the step.
"""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from benchmarks.measure import Spec
from configs import bert as bert_config
from encoders.bert import EncoderForPreTraining
from encoders.config import EncoderConfig

MODEL_INPUTS = ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids', 'masked_positions')
DTYPES = {'f32': 'float32', 'bf16': 'bfloat16'}


def model_config(spec: Spec) -> EncoderConfig:
  config = bert_config.get_config(spec.shape)
  config.model.dtype = DTYPES[spec.precision]
  config.model.update({k.removeprefix('model.'): v for k, v in spec.overrides.items()})
  return EncoderConfig.from_config(config.model)


def weight_decay_mask(params):
  """Decay matrices only: no biases, LayerNorm scales or embeddings' LayerNorm."""
  return jax.tree.map(lambda x: x.ndim > 1, params)


def build(spec: Spec, batch: dict[str, np.ndarray]):
  """-> (step: () -> None that runs and blocks on one step, compile_s, info)."""
  config = model_config(spec)
  model = EncoderForPreTraining(config)
  inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS + ('masked_ids', 'masked_weights')}
  params = nn.unbox(jax.jit(model.init)(
      jax.random.key(spec.seed), *(inputs[k] for k in MODEL_INPUTS))['params'])
  tx = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=weight_decay_mask)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  def loss_fn(params, batch, rng):
    logits = model.apply({'params': params}, *(batch[k] for k in MODEL_INPUTS),
                         deterministic=False, rngs={'dropout': rng})['mlm_logits']
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['masked_ids'])
    weights = batch['masked_weights']
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
    return state.apply_gradients(grads=grads), loss

  rng = jax.random.key(spec.seed + 1)
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=0).lower(state, inputs, rng).compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def step():
    holder[0], loss = compiled(holder[0], inputs, rng)
    loss.block_until_ready()

  num_params = sum(x.size for x in jax.tree.leaves(params))
  info = dict(num_params=int(num_params), trainer='benchmarks.ours_step (minimal)',
              head_positions=int(batch['masked_positions'].shape[1]))
  return step, compile_s, info
