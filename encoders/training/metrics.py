"""Metric output: TensorBoard event files (tensorboardX), `metrics.jsonl`, and console lines.

Only process 0 writes. Metrics from the step are (numerator, denominator) sums;
`summarize` divides them once they have been added over micro-batches and batches.
The workdir may be a URL (gs://bucket/run): object stores have no append, so there
metrics.jsonl and each event file are uploaded whole, every `upload_seconds` (120 s, as
TensorBoard flushes), at `flush()` (the trainer calls it after each checkpoint) and at close. A
killed run loses no line up to its last checkpoint, and a resumed one rewrites those after it.
"""
import io
import json
import logging
import time

import numpy as np
from etils import epath

from encoders import paths


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

  def __init__(self, workdir: str, enabled: bool, resume_step: int = 0,
               upload_seconds: float = 120.0):
    self.enabled = enabled
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    if not enabled:
      return
    self.lines = []  # Those of a URL's file, uploaded whole.
    self.upload_seconds = upload_seconds
    if self.path.exists():
      self.lines = [line for line in self.path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line)['step'] <= resume_step]
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text(''.join(self.lines))
    self.uploaded = (time.monotonic(), len(self.lines))  # When, and how many lines.
    self.jsonl = None if paths.is_url(workdir) else self.path.open('a')
    # Imported here, not at the top: tensorboardX imports torch whenever torch is installed
    # (~180 MB of RSS), which nothing that only builds or steps a model should pay.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    if paths.is_url(workdir):  # Not tensorboardX's own gs:// writer: one path layer for all files.
      tensorboardX.record_writer.register_writer_factory(workdir.split('://')[0], _UrlEventFiles())
    self.tensorboard = tensorboardX.SummaryWriter(str(epath.Path(workdir) / 'tensorboard'))

  def write(self, step: int, scalars: dict[str, float], prefix: str) -> None:
    if not self.enabled:
      return
    named = {f'{prefix}/{k}': v for k, v in scalars.items()}
    for name, value in named.items():
      self.tensorboard.add_scalar(name, value, step)
    line = json.dumps({'step': step, **named}) + '\n'
    if self.jsonl is None:
      self.lines.append(line)
      if time.monotonic() - self.uploaded[0] >= self.upload_seconds:
        self.flush()
    else:
      self.jsonl.write(line)
      self.jsonl.flush()
    logging.info('step %d %s', step, ', '.join(f'{k}={v:.4g}' for k, v in named.items()))

  def flush(self) -> None:
    """Everything written so far, in the files (a URL's uploaded when it has new lines)."""
    if not self.enabled:
      return
    if self.jsonl is None and self.uploaded[1] < len(self.lines):
      self.path.write_text(''.join(self.lines))
    self.uploaded = (time.monotonic(), len(self.lines))
    self.tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      if self.jsonl is not None:
        self.jsonl.close()
      self.tensorboard.close()


class _UrlEventFile:
  """An event file at a URL, as tensorboardX's record writers are: the bytes so far, uploaded
  whole through epath at each flush."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _UrlEventFiles:
  """tensorboardX's writer factory for one URL scheme (register_writer_factory)."""

  def open(self, path: str) -> _UrlEventFile:
    return _UrlEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # An object store has no folders to create.


def read_jsonl(workdir: str) -> list[dict]:
  """All records of <workdir>/metrics.jsonl."""
  text = (epath.Path(workdir) / 'metrics.jsonl').read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]
