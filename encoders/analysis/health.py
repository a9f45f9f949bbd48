"""Checkpoint health: parameter and update norms per layer across the saved steps of a run, the
same between two runs, and the validation MLM loss along the line between two checkpoints."""
import re

import flax
import jax
import numpy as np

from encoders.analysis import files, subject as subject_lib, token_loss
from encoders.training import checkpointing

_LAYER = re.compile(r'layer_\d+')


def group_of(path: tuple[str, ...]) -> str:
  """A parameter's group: its path up to its `layer_{i}` ('encoder/layers/layer_0'), else its
  first two names ('encoder/embeddings', 'mlm_head/transform')."""
  for i, name in enumerate(path):
    if _LAYER.fullmatch(name):
      return '/'.join(path[:i + 1])
  return '/'.join(path[:2])


def group_norms(params: dict) -> dict[str, float]:
  """{group: L2 norm of all its parameters}, plus 'total'."""
  squares = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    group = group_of(path)
    squares[group] = squares.get(group, 0.0) + float(np.sum(np.square(value, dtype=np.float64)))
  squares['total'] = sum(squares.values())
  return {group: float(np.sqrt(total)) for group, total in squares.items()}


def difference(params_a: dict, params_b: dict) -> dict:
  """params_b - params_a, leaf by leaf (the two trees must have the same structure)."""
  return jax.tree.map(lambda a, b: np.asarray(b, np.float64) - np.asarray(a, np.float64),
                      params_a, params_b)


def interpolate(params_a: dict, params_b: dict, alpha: float) -> dict:
  """(1 - alpha) a + alpha b; alpha 0 and 1 give a and b exactly."""
  if alpha == 0:
    return params_a
  if alpha == 1:
    return params_b
  return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(a.dtype), params_a, params_b)


def saved_steps(workdir: str) -> list[int]:
  manager = checkpointing.make_manager(workdir, read_only=True)
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def run_norms(workdir: str, steps: list[int] | None = None) -> list[dict]:
  """Per saved step: {'step', 'norms': group norms, 'update_norms': norms of the change from the
  previous saved step (None at the first)}."""
  rows, previous = [], None
  for step in steps or saved_steps(workdir):
    params = subject_lib.load(workdir, step).params
    rows.append(dict(step=step, norms=group_norms(params),
                     update_norms=None if previous is None else
                     group_norms(difference(previous, params))))
    previous = params
  return rows


def compare(subject_a: subject_lib.Subject, subject_b: subject_lib.Subject) -> dict:
  """Per group: both norms, the norm of the difference and its ratio to a's norm."""
  norms_a, norms_b = group_norms(subject_a.params), group_norms(subject_b.params)
  distance = group_norms(difference(subject_a.params, subject_b.params))
  return {group: dict(norm_a=norms_a[group], norm_b=norms_b[group], distance=distance[group],
                      relative=distance[group] / max(norms_a[group], 1e-12))
          for group in norms_a}


def interpolation_losses(subject_a: subject_lib.Subject, subject_b: subject_lib.Subject,
                         texts: list[str], alphas, **loss_kwargs) -> list[float]:
  """Mean masked-LM loss of the texts at each alpha of (1 - alpha) a + alpha b."""
  losses = []
  for alpha in alphas:
    params = interpolate(subject_a.params, subject_b.params, float(alpha))
    point = subject_lib.Subject(f'alpha={alpha}', subject_a.family, subject_a.model, params,
                                subject_a.tokenizer)
    losses.append(token_loss.mean_loss(token_loss.token_losses(point, texts, **loss_kwargs)))
  return losses


def plot_norms(rows: list[dict], title: str):
  """Parameter norms (left) and update norms (right) per group against the step."""
  fig, axes = files.figure(1, 2, size=(12, 4.2))
  groups = [g for g in rows[0]['norms'] if g != 'total']
  steps = [row['step'] for row in rows]
  for group in groups:
    axes[0, 0].plot(steps, [row['norms'][group] for row in rows], '-o', ms=3, label=group)
    updated = [row for row in rows if row['update_norms']]
    axes[0, 1].plot([row['step'] for row in updated],
                    [row['update_norms'][group] for row in updated], '-o', ms=3, label=group)
  axes[0, 0].set_title('parameter norm', fontsize=10)
  axes[0, 1].set_title('update norm since the previous saved step', fontsize=10)
  for ax in axes[0]:
    ax.set_xlabel('step')
    ax.set_yscale('log')
  axes[0, 1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc='upper left')
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def plot_interpolation(alphas, losses: list[float], name_a: str, name_b: str):
  fig, axes = files.figure(size=(6, 4))
  ax = axes[0, 0]
  ax.plot(alphas, losses, '-o')
  ax.set_xlabel(f'alpha: (1 - alpha) {name_a} + alpha {name_b}')
  ax.set_ylabel('validation MLM loss (nats)')
  ax.set_title('loss along the line between two checkpoints', fontsize=10)
  return fig


def write_run(workdir: str, out: str, steps: list[int] | None = None) -> list[dict]:
  """norms.json and norms.png of the saved steps of `workdir`."""
  folder = files.folder(out)
  rows = run_norms(workdir, steps)
  files.save_json(folder / 'norms.json', rows)
  files.save_figure(folder / 'norms.png', plot_norms(rows, f'{workdir}: norms per layer'))
  return rows


def write_comparison(subject_a: subject_lib.Subject, subject_b: subject_lib.Subject, out: str,
                     texts: list[str], num_alphas: int = 11, **loss_kwargs) -> dict:
  """compare.json (norms and distances per group), and interpolation.json/.png (validation loss)
  when the two share a tokenizer (two runs with their own tokenizers: the comparison only)."""
  folder = files.folder(out)
  comparison = compare(subject_a, subject_b)
  files.save_json(folder / 'compare.json', dict(a=subject_a.name, b=subject_b.name,
                                                groups=comparison))
  if subject_a.tokenizer.fingerprint != subject_b.tokenizer.fingerprint:
    return dict(groups=comparison)
  alphas = np.linspace(0.0, 1.0, num_alphas).round(4).tolist()
  losses = interpolation_losses(subject_a, subject_b, texts, alphas, **loss_kwargs)
  files.save_json(folder / 'interpolation.json', dict(a=subject_a.name, b=subject_b.name,
                                                      alphas=alphas, losses=losses))
  files.save_figure(folder / 'interpolation.png',
                    plot_interpolation(alphas, losses, subject_a.name, subject_b.name))
  return dict(groups=comparison, alphas=alphas, losses=losses)
