"""Writing analysis outputs to a local folder or a bucket (gs://...) through encoders/paths.py."""
import json

from etils import epath

from encoders import paths


def folder(path: str) -> epath.Path:
  """`path` as an epath, created if missing."""
  out = epath.Path(path)
  out.mkdir(parents=True, exist_ok=True)
  return out


def save_json(path: epath.Path, value) -> None:
  paths.write_atomic(path, json.dumps(value, indent=1) + '\n')


def save_figure(path: epath.Path, figure) -> None:
  """A matplotlib figure (in the format of the file's suffix: .png), then closed."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths.save_figure(figure, path, dpi=110, bbox_inches='tight')
  plt.close(figure)


def markdown_table(header: list[str], rows: list[list]) -> str:
  """Rows of values as a markdown table; floats with 3 decimals."""
  cell = lambda v: f'{v:.3f}' if isinstance(v, float) else str(v)
  lines = [header, ['---'] * len(header)] + [[cell(v) for v in row] for row in rows]
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines) + '\n'


def figure(rows: int = 1, cols: int = 1, size=(6, 4), **kwargs):
  """(figure, axes) with the non-interactive Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt.subplots(rows, cols, figsize=size, squeeze=False, **kwargs)
