"""One forward pass that also returns every layer's attention weights and hidden states.

The model runs under flax's `nn.intercept_methods` with the 'intermediates' collection
mutable: each call of a `layers.SelfAttention` (every family built on it: BERT, RoBERTa,
ELECTRA, ALBERT, DistilBERT) then spells its softmax out and sows the weights, and the
interceptor records, in call order, the layer's input (the hidden state entering layer i)
and those weights. ALBERT's shared modules, called once per layer, are recorded once per
call. DeBERTa's attention is its own module: it is refused with a clear error.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from encoders import layers
from encoders.analysis.subject import Encoded, Subject


@dataclasses.dataclass
class Outputs:
  hidden_states: np.ndarray  # f32 [layers + 1, batch, length, hidden]: 0 = embeddings (projected).
  attention: np.ndarray  # f32 [layers, batch, heads, query, key]


def apply_recording(model: nn.Module, params: dict, input_ids, segment_ids):
  """-> (model outputs, [hidden state entering each attention], [its weights]), in layer order."""
  inputs, weights = [], []

  def record(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if isinstance(context.module, layers.SelfAttention) and context.method_name == '__call__':
      inputs.append(args[0])
      weights.append(context.module.get_variable('intermediates', 'attention_weights')[-1])
    return y

  with nn.intercept_methods(record):
    outputs, _ = model.apply({'params': params}, input_ids, segment_ids,
                             mutable=['intermediates'])
  return outputs, inputs, weights


def _last_hidden(outputs) -> jax.Array:
  """EncoderForPreTraining's {'hidden': ...} or Encoder's (hidden, pooled) -> hidden."""
  return outputs['hidden'] if isinstance(outputs, dict) else outputs[0]


@functools.lru_cache(maxsize=8)
def _jitted(model: nn.Module):
  def forward(params, input_ids, segment_ids):
    outputs, inputs, weights = apply_recording(model, params, input_ids, segment_ids)
    if not weights:
      raise ValueError(f'{type(model).__module__}: no layers.SelfAttention was called, so there '
                       'are no attention weights to read (DeBERTa has its own attention).')
    hidden = jnp.stack([*inputs, _last_hidden(outputs)]).astype(jnp.float32)
    return hidden, jnp.stack(weights)
  return jax.jit(forward)


def run(subject: Subject, encoded: Encoded) -> Outputs:
  """Every layer's hidden states and attention weights for one batch of encoded texts."""
  hidden, weights = _jitted(subject.model)(subject.params, encoded.input_ids, encoded.segment_ids)
  return Outputs(np.asarray(hidden), np.asarray(weights))


def batches(encoded: Encoded, batch_size: int):
  """Encoded slices of batch_size rows (the last one shorter)."""
  for start in range(0, len(encoded.input_ids), batch_size):
    yield Encoded(*(a[start:start + batch_size] for a in dataclasses.astuple(encoded)))
