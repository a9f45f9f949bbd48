"""The launchers' dry runs print the commands they would run, with the arguments intact."""
import os
import shlex
import subprocess

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


def test_tpu_vm_setup_ships_the_checkout_and_installs():
  rc, commands, err = _dry_run('tpu_vm.sh', 'tpu', 'zone', 'experiments.pretrain', *ARGS, SETUP='1')
  assert rc == 0, err
  assert commands[0][:3] == ['git', '-C', training_util.ROOT] and 'archive' in commands[0]
  assert commands[1][4] == 'scp' and '--worker=all' in commands[1]
  assert 'pip install' in commands[2][commands[2].index('--command') + 1]


def test_slurm_runs_one_process_per_node():
  rc, commands, err = _dry_run('slurm_gpu.sbatch', 'experiments.pretrain', *ARGS)
  assert rc == 0, err
  assert commands == [['srun', '--kill-on-bad-exit=1', 'python', '-m', 'experiments.pretrain', *ARGS]]
  with open(os.path.join(training_util.ROOT, 'launch', 'slurm_gpu.sbatch')) as f:
    header = f.read()
  assert '#SBATCH --ntasks-per-node=1' in header and '#SBATCH --signal=TERM@' in header


def test_usage_without_arguments():
  for script in ('tpu_vm.sh', 'slurm_gpu.sbatch'):
    rc, _, err = _dry_run(script)
    assert rc == 2 and 'DRY_RUN=1' in err
