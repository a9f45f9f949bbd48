"""Local paths and URLs (gs://bucket/run): how every file the project reads or writes is reached.

A local path goes through the os module as before; a URL goes through etils.epath (fsspec, and
gcsfs for gs://). A URL is never turned into a local path: os.path.abspath('gs://b/run') is
'<cwd>/gs:/b/run', a folder on this machine's disk. Libraries that only take a local file name
(safetensors' save_file/load_file, np.load's memory map, matplotlib's savefig) get bytes instead
when the path is a URL.
"""
import io
import json
import os
from typing import Any

import numpy as np
from etils import epath
from safetensors import numpy as safetensors_numpy


def is_url(path: str | os.PathLike) -> bool:
  return '://' in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """A local path with ~ expanded, made absolute (orbax needs that); a URL as given."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())


def write_json(path: str | os.PathLike, value: Any, **dump_options) -> None:
  epath.Path(path).write_text(json.dumps(value, **dump_options))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes a whole file that readers never see half written, creating its folder: a local file
  through a temporary sibling and a rename; an object store's upload is atomic already."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write = 'write_bytes' if isinstance(data, bytes) else 'write_text'
  if is_url(path):
    getattr(path, write)(data)
    return
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  getattr(tmp, write)(data)
  tmp.replace(path)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  with epath.Path(path).open('wb') as f:
    np.save(f, array)


def load_npy(path: str | os.PathLike) -> np.ndarray:
  """A local .npy memory-mapped read-only; a URL's read whole (there is nothing to map)."""
  if is_url(path):
    return np.load(io.BytesIO(epath.Path(path).read_bytes()))
  return np.load(path, mmap_mode='r')


def save_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str]) -> None:
  if is_url(path):
    epath.Path(path).write_bytes(safetensors_numpy.save(tensors, metadata=metadata))
  else:
    safetensors_numpy.save_file(tensors, path, metadata=metadata)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  if is_url(path):
    return safetensors_numpy.load(epath.Path(path).read_bytes())
  return safetensors_numpy.load_file(path)


def safetensors_names(path: str | os.PathLike) -> set[str]:
  """The tensor names of a .safetensors file, from its header alone (8-byte little-endian length,
  then that many bytes of JSON: {name: {dtype, shape, data_offsets}, '__metadata__': {...}})."""
  with epath.Path(path).open('rb') as f:
    length = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(length))
  return set(header) - {'__metadata__'}


def save_figure(figure, path: str | os.PathLike, **savefig_options) -> None:
  """matplotlib's figure.savefig to a local path or a URL (the format from the file's suffix)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format=epath.Path(path).suffix.lstrip('.'), **savefig_options)
  epath.Path(path).write_bytes(buffer.getvalue())
