"""Training-step throughput of our encoder against HF Flax and PyTorch BERT (issue 5) or
PyTorch DeBERTa-v2 (issue 16).

  python -m experiments.benchmark --shapes mini,small,base --seq 128 \
      --systems ours,hf_flax,torch --out /tmp/bench
  python -m experiments.benchmark --family deberta --shapes mini,base --batch mini=16,base=8 \
      --systems ours,ours_emd:f32,torch --rounds 2 --out /tmp/bench_deberta

--family deberta builds DeBERTa-v3's architecture (configs/deberta.py) at the shapes' widths
in every system: ours without EMD as transformers' DebertaV2ForMaskedLM (legacy head) has
none, `ours_emd` with it, and no HF Flax (transformers has no Flax DeBERTa). The speed-up
column is then over the fastest PyTorch run (eager or compiled, f32 or bf16) of the shape.

Each (system, precision, shape, length) runs in its own process (`benchmarks/worker.py`),
so threads and memory never mix and the peak RSS is that run's own; with --rounds the whole list runs again, every other time in reversed
order, and each run's best round is tabled (results.json keeps every round). All systems get
the same batch, length and 15% masking; ours predicts at the masked positions only,
the references at every position (as run_mlm_flax does). MFU is model FLOPs/s over a
large matmul of the run's own precision measured with jax here (f32; bf16 x bf16 -> f32),
and over the accelerator's table peak when there is one; 'useful' counts the MLM head at
masked positions only. Prints a
markdown table; with --out writes results.json and tokens_per_s.png.

Every process (ours and the references alike) runs with glibc's malloc on transparent huge
pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; --no-hugepages turns it off). XLA on CPU
allocates its temporary buffers afresh every step, and with 4 KiB pages the first touch
of each page faults: at base shape that was 16% of our step (4.08 s -> 3.42 s measured).
"""
import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

from benchmarks import measure
from encoders.training import flops

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Batch sizes at length 128 (tokens per step are kept at other lengths).
DEFAULT_BATCH_AT_128 = {'tiny': 16, 'mini': 16, 'small': 8, 'medium': 8, 'base': 4, 'large': 2}
SYSTEM_ALIASES = {'ours': ('ours',), 'ours_emd': ('ours_emd',), 'hf_flax': ('hf_flax',), 'torch': ('torch', 'torch_compile'),
                  'torch_eager': ('torch',), 'torch_compile': ('torch_compile',)}
REFERENCE = 'hf_flax/f32'  # BERT's speed-ups are relative to this; DeBERTa's to the fastest torch run.
TORCH_SYSTEMS = ('torch', 'torch_compile')
SYSTEMS_OF_FAMILY = {'bert': ('ours', 'hf_flax', 'torch', 'torch_compile'),
                     'deberta': ('ours', 'ours_emd', 'torch', 'torch_compile')}
HUGEPAGES_TUNABLE = 'glibc.malloc.hugetlb=1'  # glibc >= 2.35; a no-op elsewhere.


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--family', default='bert', choices=measure.FAMILIES,
                      help='Architecture every system builds.')
  parser.add_argument('--shapes', default='mini,small,base', help='Sizes of configs/common.py.')
  parser.add_argument('--seq', default='128', help='Sequence lengths, comma separated.')
  parser.add_argument('--systems', default='ours,hf_flax,torch',
                      help=f'Of {", ".join(SYSTEM_ALIASES)} ("torch": eager and compiled), '
                           'each optionally with :f32 or :bf16 (else every --precisions).')
  parser.add_argument('--precisions', default='f32,bf16')
  parser.add_argument('--batch', default=None,
                      help='Rows per step, for every shape (16) or per shape (mini=16,base=8); '
                           'default: 16/8/4 for mini/small/base at length 128, same tokens per '
                           'step at other lengths.')
  parser.add_argument('--mask-rate', type=float, default=0.15)
  parser.add_argument('--warmup', type=int, default=2, help='Untimed steps after compilation.')
  parser.add_argument('--steps', type=int, default=10, help='Timed steps.')
  parser.add_argument('--max-time', type=float, default=60.0, help='Seconds of timed steps per run.')
  parser.add_argument('--override', action='append', default=[],
                      help='Field of config.model for ours, e.g. attention_dropout_rate=0.0.')
  parser.add_argument('--no-peak', action='store_true', help='Skip the matmul peak measurement.')
  parser.add_argument('--no-hugepages', action='store_true',
                      help='Run the processes with the default malloc (4 KiB pages).')
  parser.add_argument('--rounds', type=int, default=1,
                      help='Runs of the whole list, every other one in reversed order.')
  parser.add_argument('--timeout', type=float, default=900.0, help='Seconds per run.')
  parser.add_argument('--out', default=None, help='Directory for results.json and tokens_per_s.png.')
  parser.add_argument('--merge', nargs='+', default=None, metavar='RESULTS_JSON',
                      help='Run nothing: combine earlier results.json files into one table (and --out).')
  return parser.parse_args(argv)


