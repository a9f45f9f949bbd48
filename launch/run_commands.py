"""Runs a list of commands (one per line, e.g. an ablation's `--mode=print` output) as jobs.

  python -m experiments.ablate_nsp --scale=paper --out=gs://BUCKET/nsp --mode=print > jobs.txt
  python launch/run_commands.py jobs.txt --parallel=2                # here, 2 at a time
  python launch/run_commands.py jobs.txt --slurm --nodes=1           # one sbatch job each
  python launch/run_commands.py jobs.txt --tpu=tpu-a,tpu-b --zone=Z  # through launch/tpu_vm.sh
  python -m experiments.ablate_nsp --scale=paper --out=gs://BUCKET/nsp   # then: the table

Blank lines and lines starting with '#' are skipped; '-' reads the list from stdin. Local jobs
run as written. SLURM and TPU jobs take the module and arguments after `python -m` and run
them through launch/slurm_gpu.sbatch (sbatch returns at once) or launch/tpu_vm.sh (each TPU
VM runs its share of the jobs one after another; the VMs run in parallel). --dry-run (or DRY_RUN=1)
prints the commands instead of running them: check a list before --parallel starts paper-scale
training here. Exits 1, naming the failed jobs, if any job fails;
the sweep's result files make a rerun skip the finished ones.
"""
import argparse
import concurrent.futures
import os
import shlex
import subprocess
import sys
import threading

LAUNCH_DIR = os.path.dirname(os.path.abspath(__file__))


def read_commands(path: str) -> list[list[str]]:
  with (sys.stdin if path == '-' else open(path)) as f:
    lines = [line.strip() for line in f]
  return [shlex.split(line) for line in lines if line and not line.startswith('#')]


def module_and_args(command: list[str]) -> list[str]:
  """`... python -m MODULE ARGS` -> [MODULE, *ARGS]; what the cluster launchers take."""
  if '-m' not in command[:-1]:
    raise ValueError(f'{shlex.join(command)}: SLURM and TPU jobs need a `python -m MODULE ...` '
                     'command (what the ablations print).')
  return command[command.index('-m') + 1:]


def job_commands(commands: list[list[str]], args) -> list[list[list[str]]]:
  """The commands per worker queue: each queue runs its commands one after another."""
  if args.slurm:
    sbatch = ['sbatch', f'--nodes={args.nodes}', *shlex.split(args.sbatch_args),
              os.path.join(LAUNCH_DIR, 'slurm_gpu.sbatch')]
    return [[[*sbatch, *module_and_args(c)] for c in commands]]
  if args.tpu:
    names = args.tpu.split(',')
    return [[[os.path.join(LAUNCH_DIR, 'tpu_vm.sh'), name, args.zone, *module_and_args(c)]
             for c in commands[i::len(names)]] for i, name in enumerate(names)]
  return [commands[i::args.parallel] for i in range(min(args.parallel, len(commands)))]


PRINT_LOCK = threading.Lock()  # Queues print from their own threads: one whole line at a time.


def run_queue(queue: list[list[str]], dry_run: bool) -> list[str]:
  """Runs the queue's commands in order; returns the failed ones."""
  failed = []
  for command in queue:
    with PRINT_LOCK:
      print(shlex.join(command), flush=True)
    if not dry_run and subprocess.run(command).returncode != 0:
      failed.append(shlex.join(command))
  return failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('commands', help="File with one command per line, or '-' for stdin.")
  where = parser.add_mutually_exclusive_group()
  where.add_argument('--parallel', type=int, default=1, help='Local jobs at a time.')
  where.add_argument('--slurm', action='store_true', help='Submit each as a SLURM job.')
  where.add_argument('--tpu', help='Comma-separated TPU VM names (launch/tpu_vm.sh).')
  parser.add_argument('--zone', help='Zone of the TPU VMs.')
  parser.add_argument('--nodes', type=int, default=1, help='SLURM nodes per job.')
  parser.add_argument('--sbatch_args', default='', help="Extra sbatch flags, e.g. '--time=4:00:00'.")
  parser.add_argument('--dry-run', '--dry_run', action='store_true',
                      help='Print each command as it would run (sbatch / tpu_vm.sh included) and '
                           'run nothing; DRY_RUN=1 does the same.')
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f'--parallel={args.parallel}: must be at least 1.')
  if args.tpu and not args.zone:
    parser.error('--tpu needs --zone.')
  try:
    queues = job_commands(read_commands(args.commands), args)
  except ValueError as error:
    parser.error(str(error))
  dry_run = args.dry_run or os.environ.get('DRY_RUN', '0') == '1'
  with concurrent.futures.ThreadPoolExecutor(max(len(queues), 1)) as pool:
    failed = [c for result in pool.map(lambda q: run_queue(q, dry_run), queues) for c in result]
  for command in failed:
    print(f'FAILED: {command}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
