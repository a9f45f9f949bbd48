"""Shared helpers of the training tests: a tiny config, subprocess runs of the entry point, and
training on a mesh inside an 8-device child process."""
import json
import os
import subprocess
import sys
import tempfile

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model and batch small enough for a few CPU steps per second.
TINY = {
    'model.num_layers': 1, 'model.hidden_size': 32, 'model.num_heads': 2,
    'model.intermediate_size': 64, 'model.vocab_size': 128, 'model.max_position_embeddings': 64,
    'data.seq_length': 32, 'data.input_format': 'segment_pair_nsp',  # NSP head in every run.
    'train.batch_size': 8, 'train.num_steps': 12,
    'train.synthetic_data': True, 'train.progress_bar': False, 'train.log_every': 1,
    'train.eval_every': 1000, 'train.eval_steps': 1, 'optimizer.warmup_steps': 2,
    'checkpoint.every_steps': 3,
}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """configs/bert.py:tiny with TINY and `overrides` ('section__field'=value) applied."""
  from encoders.configs import bert  # pylint: disable=g-import-not-at-top
  config = bert.get_config('tiny')
  for key, value in {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def flags(**overrides) -> list[str]:
  """Command-line overrides for experiments.pretrain: TINY plus `overrides`."""
  values = {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}
  return [f'--config.{k}={v}' for k, v in values.items()]


def env(num_devices: int = 1) -> dict[str, str]:
  """Environment of a subprocess: `num_devices` CPU devices, compilations cached across runs."""
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
              JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), 'encoders_test_jax_cache'),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def pretrain(workdir: str, *extra: str, num_devices: int = 1, config: str = 'configs/bert.py:tiny',
             **overrides) -> subprocess.Popen:
  """Starts `python -m experiments.pretrain --config <config>` (TINY's overrides) in a subprocess."""
  command = [sys.executable, '-m', 'experiments.pretrain', '--config', config,
             '--workdir', workdir, *flags(**overrides), *extra]
  return subprocess.Popen(command, cwd=ROOT, env=env(num_devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def train_metric(workdir: str, name: str) -> dict[int, float]:
  """{step: train/<name>} from <workdir>/metrics.jsonl, for the steps that logged it."""
  from encoders.training import metrics  # pylint: disable=g-import-not-at-top
  key = f'train/{name}'
  return {r['step']: r[key] for r in metrics.read_jsonl(workdir) if key in r}


def train_losses(workdir: str) -> dict[int, float]:
  """{step: train loss} from <workdir>/metrics.jsonl."""
  return train_metric(workdir, 'loss')


def train_on_mesh(config, devices=None, steps: int = 3, start_params=None):
  """Trains `config` (its config.mesh.shape over `devices`) on `steps` synthetic batches.

  `start_params` (host arrays) replace the initial parameters. Returns (the metric sums of
  each step as host arrays, the final state, the trainer's Setup).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from encoders.training import sharding, synthetic, trainer  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config.mesh, devices)
  run = trainer.setup(config, mesh)
  state = run.init_state(config.seed)
  if start_params is not None:
    state = state.replace(params=jax.tree.map(lambda x, s: jax.device_put(x, s.sharding),
                                              start_params, state.params))
  batches = synthetic.SyntheticIterator(config, 'train', pairs=run.sentence_head)
  step_sums = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
    for _ in range(steps):
      state, sums = run.step_fn(state, sharding.global_batch(next(batches), mesh))
      step_sums.append(jax.device_get(sums))
  return step_sums, state, run


def adam_with_and_without_rtd(make_objective, params, batches: list, learning_rate: float = 1e-2):
  """An RTD pair's `params` trained one Adam step per batch with lambda = 50 and with lambda = 0
  (one compiled step for both; `make_objective(rtd_weight)` builds the objective). Returns
  {lambda: final params} on the host: what each loss reaches shows in what differs."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, batch, rtd_weight, rng):
    objective = make_objective(rtd_weight)
    grads = jax.grad(lambda p: objective.loss(p, batch, rng, objective.denominators(batch),
                                              deterministic=True)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  final = {}
  for rtd_weight in (50.0, 0.0):
    trained, opt_state = params, tx.init(params)
    for i, batch in enumerate(batches):
      trained, opt_state = step(trained, opt_state, batch, rtd_weight, jax.random.key(i))
    final[rtd_weight] = jax.device_get(trained)
  return final


def print_report(report: dict) -> None:
  """What a child process hands back to `child_report`."""
  print('REPORT ' + json.dumps(report))


def child_report(module: str, function: str, num_devices: int = 8) -> dict:
  """Runs tests.<module>.<function>() in a subprocess with `num_devices` CPU devices (XLA_FLAGS
  must be set before JAX starts) and returns the dict it printed with `print_report`."""
  result = subprocess.run(
      [sys.executable, '-c', f'from tests import {module}; {module}.{function}()'],
      cwd=ROOT, env=env(num_devices), capture_output=True, text=True, timeout=600)
  lines = [l for l in result.stdout.splitlines() if l.startswith('REPORT ')]
  assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-5000:]
  return json.loads(lines[-1][len('REPORT '):])