def parse_override(text: str) -> tuple[str, object]:
  if '=' not in text:
    raise ValueError(f'--override {text!r}: use field=value, e.g. attention_dropout_rate=0.0.')
  key, value = text.split('=', 1)
  try:
    return key.strip(), json.loads(value)
  except json.JSONDecodeError:
    return key.strip(), value


def batch_of_shape(text: str | None, shapes: list[str]) -> dict[str, int | None]:
  """--batch: '16' for every shape, 'mini=16,base=8' per shape, or None (the defaults)."""
  if text is None or '=' not in text:
    return {shape: text and int(text) for shape in shapes}
  given = dict(item.split('=', 1) for item in text.split(','))
  if missing := [shape for shape in shapes if shape not in given]:
    raise ValueError(f'--batch {text!r}: no batch for shapes {missing}.')
  return {shape: int(given[shape]) for shape in shapes}


def specs_from_args(args) -> list[measure.Spec]:
  variants = []  # (system, precision)
  for item in args.systems.split(','):
    name, _, precision = item.partition(':')
    if name not in SYSTEM_ALIASES:
      raise ValueError(f'--systems: unknown system {name!r}; choose from {", ".join(SYSTEM_ALIASES)}.')
    if unbuilt := set(SYSTEM_ALIASES[name]) - set(SYSTEMS_OF_FAMILY[args.family]):
      raise ValueError(f'--systems: {sorted(unbuilt)} has no {args.family} model; choose from '
                       f'{", ".join(SYSTEMS_OF_FAMILY[args.family])}.')
    precisions = [precision] if precision else args.precisions.split(',')
    if bad := set(precisions) - {'f32', 'bf16'}:
      raise ValueError(f'--systems/--precisions: unknown precision {sorted(bad)}; choose f32 or bf16.')
    variants.extend((s, p) for s in SYSTEM_ALIASES[name] for p in precisions)
  overrides = dict(parse_override(o) for o in args.override)
  shapes = args.shapes.split(',')
  for shape in shapes:
    if shape not in DEFAULT_BATCH_AT_128:
      raise ValueError(f'--shapes: unknown shape {shape!r}; choose from {", ".join(DEFAULT_BATCH_AT_128)}.')
  batches = batch_of_shape(args.batch, shapes)
  specs = []
  for seq in (int(s) for s in args.seq.split(',')):
    for shape in shapes:
      batch = batches[shape] or max(1, DEFAULT_BATCH_AT_128[shape] * 128 // seq)
      for system, precision in variants:
        specs.append(measure.Spec(
            system=system, family=args.family, precision=precision, shape=shape, seq=seq,
            batch=batch, mask_rate=args.mask_rate, warmup=args.warmup, steps=args.steps,
            max_time=args.max_time, overrides=overrides if system.startswith('ours') else {}))
  return specs


def run_in_subprocess(spec: measure.Spec, timeout: float, hugepages: bool = True) -> dict:
  """Runs one spec in a fresh Python process; its own peak RSS comes back in the result."""
  load_before = os.getloadavg()[0]
  start = time.perf_counter()
  # Each worker chooses its own frameworks: torch_step sets USE_FLAX/USE_JAX=0 when imported,
  # and an import of it in this process (tests) must not take Flax from the hf_flax worker.
  env = {k: v for k, v in os.environ.items() if k not in ('USE_FLAX', 'USE_JAX')}
  tunables = [t for t in env.get('GLIBC_TUNABLES', '').split(':') if t]
  if hugepages and HUGEPAGES_TUNABLE not in tunables:  # Added to the caller's tunables.
    env['GLIBC_TUNABLES'] = ':'.join(tunables + [HUGEPAGES_TUNABLE])
  try:
    process = subprocess.run(
        [sys.executable, '-m', 'benchmarks.worker', json.dumps(dataclasses.asdict(spec))],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [l for l in process.stdout.splitlines() if l.startswith('RESULT ')]
    if lines:
      result = json.loads(lines[-1].removeprefix('RESULT '))
    else:
      result = dict(spec=dataclasses.asdict(spec), name=spec.name, status='error',
                    error=f'exit code {process.returncode}: {process.stderr[-2000:]}')
  except subprocess.TimeoutExpired:
    result = dict(spec=dataclasses.asdict(spec), name=spec.name, status='error',
                  error=f'timed out after {timeout:.0f} s')
  result.update(wall_s=time.perf_counter() - start, load_before=load_before)
  return result


# The measured matmul peak each precision's MFU is over: an f32 run against f32 matmuls, a
# bf16 run against bf16 x bf16 -> f32 matmuls (what its dots are), never one against the other.
PEAK_OF_PRECISION = {'f32': 'f32_gflops', 'bf16': 'bf16_acc_f32_gflops'}


def add_mfu(result: dict, peak: dict | None) -> None:
  """MFU of a finished run over the matmul peak of its own precision (and the accelerator's)."""
  if result['status'] != 'ok' or not peak or peak['status'] != 'ok':
    return
  tokens_per_s = result['tokens_per_s']['median']
  cpu_peak = peak[PEAK_OF_PRECISION[result['spec']['precision']]]['max'] * 1e9
  for kind in ('useful', 'executed'):
    result[f'mfu_{kind}'] = result[f'flops_per_token_{kind}'] * tokens_per_s / cpu_peak
  if peak['platform'] != 'cpu':
    table_peak = next((v for k, v in flops.PEAK_FLOPS
                       if k.lower() in peak['device_kind'].lower()), None)
    if table_peak:
      result['mfu_useful_accelerator'] = result['flops_per_token_useful'] * tokens_per_s / table_peak


REFERENCE_LABEL = {'bert': 'HF Flax f32', 'deberta': 'fastest PyTorch'}


def family_of(result: dict) -> str:
  return result['spec'].get('family', 'bert')  # Results stored before families were BERT's.


def is_reference(result: dict) -> bool:
  if family_of(result) == 'bert':
    return result['name'] == REFERENCE
  return result['spec']['system'] in TORCH_SYSTEMS


def best_rounds(results: list[dict]) -> list[dict]:
  """Per run (family, shape, length, batch, system, precision): its round with the most tokens/s."""
  best = {}
  for result in results:
    s = result['spec']
    key = (family_of(result), s['shape'], s['seq'], s['batch'], result['name'])
    rate = lambda r: r['tokens_per_s']['median'] if r['status'] == 'ok' else -1.0
    if key not in best or rate(result) > rate(best[key]):
      best[key] = result
  return list(best.values())


def markdown_table(results: list[dict]) -> str:
  """One row per result; the speed-up is over the shape's reference (REFERENCE_LABEL)."""
  reference = {}
  for r in results:
    if r['status'] == 'ok' and is_reference(r):
      key = (family_of(r), r['spec']['shape'], r['spec']['seq'])
      reference[key] = max(reference.get(key, 0.0), r['tokens_per_s']['median'])
  labels = {REFERENCE_LABEL[family_of(r)] for r in results if r['spec']['system'] != 'matmul_peak'}
  lines = ['| shape | seq | batch | system | tokens/s median [p10-p90] | step ms | CPU s/step '
           '| compile s | peak RSS MB | MFU useful | MFU executed | vs '
           f"{labels.pop() if len(labels) == 1 else 'reference'} |",
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in results:
    s = r['spec']
    if s['system'] == 'matmul_peak':
      continue
    family = family_of(r)
    shape = s['shape'] if family == 'bert' else f"{family} {s['shape']}"
    head = f"| {shape} | {s['seq']} | {s['batch']} | {r['name']} "
    if r['status'] != 'ok':
      lines.append(head + f"| {r['status']}: {r['error'].splitlines()[0][:80]} ||||||||")
      continue
    t = r['tokens_per_s']
    ref = reference.get((family, s['shape'], s['seq']))
    mfu = lambda k: f"{100 * r[k]:.1f}%" if k in r else '-'
    speedup = f"{t['median'] / ref:.2f}x" if ref else '-'
    lines.append(
        head + f"| {t['median']:,.0f} [{t['p10']:,.0f}-{t['p90']:,.0f}] "
        f"| {1000 * r['step_s']['median']:,.0f} | {r.get('cpu_s_per_step', {}).get('median', float('nan')):.2f} "
        f"| {r['compile_s']:.1f} | {r['peak_rss_mb']:,.0f} "
        f"| {mfu('mfu_useful')} | {mfu('mfu_executed')} | {speedup} |")
  return '\n'.join(lines)


def plot(results: list[dict], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ok = [r for r in results if r['status'] == 'ok' and r['spec']['system'] != 'matmul_peak']
  seqs = sorted({r['spec']['seq'] for r in ok})
  fig, axes = plt.subplots(1, max(len(seqs), 1), figsize=(7 * max(len(seqs), 1), 4.5), squeeze=False)
  for ax, seq in zip(axes[0], seqs):
    rows = [r for r in ok if r['spec']['seq'] == seq]
    shapes = list(dict.fromkeys(r['spec']['shape'] for r in rows))
    names = list(dict.fromkeys(r['name'] for r in rows))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
      for j, shape in enumerate(shapes):
        match = [r for r in rows if r['name'] == name and r['spec']['shape'] == shape]
        if match:
          t = match[0]['tokens_per_s']
          ax.bar(j + i * width, t['median'], width, color=f'C{i}', label=name if j == 0 else None,
                 yerr=[[t['median'] - t['p10']], [t['p90'] - t['median']]], capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes)
    ax.set_ylabel('tokens/s (median, p10-p90)')
    ax.set_title(f'training step, seq {seq}')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_json(args, peaks: list[dict], results: list[dict]) -> None:
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'results.json').write_text(json.dumps(
        dict(args=vars(args), cpu_count=os.cpu_count(), matmul_peaks=peaks, results=results),
        indent=1))


def main(argv=None):
  args = parse_args(argv)
  if args.merge:
    reports = [json.loads(pathlib.Path(f).read_text()) for f in args.merge]
    peaks = [p for r in reports for p in r['matmul_peaks']]
    results = [r for report in reports for r in report['results']]
    specs = []
  else:
    specs = specs_from_args(args)
    results, peaks = [], []
  if not args.no_peak and not args.merge:
    peaks.append(run_in_subprocess(measure.Spec(system='matmul_peak'), args.timeout,
                                   not args.no_hugepages))
  for round_index in range(args.rounds if specs else 0):
    for i, spec in enumerate(specs if round_index % 2 == 0 else specs[::-1]):
      print(f'[round {round_index}, {i + 1}/{len(specs)}] {spec.family} {spec.name} {spec.shape} '
            f'seq={spec.seq} batch={spec.batch}', file=sys.stderr, flush=True)
      results.append(dict(run_in_subprocess(spec, args.timeout, not args.no_hugepages),
                          round=round_index))
      if results[-1]['status'] != 'ok':
        print(f"  {results[-1]['status']}: {results[-1]['error'].splitlines()[0]}", file=sys.stderr)
      write_json(args, peaks, results)  # So far: an interrupted run keeps what it measured.
  if not args.no_peak and not args.merge:
    peaks.append(run_in_subprocess(measure.Spec(system='matmul_peak'), args.timeout,
                                   not args.no_hugepages))
  ok_peaks = [p for p in peaks if p['status'] == 'ok']
  peak = max(ok_peaks, key=lambda p: p['f32_gflops']['max']) if ok_peaks else None
  for result in results:
    add_mfu(result, peak)
  report = [f'`{shlex.join(["python", "-m", "experiments.benchmark", *(argv or sys.argv[1:])])}`', '']
  if peak:
    report.append(f"matmul peak (jax, 2048^3): f32 {peak['f32_gflops']['max']:.0f} GFLOP/s, "
                  f"bf16 with f32 accumulation {peak['bf16_acc_f32_gflops']['max']:.0f} GFLOP/s "
                  f"({peak['device_kind']}, {os.cpu_count()} cores)")
  loads = [r['load_before'] for r in results if 'load_before' in r]
  if loads:
    report.append(f'load average before each run: {min(loads):.1f}-{max(loads):.1f} '
                  f'(median {sorted(loads)[len(loads) // 2]:.1f})')
  best = best_rounds(results)
  report += ['', markdown_table(best)]
  print('\n'.join(report))
  write_json(args, peaks, results)
  if args.out:
    (pathlib.Path(args.out) / 'results.md').write_text('\n'.join(report) + '\n')
    plot(best, pathlib.Path(args.out) / 'tokens_per_s.png')
  return results


if __name__ == '__main__':
  main()
