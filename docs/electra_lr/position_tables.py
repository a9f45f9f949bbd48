"""Has a checkpoint's absolute position table learned an order? For each WORKDIR:STEP, the rows
the model reads (the first data.seq_length), centred: the mean cosine between neighbouring
rows (0 for a random table, near 1 for a smooth one) and the std of its entries. Markdown:

  PYTHONPATH=. python docs/electra_lr/position_tables.py WORKDIR:STEP ... > OUT.md
"""
import sys

import jax
import numpy as np

from encoders.training import reload


def neighbour_cosine(table: np.ndarray) -> float:
  """Mean cosine of rows i and i+1 of `table` [positions, width] after removing its mean row."""
  centred = table - table.mean(0)
  norms = np.linalg.norm(centred, axis=1)
  return float(np.mean((centred[:-1] * centred[1:]).sum(1) / (norms[:-1] * norms[1:])))


def main(specs: list[str]) -> None:
  print('| workdir | step | neighbour cosine | std |\n|---|---:|---:|---:|')
  for spec in specs:
    workdir, step = spec.rsplit(':', 1)
    config, _, params = reload.load_workdir(workdir, int(step))
    params = jax.device_get(params)
    embeddings = params['embeddings'] if 'embeddings' in params else params['encoder']['embeddings']
    table = np.asarray(embeddings['position_embeddings']['embedding'])[:config.data.seq_length]
    print(f'| {workdir} | {step} | {neighbour_cosine(table):.3f} | {table.std():.4f} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
