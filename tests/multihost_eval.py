"""One process of the uneven-shard evaluation test (tests/test_multihost.py).

  python -m tests.multihost_eval OUT PROCESS_COUNT PROCESS_ID COORDINATOR

Each process joins jax.distributed, builds the tiny NSP config's trainer setup over every
device, and evaluates its own synthetic shard, which ends after `batches_of(process_id)`
local batches: process i has fewer than process 0. Process 0 writes the metrics to OUT.
PROCESS_COUNT 0 evaluates every process's real batches in one process on one device
instead, one local batch at a time (the reference: the metrics of exactly those rows).
"""
import json
import sys

import jax
import numpy as np

from encoders.training import sharding, synthetic, trainer
from tests import training_util

EVAL_STEPS = 4


def batches_of(process_id: int) -> int:
  """Local eval batches of process `process_id`'s shard: 4, 3, 2, 2, ..."""
  return max(EVAL_STEPS - process_id, 2)


def local_batches(config, process_id: int, process_count: int) -> list[dict]:
  iterator = synthetic.SyntheticIterator(config, 'validation', process_id, process_count, pairs=True)
  return [next(iterator) for _ in range(batches_of(process_id))]


def main(out: str, process_count: int, process_id: int, coordinator: str) -> None:
  jax.config.update('jax_threefry_partitionable', True)
  config = training_util.tiny_config(train__batch_size=8)
  if process_count:
    jax.distributed.initialize(coordinator, process_count, process_id)
    mesh = sharding.make_mesh(config.mesh)
    batches = local_batches(config, process_id, process_count)
  else:  # One device; the global batch is one process's share of the multi-process one.
    process_count = int(coordinator)
    shards = [local_batches(config, i, process_count) for i in range(process_count)]
    config.train.batch_size //= process_count
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    batches = [batch for shard in shards for batch in shard]
  run = trainer.setup(config, mesh)
  state = run.init_state(config.seed)
  num_batches = EVAL_STEPS if jax.process_count() > 1 else len(batches)
  result = trainer.evaluate(run.eval_fn, state, lambda: iter(batches), num_batches, mesh)
  if jax.process_index() == 0:
    with open(out, 'w') as f:
      json.dump({k: float(np.asarray(v)) for k, v in result.items()}, f)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
