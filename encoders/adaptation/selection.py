"""The step loop fine-tuning and multi-task fine-tuning share: steps with logging, dev evaluation,
selection of the best dev step and early stopping.

  state, best, steps_run = selection.train(state, take_step, evaluate_dev, num_steps=...,
                                           eval_every=..., train_config=config.train,
                                           writer=writer, description='fine-tuning topic')

`take_step(state, step)` runs one update and returns (state, its metrics, the task it trained or
None); train metrics are logged as '<task>/<name>' when a task is named. `evaluate_dev(params)`
returns a DevResult. The best step's trainable parameters are copied to the host.
"""
import dataclasses
import logging
from typing import Any, Callable

import jax
import numpy as np
import tqdm


@dataclasses.dataclass(frozen=True)
class DevResult:
  metrics: dict[str, float]  # Written to the 'dev' metrics, flat.
  score: float               # Higher is better: what selects the best step.
  summary: str               # One line for the progress bar.
  details: Any               # What the results file keeps for the best step.


@dataclasses.dataclass
class Best:
  score: float = -np.inf
  step: int = 0
  params: Any = None  # Host copy of the trainable parameters at that step.
  dev: Any = dataclasses.field(default_factory=dict)


def train(state, take_step: Callable, evaluate_dev: Callable[[Any], DevResult], *,
          num_steps: int, eval_every: int, train_config, writer, description: str):
  """Runs up to num_steps of take_step, evaluating dev every eval_every steps and at the last;
  stops early after train_config.patience evaluations without a better score (0: never).
  Returns (state, Best, steps run)."""
  best = Best()
  evaluations_without_gain = done = 0
  progress = tqdm.tqdm(total=num_steps, unit='step', dynamic_ncols=True, desc=description,
                       disable=not (jax.process_index() == 0
                                    and train_config.get('progress_bar', True)))
  for step in range(num_steps):
    state, step_metrics, task = take_step(state, step)
    done = step + 1
    progress.update(1)
    if done % train_config.log_every == 0 or done == num_steps:
      values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      if not np.isfinite(values['loss']):
        raise FloatingPointError(f'Non-finite {task or "fine-tuning"} loss at step {done}: lower '
                                 'config.optimizer.learning_rate.')
      writer.write(done, {f'{task}/{k}' if task else k: v for k, v in values.items()}, 'train')
      progress.set_postfix(**({'task': task} if task else {}), loss=f'{values["loss"]:.3f}',
                           refresh=False)
    if done % eval_every == 0 or done == num_steps:
      dev = evaluate_dev(state.params)
      writer.write(done, dev.metrics, 'dev')
      if not progress.disable:
        progress.write(f'step {done}: dev {dev.summary}')
      if dev.score > best.score:
        best = Best(dev.score, done, jax.device_get(state.params), dev.details)
        evaluations_without_gain = 0
      else:
        evaluations_without_gain += 1
        if train_config.patience and evaluations_without_gain >= train_config.patience:
          logging.info('Early stopping at step %d (best dev score %.4f at step %d).', done,
                       best.score, best.step)
          break
  progress.close()
  return state, best, done
