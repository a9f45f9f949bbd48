"""Metric output: the TensorBoard viewer that the README names is installed and reads our event files."""
import os
import subprocess
import sys

from encoders.training import metrics


def test_tensorboard_reads_the_event_files(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  for step, loss in ((1, 2.5), (3, 1.25)):  # Exact in float32.
    writer.write(step, {'loss': loss}, 'train')
  writer.close()
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars('train/loss')] == [(1, 2.5), (3, 1.25)]


def test_tensorboard_command_runs():
  """`tensorboard --logdir workdirs` (README) from the environment's own bin directory."""
  command = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  result = subprocess.run([command, '--help'], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert '--logdir' in result.stdout


def test_metrics_at_a_url_upload_on_flush_and_cadence_not_at_each_write(gcs_bucket, monkeypatch):
  """An object store has no append, so each upload rewrites the whole metrics.jsonl: uploading
  at every write made a long run's traffic quadratic in its lines. Lines reach the bucket at
  flush() (the trainer's checkpoints), once `upload_seconds` have passed, and at close."""
  clock = [0.0]
  monkeypatch.setattr(metrics.time, 'monotonic', lambda: clock[0])
  workdir = f'{gcs_bucket}/run'
  writer = metrics.MetricWriter(workdir, enabled=True, upload_seconds=120)
  uploaded = lambda: [record['step'] for record in metrics.read_jsonl(workdir)]
  for step in (1, 2, 3):
    writer.write(step, {'loss': 1.0 / step}, 'train')
  assert not uploaded()
  writer.flush()
  assert uploaded() == [1, 2, 3]
  clock[0] = 119.0
  writer.write(4, {'loss': 0.25}, 'train')
  assert uploaded() == [1, 2, 3]
  clock[0] = 120.0
  writer.write(5, {'loss': 0.2}, 'train')
  assert uploaded() == [1, 2, 3, 4, 5]
  writer.write(6, {'loss': 0.1}, 'eval')
  writer.close()
  assert uploaded() == [1, 2, 3, 4, 5, 6]
