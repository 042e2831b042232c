"""launch/tpu.py: the dry runs print exactly the gcloud commands to run."""

import os
import shlex
import subprocess
import sys
import tarfile
import tempfile

import pytest

from latentlm.core import config_lib

import helpers

SCRIPT = os.path.join(helpers.REPO, 'launch', 'tpu.py')
ZONE = '--zone=us-east5-a'
TRAIN = ['python', '-m', 'latentlm.train',
         '--config=configs/concept_lm_1b.py:head=energy',
         '--workdir=/mnt/shared/clm']
SETUP = (
    '(command -v python3.11 >/dev/null || (sudo apt-get update -q && '
    'sudo apt-get install -yq python3.11 python3.11-venv)) && '
    'rm -rf $HOME/latentlm && mkdir -p $HOME/latentlm && '
    'tar xzf $HOME/latentlm.tar.gz -C $HOME/latentlm && '
    'python3.11 -m venv $HOME/venv && $HOME/venv/bin/pip install -q -U pip && '
    "cd $HOME/latentlm && $HOME/venv/bin/pip install -q -e '.[tpu]'")
DETACHED = ('cd $HOME/latentlm && export LATENTLM_DISTRIBUTED=1 '
            'PATH=$HOME/venv/bin:$PATH && nohup {} > {} 2>&1 < /dev/null &')


def _dry_run(*args, ok=True):
  result = subprocess.run([sys.executable, SCRIPT, *args], text=True,
                          capture_output=True, timeout=60)
  assert (result.returncode == 0) == ok, result.stderr
  return result


def _commands(*args):
  """The printed commands, each split into its arguments."""
  lines = _dry_run(*args).stdout.strip().splitlines()
  return [shlex.split(line) for line in lines if not line.startswith('#')]


def test_create_and_delete_one_tpu_vm():
  result = _dry_run('create', '--name=lm', ZONE, '--type=v5p-64', '--dry-run')
  assert result.stdout == (
      'gcloud compute tpus tpu-vm create lm --accelerator-type=v5p-64 '
      '--version=v2-alpha-tpuv5 --zone=us-east5-a\n')
  assert _commands('delete', '--name=lm', ZONE, '--dry-run') == [
      'gcloud compute tpus tpu-vm delete lm --quiet --zone=us-east5-a'.split()]


def test_create_and_delete_multislice_queued_resource():
  assert _commands('create', '--name=lm', ZONE, '--type=v5litepod-256',
                   '--slices=2', '--spot', '--project=proj', '--dry-run') == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'lm',
       '--accelerator-type=v5litepod-256',
       '--runtime-version=v2-alpha-tpuv5-lite', '--node-count=2',
       '--node-prefix=lm', '--spot', '--zone=us-east5-a', '--project=proj']]
  assert _commands('create', '--name=lm', ZONE, '--type=v4-8', '--queued',
                   '--version=tpu-vm-v4-base', '--dry-run') == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'lm',
       '--accelerator-type=v4-8', '--runtime-version=tpu-vm-v4-base',
       '--node-id=lm', '--zone=us-east5-a']]
  assert _commands('delete', '--name=lm', ZONE, '--slices=2', '--dry-run') == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'lm',
       '--force', '--quiet', '--zone=us-east5-a']]


def test_setup_copies_the_tree_and_installs_on_every_worker():
  name = f'lm{os.getpid()}'
  tarball = os.path.join(tempfile.gettempdir(), f'latentlm-{name}.tar.gz')
  result = _dry_run('setup', f'--name={name}', ZONE, '--dry-run')
  assert result.stdout.splitlines()[0] == (
      f'# pack the working tree into {tarball}')
  assert _commands('setup', f'--name={name}', ZONE, '--dry-run') == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball,
       f'{name}:latentlm.tar.gz', '--worker=all', '--zone=us-east5-a'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', name, '--worker=all',
       f'--command={SETUP}', '--zone=us-east5-a']]
  assert not os.path.exists(tarball)  # a dry run packs nothing


def test_run_starts_the_command_on_every_worker_of_every_slice():
  assert _commands('run', '--name=lm', ZONE, '--slices=2', '--dry-run',
                   '--', *TRAIN) == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'ssh', 'lm',
       '--node=all', '--worker=all',
       '--command=' + DETACHED.format(shlex.join(TRAIN), '~/latentlm.log'),
       '--zone=us-east5-a']]
  assert _commands('tail', '--name=lm', ZONE, '--slices=2', '--dry-run') == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'ssh', 'lm',
       '--node=0', '--worker=0', '--command=tail -n 100 -F ~/latentlm.log',
       '--zone=us-east5-a']]


def test_sweep_deals_the_grid_to_the_tpus():
  commands = _commands(
      'sweep', '--name=a,b', ZONE, '--dry-run',
      '--set=config.optimizer.learning_rate=1e-4,3e-4',
      '--set=config.seed=0,1', '--', *TRAIN)
  def trial(lr, seed, i):
    return (f'{shlex.join(TRAIN)}/learning_rate={lr},seed={seed} '
            f'--config.optimizer.learning_rate={lr} --config.seed={seed} '
            f'> ~/sweep-{i}.log 2>&1')
  def ssh(name, script):
    command = DETACHED.format(f'bash -c {shlex.quote(script)}', '/dev/null')
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', name,
            '--worker=all', f'--command={command}', '--zone=us-east5-a']
  assert commands == [
      ssh('a', f"{trial('1e-4', 0, 0)}; {trial('3e-4', 0, 2)}"),
      ssh('b', f"{trial('1e-4', 1, 1)}; {trial('3e-4', 1, 3)}")]


@pytest.mark.parametrize('args, message', [
    (['run', '--name=lm', ZONE, '--', *TRAIN, '--dry-run'],
     '--dry-run belongs before --'),
    (['sweep', '--name=lm', ZONE, '--dry-run', '--set=config.seed=0,1', '--',
      'python', '-m', 'latentlm.train'], 'needs one --workdir=DIR'),
    (['create', '--name=lm', ZONE, '--type=v9-8', '--dry-run'],
     'no default --version for --type=v9-8'),
    (['run', '--name=lm', ZONE, '--dry-run'], 'give the command after --'),
    (['tail', '--name=a,b', ZONE, '--dry-run'], 'tail takes one --name'),
])
def test_mistakes_fail_before_running_anything(args, message):
  result = _dry_run(*args, ok=False)
  assert message in result.stderr
  assert 'gcloud' not in result.stdout


def test_pack_takes_tracked_and_new_files_but_not_ignored_ones(tmp_path,
                                                               monkeypatch):
  tpu = config_lib.load_module(SCRIPT)
  repo = tmp_path / 'repo'
  (repo / 'pkg').mkdir(parents=True)
  for name, text in [('.gitignore', 'workdirs/\n'), ('pkg/a.py', 'a'),
                     ('pkg/new.py', 'new'), ('workdirs/ckpt', 'big')]:
    os.makedirs(repo / os.path.dirname(name), exist_ok=True)
    (repo / name).write_text(text)
  git = lambda *a: subprocess.run(['git', *a], cwd=repo, check=True,
                                  capture_output=True)
  git('init', '-q')
  git('add', '.gitignore', 'pkg/a.py')
  monkeypatch.setattr(tpu, 'REPO', str(repo))
  tpu.pack_working_tree(str(tmp_path / 'tree.tar.gz'))
  with tarfile.open(tmp_path / 'tree.tar.gz') as tar:
    assert sorted(tar.getnames()) == ['.gitignore', 'pkg/a.py', 'pkg/new.py']
