"""The launchers' dry runs print the commands they would run, with the arguments intact; they
install the accelerator build of JAX and refuse to fall back to the CPU."""
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys

from tests import training_util

ARGS = ['--config', 'configs/bert.py:size=base', '--workdir', 'gs://bucket/a run',
        '--config.optimizer.learning_rate=2e-4']


def _dry_run(script, *args, **env):
  result = subprocess.run(['bash', os.path.join('launch', script), *args], cwd=training_util.ROOT,
                          env=dict(os.environ, DRY_RUN='1', **env), capture_output=True, text=True)
  return result.returncode, [shlex.split(line) for line in result.stdout.splitlines()], result.stderr


def test_tpu_vm_runs_the_experiment_on_every_worker():
  rc, commands, err = _dry_run('tpu_vm.sh', 'my-tpu', 'us-central2-b', 'experiments.pretrain', *ARGS,
                               PROJECT='proj')
  assert rc == 0, err
  describe, ssh = commands
  assert describe[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe']
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
  assert '--worker=all' in ssh and ssh[ssh.index('--zone') + 1] == 'us-central2-b'
  assert ssh[ssh.index('--project') + 1] == 'proj'
  remote = shlex.split(ssh[ssh.index('--command') + 1])
  python = remote.index('python')
  assert remote[python:] == ['python', '-m', 'experiments.pretrain', *ARGS]
  assert any(word.startswith('JAX_COORDINATOR_ADDRESS=') for word in remote[:python])
  # No CPU fallback: JAX may use the TPU only (encoders/training/sharding.py turns its absence into
  # a config error at start).
  assert 'JAX_PLATFORMS=tpu' in remote[:python]


def test_tpu_vm_setup_ships_the_checkout_and_installs_jax_for_tpu():
  rc, commands, err = _dry_run('tpu_vm.sh', 'tpu', 'zone', 'experiments.pretrain', *ARGS, SETUP='1')
  assert rc == 0, err
  assert commands[0][:3] == ['git', '-C', training_util.ROOT] and 'archive' in commands[0]
  assert commands[1][4] == 'scp' and '--worker=all' in commands[1]
  install = shlex.split(commands[2][commands[2].index('--command') + 1])
  assert install[-5:] == ['pip', 'install', '-q', '-r', 'requirements-tpu.txt']  # Not jax[cpu].


def test_slurm_runs_one_process_per_node_on_gpus_only():
  rc, commands, err = _dry_run('slurm_gpu.sbatch', 'experiments.pretrain', *ARGS)
  assert rc == 0, err
  assert commands == [['srun', '--kill-on-bad-exit=1', '--export=ALL,JAX_PLATFORMS=cuda', 'python',
                       '-m', 'experiments.pretrain', *ARGS]]
  with open(os.path.join(training_util.ROOT, 'launch', 'slurm_gpu.sbatch')) as f:
    header = f.read()
  assert '#SBATCH --ntasks-per-node=1' in header and '#SBATCH --signal=TERM@' in header
  assert '#SBATCH --gpus-per-node=' in header


def test_slurm_setup_installs_jax_for_gpu_before_the_job():
  """The SLURM job installed jax[cpu] (requirements.txt) and so trained on the CPU."""
  rc, commands, err = _dry_run('slurm_gpu.sbatch', 'experiments.pretrain', *ARGS, SETUP='1')
  assert rc == 0, err
  assert commands[:2] == [['python3', '-m', 'venv', '.venv'],
                          ['.venv/bin/pip', 'install', '-q', '-r', 'requirements-gpu.txt']]
  assert commands[2][0] == 'srun' and len(commands) == 3


def _requirements(name: str) -> list[str]:
  with open(os.path.join(training_util.ROOT, name)) as f:
    return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


def test_accelerator_requirements_pin_the_tested_jax_with_an_extra_it_has():
  """requirements-{tpu,gpu}.txt: the runtime stack plus jax[tpu] / jax[cuda12] at the jax version
  requirements.txt allows and this environment tests (the installed one), an extra that this
  jax's PyPI metadata declares (jax[tpu] pins libtpu, jax[cuda12] the CUDA plugin)."""
  jax_version = importlib.metadata.version('jax')
  allowed = re.search(r'^jax\[cpu\]>=([\d.]+),<([\d.]+)$',
                      '\n'.join(_requirements('requirements.txt')), re.M)
  assert allowed and allowed.group(1) == jax_version, (allowed, jax_version)
  extras = importlib.metadata.metadata('jax').get_all('Provides-Extra')
  for name, extra in (('requirements-tpu.txt', 'tpu'), ('requirements-gpu.txt', 'cuda12')):
    assert _requirements(name) == ['-r requirements.txt', f'jax[{extra}]=={jax_version}'], name
    assert extra in extras, (extra, extras)


def test_usage_without_arguments():
  for script in ('tpu_vm.sh', 'slurm_gpu.sbatch'):
    rc, _, err = _dry_run(script)
    assert rc == 2 and 'DRY_RUN=1' in err


def test_help_prints_the_usage_and_exits_0():
  """--help / -h: the header comment as plain text on stdout (tpu_vm.sh printed a line of its
  code, `set -euo pipefail`, and exited 2; slurm_gpu.sbatch ran `srun python -m --help`)."""
  for script, example in (('tpu_vm.sh', 'launch/tpu_vm.sh TPU_NAME ZONE experiments.pretrain'),
                          ('slurm_gpu.sbatch', 'sbatch --nodes=4 launch/slurm_gpu.sbatch')):
    for flag in ('--help', '-h'):
      result = subprocess.run(['bash', os.path.join('launch', script), flag], cwd=training_util.ROOT,
                              capture_output=True, text=True)
      assert result.returncode == 0, (script, flag, result.stderr)
      assert example in result.stdout and 'DRY_RUN=1' in result.stdout
      lines = result.stdout.splitlines()
      assert not any(l.startswith(('#', 'set ', 'srun', 'if ')) for l in lines), result.stdout


def _run_commands(lines, *args, dry_run=False):
  result = subprocess.run([sys.executable, os.path.join('launch', 'run_commands.py'), '-', *args],
                          cwd=training_util.ROOT, input='\n'.join(lines) + '\n', text=True,
                          capture_output=True, env=dict(os.environ, DRY_RUN='1' if dry_run else '0'))
  return result.returncode, [shlex.split(line) for line in result.stdout.splitlines()], result.stderr


# Two jobs that each wait for the other's file: they finish only if they run at the same time.
RENDEZVOUS = """import os, sys, time
directory, mine, other = sys.argv[1:]
open(os.path.join(directory, mine), 'w').close()
deadline = time.time() + 20
while not os.path.exists(os.path.join(directory, other)):
  assert time.time() < deadline
  time.sleep(0.05)
"""


def test_run_commands_runs_jobs_in_parallel_locally_and_names_failures(tmp_path):
  (tmp_path / 'rendezvous.py').write_text(RENDEZVOUS)
  script = str(tmp_path / 'rendezvous.py')
  lines = ['# a comment', '',
           shlex.join([sys.executable, script, str(tmp_path), 'a', 'b']),
           shlex.join([sys.executable, script, str(tmp_path), 'b', 'a']),
           shlex.join([sys.executable, '-c', 'import sys; sys.exit(3)'])]
  rc, printed, err = _run_commands(lines, '--parallel=2')
  assert rc == 1 and len(printed) == 3
  assert (tmp_path / 'a').exists() and (tmp_path / 'b').exists()
  assert 'FAILED' in err and 'sys.exit(3)' in err and 'rendezvous' not in err


def test_run_commands_dry_run_flag_prints_and_runs_nothing(tmp_path):
  marker = tmp_path / 'ran'
  job = [sys.executable, '-c', f'open({str(marker)!r}, "w").close()']
  help_text = subprocess.run([sys.executable, os.path.join('launch', 'run_commands.py'), '--help'],
                             cwd=training_util.ROOT, capture_output=True, text=True).stdout
  assert '--dry-run' in help_text
  rc, printed, err = _run_commands([shlex.join(job)] * 2, '--parallel=2', '--dry-run')
  assert rc == 0, err
  assert printed == [job, job] and not marker.exists()
  rc, printed, err = _run_commands([shlex.join(job)], '--slurm', '--dry-run')
  assert rc == 2 and 'python -m MODULE' in err  # Checked as a real run would be.


ABLATION_JOBS = [shlex.join(['/venv/bin/python', '-m', 'experiments.ablate_nsp', '--scale=paper',
                             '--out=gs://bucket/nsp', f'--cell=cell {i}', f'--seed={i}'])
                 for i in range(3)]


def test_run_commands_submits_slurm_jobs():
  rc, printed, err = _run_commands(ABLATION_JOBS, '--slurm', '--nodes=2',
                                   '--sbatch_args=--time=4:00:00', dry_run=True)
  assert rc == 0, err
  for command, job in zip(printed, ABLATION_JOBS):
    assert command[:3] == ['sbatch', '--nodes=2', '--time=4:00:00']
    assert command[3].endswith('launch/slurm_gpu.sbatch')
    assert command[4:] == shlex.split(job)[2:]  # The module and its arguments, intact.


def test_run_commands_spreads_jobs_over_tpu_vms():
  rc, printed, err = _run_commands(ABLATION_JOBS, '--tpu=tpu-a,tpu-b', '--zone=us-central2-b',
                                   dry_run=True)
  assert rc == 0, err
  assert sorted(c[1] for c in printed) == ['tpu-a', 'tpu-a', 'tpu-b']
  assert all(c[0].endswith('launch/tpu_vm.sh') and c[2] == 'us-central2-b' for c in printed)
  assert sorted(tuple(c[3:]) for c in printed) == sorted(tuple(shlex.split(j)[2:]) for j in ABLATION_JOBS)
  rc, _, err = _run_commands(['echo hi'], '--tpu=tpu-a', '--zone=z', dry_run=True)
  assert rc == 2 and 'python -m MODULE' in err
