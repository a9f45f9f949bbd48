"""Checkpoint reliability: SIGKILL + resume is exact, SIGTERM saves and exits, tmp dirs are ignored."""
import logging
import os
import random
import signal
import time

from absl import logging as absl_logging
import pytest

from encoders.training import checkpointing, metrics, reload, trainer
from tests import training_util


def _wait_for_step(process, workdir: str, step: int, timeout: float = 300) -> int:
  """Polls metrics.jsonl until a train record at >= `step`; returns the last logged step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, 'the run ended before the signal: ' + process.stdout.read()[-3000:]
    if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
      logged = list(training_util.train_losses(workdir))
      if logged and logged[-1] >= step:
        return logged[-1]
    time.sleep(0.02)
  raise TimeoutError(f'no step {step} in {workdir}')


def _wait_for_checkpoint(process, workdir: str, timeout: float = 300) -> int:
  """Polls until the run has a committed checkpoint; returns its step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, 'the run ended before the signal: ' + process.stdout.read()[-3000:]
    step = checkpointing.make_manager(workdir, read_only=True).latest_step()
    if step is not None:
      return step
    time.sleep(0.05)
  raise TimeoutError(f'no committed checkpoint in {workdir}')


def _finish(process) -> str:
  """Waits for `process` (at most 10 minutes; a timed-out one is killed, not left running)
  and checks that it succeeded; returns its output."""
  try:
    output, _ = process.communicate(timeout=600)
  finally:
    process.kill()  # No-op once it has exited.
  assert process.returncode == 0, output[-5000:]
  return output


def kill_and_resume(tmp_path, num_steps: int, kill_at: int, **overrides):
  """The entry point run straight, and killed (SIGKILL) at step `kill_at` then rerun to resume;
  returns the train losses of both ({step: loss}), after checking the straight run logged all."""
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  steps = dict(train__num_steps=num_steps, **overrides)
  reference = training_util.pretrain(straight, **steps)
  run = training_util.pretrain(killed, **steps)
  _wait_for_step(run, killed, kill_at)
  _wait_for_checkpoint(run, killed)  # The save is async: a step logged after it does not mean committed.
  run.send_signal(signal.SIGKILL)
  run.wait()
  restart_from = checkpointing.make_manager(killed, read_only=True).latest_step()
  assert restart_from is not None and restart_from < num_steps
  _finish(training_util.pretrain(killed, **steps))
  _finish(reference)
  expected = training_util.train_losses(straight)
  assert sorted(expected) == list(range(1, num_steps + 1))
  return expected, training_util.train_losses(killed)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path):
  kill_at = random.randint(4, 24)  # After the first checkpoint (every 3 steps).
  expected, resumed = kill_and_resume(tmp_path, 30, kill_at)
  assert resumed == expected, f'killed at {kill_at}'


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  run = training_util.pretrain(workdir, train__num_steps=1000, checkpoint__every_steps=1000)
  _wait_for_step(run, workdir, 5)
  run.send_signal(signal.SIGTERM)
  _finish(run)
  stopped_at = max(training_util.train_losses(workdir))
  assert 5 <= stopped_at < 1000
  assert checkpointing.make_manager(workdir, read_only=True).all_steps() == [stopped_at]


def test_leftover_tmp_checkpoint_is_ignored(tmp_path):
  workdir = str(tmp_path)
  trainer.train_and_evaluate(training_util.tiny_config(train__num_steps=6), workdir)
  leftover = tmp_path / 'checkpoints' / '9.orbax-checkpoint-tmp-1234'
  (leftover / 'state').mkdir(parents=True)
  (leftover / 'state' / 'garbage').write_text('half-written')
  assert checkpointing.make_manager(workdir, read_only=True).latest_step() == 6

  trainer.train_and_evaluate(training_util.tiny_config(train__num_steps=9), workdir)
  steps = [r['step'] for r in metrics.read_jsonl(workdir) if 'train/loss' in r]
  assert steps == list(range(1, 10))  # Resumed at 6, not 9 and not 0.
  assert checkpointing.make_manager(workdir, read_only=True).latest_step() == 9
  assert not leftover.exists()


def test_reload_logs_no_read_only_warning(tmp_path, caplog):
  """orbax warned 'Given directory is read only' (and that it set save_interval_steps=0) on every
  reload, where a read-only manager is the point; other absl warnings still get through."""
  trainer.train_and_evaluate(training_util.tiny_config(train__num_steps=2), str(tmp_path))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    reload.load_workdir(str(tmp_path))
    absl_logging.warning('another warning')
  messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert messages == ['another warning'], messages


def test_a_bucket_workdir_stays_a_url(tmp_path, monkeypatch):
  assert checkpointing.checkpoint_dir('gs://bucket/run') == 'gs://bucket/run/checkpoints'
  monkeypatch.chdir(tmp_path)  # A local workdir is made absolute, as orbax needs.
  assert checkpointing.checkpoint_dir('run') == os.path.join(str(tmp_path), 'run', 'checkpoints')
