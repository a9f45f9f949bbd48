"""One benchmark run in this process: `python -m benchmarks.worker '<Spec as JSON>'`.

Prints one line `RESULT <json>`. A missing reference library gives status
'not installed' instead of a traceback; the peak RSS is this process's own.
"""
import importlib
import json
import os
import platform
import sys
import time
import traceback

from benchmarks import measure

BUILDERS = {'ours': 'benchmarks.ours_step', 'ours_emd': 'benchmarks.ours_step',
            'hf_flax': 'benchmarks.hf_flax_step',
            'torch': 'benchmarks.torch_step', 'torch_compile': 'benchmarks.torch_step'}
REFERENCE_LIBRARIES = {'hf_flax': ('transformers',), 'torch': ('torch', 'transformers'),
                       'torch_compile': ('torch', 'transformers')}


def matmul_peak(size: int = 2048, repeats: int = 10) -> dict:
  """GFLOP/s of a [size, size] @ [size, size] matmul with jax: f32, and bf16 with f32 accumulation."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  result = {'device_kind': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform}
  for name, dtype in (('f32', jnp.float32), ('bf16_acc_f32', jnp.bfloat16)):
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, b).block_until_ready()
      rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    result[f'{name}_gflops'] = measure.percentile_stats(rates)
  return result


def flops(spec: measure.Spec, batch, head_positions: int) -> dict:
  """Training FLOPs per token (encoders/training/flops.py's count) as executed (MLM head where the
  system runs it) and useful (MLM head at masked positions only). DeBERTa adds its c2p and
  p2c scores (each one more [length, length] product over the head dims per layer, as the
  c2c scores; the relative table's projections and EMD are not counted)."""
  from encoders.config import EncoderConfig  # pylint: disable=g-import-not-at-top
  from encoders.training import flops as flops_lib  # pylint: disable=g-import-not-at-top

  model = EncoderConfig(**measure.model_fields(spec))
  masked_per_row = float(batch['masked_weights'].sum()) / spec.batch
  position_terms = 2 if spec.family == 'deberta' else 0  # configs/deberta.py: c2p and p2c.
  per_token = lambda predictions: flops_lib.flops_per_sequence(
      model, spec.seq, predictions, sentence_head=False) / spec.seq + (
          6 * position_terms * model.num_layers * spec.seq * model.hidden_size)
  return dict(flops_per_token_executed=per_token(head_positions),
              flops_per_token_useful=per_token(masked_per_row))


def run(spec: measure.Spec) -> dict:
  result = dict(spec=vars(spec).copy(), name=spec.name, python=platform.python_version(),
                glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''))  # The malloc it ran with.
  if spec.system == 'matmul_peak':
    return dict(result, status='ok', **matmul_peak(), peak_rss_mb=measure.peak_rss_mb())
  for library in REFERENCE_LIBRARIES.get(spec.system, ()):
    if importlib.util.find_spec(library) is None:
      return dict(result, status='not installed', error=f'{library} is not installed '
                  '(pip install -r requirements-test.txt)')
  batch = measure.synthetic_batch(spec)
  builder = importlib.import_module(BUILDERS[spec.system])
  result['rss_before_build_mb'] = measure.peak_rss_mb()
  step, compile_s, info = builder.build(spec, batch)
  timing = measure.time_steps(step, spec)
  if compile_s is None:  # Compiled inside the first call: what it took beyond a normal step.
    compile_s = max(timing['first_step_s'] - timing['step_s']['median'], 0.0)
  result.update(status='ok', compile_s=compile_s, **timing, **info,
                **flops(spec, batch, info['head_positions']), peak_rss_mb=measure.peak_rss_mb())
  return result


def main(argv):
  spec = measure.Spec(**json.loads(argv[1]))
  try:
    result = run(spec)
  except Exception as e:  # pylint: disable=broad-except
    result = dict(spec=vars(spec), name=spec.name, status='error',
                  error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-3000:])
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  main(sys.argv)
