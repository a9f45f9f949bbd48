"""Sentence-embedding inference throughput on all-MiniLM-L6-v2: ours against PyTorch (issue 19).

  python -m experiments.benchmark_inference --out docs/sentence/inference

Runs every (system, precision) at every batch size and length in its own process
(benchmarks/inference.py, glibc malloc on huge pages as experiments/benchmark.py runs them),
`--rounds` times in alternating order, and keeps each run's best round (the median step of
its least disturbed round: the machine may be shared). Prints a markdown table of sequences/s
with each run's speed over the fastest PyTorch run (eager, compiled, bf16 autocast, bf16
weights or sentence-transformers) of the same shape; --out writes results.json and results.md
there.
"""
import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import inference, measure

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
HUGEPAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
RUNS = ('ours/f32', 'ours/bf16', 'ours/bf16_weights', 'torch/f32', 'torch/bf16',
        'torch/bf16_weights', 'torch_compile/f32', 'torch_compile/bf16',
        'torch_compile/bf16_weights', 'sentence_transformers/f32')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs', default=','.join(RUNS), help='system/precision, comma separated.')
  parser.add_argument('--batches', default='1,32')
  parser.add_argument('--lengths', default='128,512')
  parser.add_argument('--rounds', type=int, default=2, help='Repeats of the grid, order alternating.')
  parser.add_argument('--warmup', type=int, default=3, help='Untimed calls after the first.')
  parser.add_argument('--steps', type=int, default=20, help='Timed calls.')
  parser.add_argument('--max-time', type=float, default=20.0, help='Seconds of timed calls per run.')
  parser.add_argument('--timeout', type=float, default=900.0, help='Seconds per process.')
  parser.add_argument('--out', default=None, help='Folder for results.json and results.md.')
  return parser.parse_args(argv)


def run_in_subprocess(spec: measure.Spec, timeout: float) -> dict:
  """One run in a fresh process, with its own torch.compile cache (a run killed mid-compile
  leaves a broken one behind, and a warm one would hide the compile time)."""
  env = dict(os.environ, GLIBC_TUNABLES=HUGEPAGES_TUNABLE, USE_FLAX='0',
             TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix='benchmark_inductor_'))
  load_before = os.getloadavg()[0]
  try:
    process = subprocess.run([sys.executable, '-m', 'benchmarks.inference',
                              json.dumps(dataclasses.asdict(spec))], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout, check=False)
    lines = [l for l in process.stdout.splitlines() if l.startswith('RESULT ')]
    result = (json.loads(lines[-1].removeprefix('RESULT ')) if lines else
              dict(name=spec.name, status='error', error=process.stderr[-2000:]))
  except subprocess.TimeoutExpired:
    result = dict(name=spec.name, status='error', error=f'timed out after {timeout:.0f} s')
  return dict(result, spec=dataclasses.asdict(spec), load_before=load_before)


def best_rounds(results: list[dict]) -> list[dict]:
  """Per (run, batch, length): the round with the most sequences/s (the least disturbed)."""
  best = {}
  for result in results:
    key = (result['name'], result['spec']['batch'], result['spec']['seq'])
    if result['status'] == 'ok' and (key not in best or
                                     result['sequences_per_s'] > best[key]['sequences_per_s']):
      best[key] = result
    best.setdefault(key, result)
  return list(best.values())


def markdown_table(results: list[dict]) -> str:
  """Sequences/s per run and shape, with the speed over the shape's fastest PyTorch run."""
  lines = ['| batch | length | run | sequences/s | ms per batch | vs fastest PyTorch |',
           '|---:|---:|---|---:|---:|---:|']
  for (batch, seq), group in itertools.groupby(
      sorted(results, key=lambda r: (r['spec']['batch'], r['spec']['seq'])),
      key=lambda r: (r['spec']['batch'], r['spec']['seq'])):
    group = list(group)
    torch_rates = [r['sequences_per_s'] for r in group
                   if r['status'] == 'ok' and not r['name'].startswith('ours')]
    fastest = max(torch_rates, default=None)
    for r in sorted(group, key=lambda r: -r.get('sequences_per_s', 0)):
      if r['status'] != 'ok':
        lines.append(f'| {batch} | {seq} | {r["name"]} | {r["status"]}: {r["error"][:80]} | | |')
        continue
      ratio = f'{r["sequences_per_s"] / fastest:.2f}x' if fastest else ''
      lines.append(f'| {batch} | {seq} | {r["name"]} | {r["sequences_per_s"]:.1f} | '
                   f'{1000 * r["step_s"]["median"]:.1f} | {ratio} |')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  runs = [tuple(r.split('/')) for r in args.runs.split(',')]
  for system, precision in runs:
    if system not in inference.SYSTEMS or precision not in inference.PRECISIONS:
      raise SystemExit(f'Unknown run {system}/{precision}; systems: {inference.SYSTEMS}, '
                       f'precisions: {inference.PRECISIONS}.')
  specs = [measure.Spec(system=system, precision=precision, shape='minilm', seq=int(seq),
                        batch=int(batch), warmup=args.warmup, steps=args.steps,
                        max_time=args.max_time)
           for batch in args.batches.split(',') for seq in args.lengths.split(',')
           for system, precision in runs]
  started = time.time()
  results = []
  for round_index in range(args.rounds):
    for spec in (specs if round_index % 2 == 0 else specs[::-1]):
      result = run_in_subprocess(spec, args.timeout)
      result['round'] = round_index
      results.append(result)
      rate = result.get('sequences_per_s')
      print(f'round {round_index}: {spec.name} batch {spec.batch} x {spec.seq}: '
            + (f'{rate:.1f} sequences/s' if rate else result.get('error', '')[:200]), flush=True)
  table = markdown_table(best_rounds(results))
  print(table)
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'results.md').write_text(table + '\n')
    (out / 'results.json').write_text(json.dumps(dict(
        command=' '.join(['python -m experiments.benchmark_inference'] + (argv or sys.argv[1:])),
        started=time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
        wall_s=time.time() - started, cpu_count=os.cpu_count(), results=results), indent=1))


if __name__ == '__main__':
  main()
