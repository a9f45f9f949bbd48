"""Our training step at a benchmark spec: the trainer's own jitted step
(`encoders/training/trainer.py`).

Built from `configs/bert.py:<shape>` with the spec's batch, length, masking rate and
precision (plus `spec.overrides` on `config.model`), on a one-device mesh, and fed the
batch contract's sparse masked positions: exactly what `experiments.pretrain` runs.
The deberta family builds `configs/deberta.py:base` (v3's disentangled attention) at the
shape's widths and the benchmark's vocabulary, without EMD (transformers has none) for
system 'ours' and with it for 'ours_emd'.
"""
import time

import flax.linen as nn
import jax
import numpy as np

from benchmarks.measure import Spec, model_fields
from encoders.configs import bert as bert_config
from encoders.configs import deberta as deberta_config
from encoders.training import sharding, trainer

DTYPES = {'f32': 'float32', 'bf16': 'bfloat16'}
CONTRACT = ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids', 'masked_positions',
            'masked_ids', 'masked_weights')


def family_config(spec: Spec):
  if spec.family == 'bert':
    return bert_config.get_config(spec.shape)
  config = deberta_config.get_config('base')
  config.model.update(model_fields(spec))
  config.model.emd = spec.system == 'ours_emd'
  return config


def make_config(spec: Spec):
  config = family_config(spec)
  config.model.dtype = DTYPES[spec.precision]
  config.model.update({k.removeprefix('model.'): v for k, v in spec.overrides.items()})
  config.data.input_format = 'full_sentences'  # Packed rows, MLM only (no NSP head).
  config.data.seq_length = spec.seq
  config.data.mask_rate = spec.mask_rate
  config.train.batch_size = spec.batch
  config.mesh.shape = (1, 1, 1)
  return config


def build(spec: Spec, batch: dict[str, np.ndarray]):
  """-> (step: () -> the step's mean loss, run and blocked on; compile_s, info)."""
  jax.config.update('jax_threefry_partitionable', True)  # As train_and_evaluate sets it.
  config = make_config(spec)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  run = trainer.setup(config, mesh)
  state = run.init_state(config.seed)
  inputs = sharding.global_batch({k: batch[k] for k in CONTRACT}, mesh)
  start = time.perf_counter()
  with nn.logical_axis_rules(run.rules):
    compiled = run.step_fn.lower(state, inputs).compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def step():
    holder[0], sums = compiled(holder[0], inputs)
    return jax.block_until_ready(sums)['loss'][0]

  sizes = sorted(int(x.size) for x in jax.tree.leaves(state.params))
  info = dict(num_params=sum(sizes), trainer='training.trainer.setup(...).step_fn',
              head_positions=int(batch['masked_positions'].shape[1]), parameter_sizes=sizes)
  return step, compile_s, info
