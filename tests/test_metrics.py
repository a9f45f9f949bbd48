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
