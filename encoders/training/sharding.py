"""The device mesh, logical-axis rules, and the shardings of state and batches.

One mesh with axes ('data', 'fsdp', 'tensor'): `config.mesh.shape` gives their sizes
(one -1 takes the remaining devices). The encoder names its parameter and activation
axes logically (encoders/layers.py); `config.mesh.rules` maps them to mesh axes.
Shardings are computed from abstract shapes, never from materialised arrays.
"""
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from encoders.config import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # Mesh axes that split the batch.


def initialize_distributed(mesh_config) -> None:
  """Starts jax.distributed when configured or when a multi-process launcher is detected.

  `config.mesh.coordinator_address` set: uses it (with num_processes / process_id, or
  auto-detection for those left unset). Otherwise JAX's own detection runs when the
  environment says several processes exist (JAX_COORDINATOR_ADDRESS, SLURM with
  several tasks, a multi-worker TPU VM).
  """
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if mesh_config.coordinator_address:
    kwargs['coordinator_address'] = mesh_config.coordinator_address
    if mesh_config.num_processes > 0:
      kwargs['num_processes'] = mesh_config.num_processes
    if mesh_config.process_id >= 0:
      kwargs['process_id'] = mesh_config.process_id
  elif not (os.environ.get('JAX_COORDINATOR_ADDRESS')
            or int(os.environ.get('SLURM_NTASKS', '1')) > 1
            or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')):
    return
  jax.distributed.initialize(**kwargs)
  require_platform(mesh_config)  # Before the log line below starts JAX's backend.
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


PLATFORMS = ('any', 'cpu', 'gpu', 'tpu')
# JAX_PLATFORMS names (launch/ sets 'tpu' or 'cuda') -> jax.default_backend() names.
JAX_PLATFORM_NAMES = {'cpu': 'cpu', 'cuda': 'gpu', 'rocm': 'gpu', 'gpu': 'gpu', 'tpu': 'tpu'}


def required_platform(mesh_config) -> tuple[str, str]:
  """(platform the run must find, the setting that asks for it): config.mesh.platform, or, when
  that is 'any', a JAX_PLATFORMS naming one accelerator (the launchers set it, since they run
  modules whose flags differ); ('any', '') when neither asks."""
  platform = mesh_config.get('platform', 'any')
  if platform not in PLATFORMS:
    raise ConfigError(f'config.mesh.platform={platform!r}: choose one of {PLATFORMS}.')
  if platform != 'any':
    return platform, f'config.mesh.platform={platform!r}'
  value = os.environ.get('JAX_PLATFORMS', '')
  named = {JAX_PLATFORM_NAMES.get(name.strip()) for name in value.split(',') if name.strip()}
  if len(named) == 1 and None not in named and 'cpu' not in named:
    return named.pop(), f'JAX_PLATFORMS={value}'
  return 'any', ''


def require_platform(mesh_config) -> None:
  """Raises ConfigError, before any work, when JAX runs on other devices than the run asks for.

  A GPU or TPU run whose JAX is the CPU build (or whose accelerator is not visible) would
  otherwise train on the CPU, or fail deep inside JAX: with JAX_PLATFORMS=cuda and no CUDA
  plugin, JAX 0.10 raises a bare AssertionError.
  """
  platform, source = required_platform(mesh_config)
  if platform == 'any':
    return
  try:
    found = jax.default_backend()
  except (RuntimeError, AssertionError) as error:  # JAX_PLATFORMS names a backend JAX lacks.
    found = f'no backend ({type(error).__name__}: {str(error)[:300]})'
  if found == platform:
    return
  remedy = ''
  if platform in ('gpu', 'tpu'):
    launcher = 'tpu_vm.sh' if platform == 'tpu' else 'slurm_gpu.sbatch'
    remedy = (f' Install JAX for {platform.upper()}: pip install -r requirements-{platform}.txt '
              f'(launch/{launcher} does with SETUP=1).')
  raise ConfigError(
      f'{source} asks for {platform.upper()} devices, but JAX {jax.__version__} runs on '
      f'{found.upper() if found in PLATFORMS else found}.{remedy} To run on this machine as it '
      'is, set --config.mesh.platform=any and unset JAX_PLATFORMS.')


def mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  """Resolves the -1 in `config.mesh.shape` and checks the product against the devices."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ConfigError(f'config.mesh.shape={shape}: give one size per axis {MESH_AXES}.')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f'config.mesh.shape={shape}: sizes must be positive, with at most one -1.')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f'config.mesh.shape={shape}: {num_devices} devices are not divisible '
                        f'by the fixed axes ({known}).')
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ConfigError(f'config.mesh.shape={shape} needs {int(np.prod(shape))} devices, '
                      f'but {num_devices} are available.')
  return shape


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices, which must be of
  the platform the run asks for: require_platform). Analysis tools that pass their own devices
  (reload, validate) run anywhere."""
  if devices is None:
    require_platform(mesh_config)
    devices = jax.devices()
  shape = mesh_shape(mesh_config.shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def rules(mesh_config) -> tuple[tuple[str, Any], ...]:
  """config.mesh.rules as a tuple of (logical name, mesh axes) pairs, checked."""
  result = []
  for rule in mesh_config.rules:
    logical, mesh_axes = rule
    named = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    unknown = [a for a in named if a not in MESH_AXES]
    if unknown:
      raise ConfigError(f'config.mesh.rules: rule {tuple(rule)} names mesh axes {unknown}; '
                        f'the mesh axes are {MESH_AXES}.')
    result.append((logical, tuple(mesh_axes) if isinstance(mesh_axes, (list, tuple))
                   else mesh_axes))
  return tuple(result)


def _mesh_axes(axis_rules, logical: str) -> tuple[str, ...]:
  """The mesh axes of the first rule naming `logical` (none: ())."""
  mesh_axes = next((axes for name, axes in axis_rules if name == logical), None)
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())


def _size(mesh: Mesh, mesh_axes: tuple[str, ...]) -> int:
  return int(np.prod([mesh.shape[axis] for axis in mesh_axes]))


def check_divisible(sizes, mesh_config, mesh: Mesh) -> None:
  """Raises ConfigError for the first (field, size, logical axis) of `sizes` (a model config's
  sharded_sizes) that the mesh axes of its logical axis do not divide: jit refuses such uneven
  shardings, deep inside JAX."""
  axis_rules = rules(mesh_config)
  for field, size, logical in sizes:
    mesh_axes = _mesh_axes(axis_rules, logical)
    if size % _size(mesh, mesh_axes):
      raise ConfigError(
          f'{field}={size} is not divisible by {_size(mesh, mesh_axes)}, the size of the mesh '
          f'axes {mesh_axes} that config.mesh.rules split {logical!r} over (config.mesh.shape='
          f'{tuple(mesh_config.shape)}).')


# Logical axes whose size may not divide their mesh axes: the dimension is then replicated over
# them. The vocabulary (BERT's 30,522 tokens over tensor=4): the tied decoder pads it inside
# the step and splits its matmul there (encoders/layers.py: Embeddings.attend).
UNEVEN_REPLICATED = ('vocab',)


def logical_shardings(abstract_boxed_tree, mesh: Mesh, axis_rules) -> Any:
  """Abstract tree with nn.Partitioned leaves -> NamedShardings (unboxed tree structure).

  A dimension of an UNEVEN_REPLICATED logical axis that its mesh axes do not divide is
  replicated (jit refuses uneven shardings); every other one must divide (check_divisible).
  """
  def spec(leaf):
    if not isinstance(leaf, nn.Partitioned):
      return nn.get_partition_spec(leaf)
    return PartitionSpec(*(
        None if name in UNEVEN_REPLICATED
        and leaf.value.shape[i] % _size(mesh, _mesh_axes(axis_rules, name)) else name
        for i, name in enumerate(leaf.names)))
  specs = jax.tree.map(spec, abstract_boxed_tree,
                       is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  return nn.logical_to_mesh_sharding(specs, mesh, axis_rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch arrays: the leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def process_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a global batch every process holds whole (fine-tuning
  builds each batch from the same index stream everywhere): what `global_batch` expects."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return rows
  size = len(next(iter(rows.values())))
  if size % count:
    raise ValueError(f'A global batch of {size} rows does not split over {count} processes.')
  share = size // count
  return {name: value[index * share:(index + 1) * share] for name, value in rows.items()}


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows of the global batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}
