"""Metric output: TensorBoard event files (tensorboardX), `metrics.jsonl`, and console lines.

Only process 0 writes. Metrics from the step are (numerator, denominator) sums;
`summarize` divides them once they have been added over micro-batches and batches.
"""
import json
import logging
import os

import numpy as np


def summarize(sums: dict) -> dict[str, float]:
  """{name: (numerator, denominator) | scalar} -> {name: float}."""
  result = {}
  for name, value in sums.items():
    if isinstance(value, (tuple, list)):
      numerator, denominator = value
      result[name] = float(numerator) / max(float(denominator), 1e-12)
    else:
      result[name] = float(value)
  return result


def add_sums(total: dict | None, sums: dict) -> dict:
  """Adds (numerator, denominator) pairs elementwise (host side, numpy)."""
  if total is None:
    return {k: tuple(np.asarray(x, np.float64) for x in v) for k, v in sums.items()}
  return {k: (total[k][0] + np.asarray(v[0], np.float64), total[k][1] + np.asarray(v[1], np.float64))
          for k, v in sums.items()}


class MetricWriter:
  """Writes scalars to <workdir>/tensorboard and <workdir>/metrics.jsonl on process 0.

  On a resumed run, JSON lines after the restored step are dropped first, so the file
  holds each step once even when the previous run was killed after its last checkpoint.
  """

  def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not enabled:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    self.jsonl = open(self.path, 'a')
    # Imported here, not at the top: tensorboardX imports torch whenever torch is installed
    # (~180 MB of RSS), which nothing that only builds or steps a model should pay.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self.tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict[str, float], prefix: str) -> None:
    if not self.enabled:
      return
    named = {f'{prefix}/{k}': v for k, v in scalars.items()}
    for name, value in named.items():
      self.tensorboard.add_scalar(name, value, step)
    self.jsonl.write(json.dumps({'step': step, **named}) + '\n')
    self.jsonl.flush()
    logging.info('step %d %s', step, ', '.join(f'{k}={v:.4g}' for k, v in named.items()))

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tensorboard.close()


def read_jsonl(workdir: str) -> list[dict]:
  """All records of <workdir>/metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
