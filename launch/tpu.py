"""Cloud TPU VMs for latentlm: create, set up, run on every worker, sweep.

  python launch/tpu.py create --name=lm --zone=us-east5-a --type=v5p-64
  python launch/tpu.py setup  --name=lm --zone=us-east5-a
  python launch/tpu.py run    --name=lm --zone=us-east5-a -- \\
      python -m latentlm.train --config=configs/concept_lm_1b.py --workdir=...
  python launch/tpu.py tail   --name=lm --zone=us-east5-a
  python launch/tpu.py delete --name=lm --zone=us-east5-a

Each subcommand runs gcloud (printing each command first); --dry-run only
prints them. One slice is a TPU VM; --queued requests it as a queued
resource instead, and --slices=N (multi-slice) always does, with N nodes.
Give every subcommand the same --name, --zone and --slices.

`run` starts the command detached on every worker of every slice (logging
to ~/latentlm.log) with LATENTLM_DISTRIBUTED=1, so that latentlm joins the
pod's distributed runtime; `sweep` runs the grid of --set values, one trial
after another on each TPU of --name=a,b,...
"""

import argparse
import dataclasses
import itertools
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_REPO = '$HOME/latentlm'
VENV = '$HOME/venv'
# TPU VM software per generation (the --type prefix), from Google's pages.
RUNTIME_VERSIONS = {
    'v4': 'tpu-ubuntu2204-base',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}


@dataclasses.dataclass
class Tpu:
  """One TPU VM, or a queued resource of `slices` nodes, and its gcloud verbs."""
  name: str
  zone: str
  project: str | None = None
  slices: int = 1
  queued: bool = False

  def gcloud(self, *args) -> list[str]:
    kind = 'queued-resources' if self.queued else 'tpu-vm'
    project = [f'--project={self.project}'] if self.project else []
    return ['gcloud', 'compute', 'tpus', kind, *args, f'--zone={self.zone}',
            *project]

  def _workers(self, worker: str) -> list[str]:
    # A queued resource's nodes are its slices.
    node = [f'--node={"all" if worker == "all" else 0}'] if self.queued else []
    return [*node, f'--worker={worker}']

  def ssh(self, command: str, worker: str = 'all') -> list[str]:
    return self.gcloud('ssh', self.name, *self._workers(worker),
                       f'--command={command}')

  def scp(self, local: str, remote: str) -> list[str]:
    return self.gcloud('scp', local, f'{self.name}:{remote}',
                       *self._workers('all'))


def create(tpu: Tpu, args) -> list[list[str]]:
  generation = args.type.rsplit('-', 1)[0]
  version = args.version or RUNTIME_VERSIONS.get(generation)
  if not version:
    raise SystemExit(f'error: no default --version for --type={args.type}; '
                     f'known: {sorted(RUNTIME_VERSIONS)}')
  spot = ['--spot'] if args.spot else []
  if not tpu.queued:
    return [tpu.gcloud('create', tpu.name, f'--accelerator-type={args.type}',
                       f'--version={version}', *spot)]
  nodes = ([f'--node-id={tpu.name}'] if tpu.slices == 1 else
           [f'--node-count={tpu.slices}', f'--node-prefix={tpu.name}'])
  return [tpu.gcloud('create', tpu.name, f'--accelerator-type={args.type}',
                     f'--runtime-version={version}', *nodes, *spot)]


def delete(tpu: Tpu, args) -> list[list[str]]:
  del args
  force = ['--force'] if tpu.queued else []  # also deletes its nodes
  return [tpu.gcloud('delete', tpu.name, *force, '--quiet')]


def tarball_path(name: str) -> str:
  return os.path.join(tempfile.gettempdir(), f'latentlm-{name}.tar.gz')


def pack_working_tree(path: str):
  """The repo's files, tracked or new but not ignored, as they are now."""
  files = subprocess.run(
      ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
      cwd=REPO, check=True, capture_output=True, text=True).stdout
  with tarfile.open(path, 'w:gz') as tar:
    for name in filter(None, files.split('\0')):
      if os.path.exists(os.path.join(REPO, name)):  # not deleted
        tar.add(os.path.join(REPO, name), arcname=name)


def setup(tpu: Tpu, args) -> list[list[str]]:
  """Copies this working tree to every worker and installs it in a venv."""
  python = args.python
  install = ' && '.join([
      f'(command -v {python} >/dev/null || (sudo apt-get update -q && '
      f'sudo apt-get install -yq {python} {python}-venv))',
      f'rm -rf {REMOTE_REPO}', f'mkdir -p {REMOTE_REPO}',
      f'tar xzf $HOME/latentlm.tar.gz -C {REMOTE_REPO}',
      f'{python} -m venv {VENV}',
      f'{VENV}/bin/pip install -q -U pip',
      f"cd {REMOTE_REPO} && {VENV}/bin/pip install -q -e '.[tpu]'"])
  return [tpu.scp(tarball_path(tpu.name), 'latentlm.tar.gz'),
          tpu.ssh(install)]


def detached(command: str, log: str) -> str:
  """A remote shell line that starts `command` in the repo, in the venv,
  in the background, so that it outlives the ssh session."""
  return (f'cd {REMOTE_REPO} && export LATENTLM_DISTRIBUTED=1 '
          f'PATH={VENV}/bin:$PATH && nohup {command} > {log} 2>&1 '
          '< /dev/null &')


def run(tpu: Tpu, args) -> list[list[str]]:
  if not args.command:
    raise SystemExit('error: give the command after --, e.g. -- python -m '
                     'latentlm.train --config=... --workdir=...')
  return [tpu.ssh(detached(shlex.join(args.command), f'~/{args.log}'))]


def tail(tpu: Tpu, args) -> list[list[str]]:
  """Follows the log of worker 0 (process 0 logs progress and metrics)."""
  return [tpu.ssh(f'tail -n {args.lines} -F ~/{args.log}', worker='0')]


def sweep_trials(settings: list[str]) -> list[tuple[tuple[str, str], ...]]:
  """['config.a.b=1,2', 'config.c=x'] -> every (key, value) combination."""
  axes = []
  for setting in settings:
    key, sep, values = setting.partition('=')
    if not sep or not values:
      raise SystemExit(f'error: --set={setting!r} is not KEY=V1,V2,...')
    axes.append([(key, value) for value in values.split(',')])
  return list(itertools.product(*axes))


def trial_command(command: list[str], trial) -> list[str]:
  """`command` with the trial's overrides, in a workdir of its own."""
  name = ','.join(f'{key.rsplit(".", 1)[-1]}={value}' for key, value in trial)
  workdirs = [i for i, a in enumerate(command) if a.startswith('--workdir=')]
  if len(workdirs) != 1:
    raise SystemExit('error: a sweep command needs one --workdir=DIR; each '
                     'trial trains in DIR/<its settings>')
  command = list(command)
  command[workdirs[0]] += f'/{name}'
  return command + [f'--{key}={value}' for key, value in trial]


def sweep(tpus: list[Tpu], args) -> list[list[str]]:
  """Deals the trials round-robin to the TPUs; each runs its share in turn."""
  if not args.command or not args.set:
    raise SystemExit('error: usage: sweep --name=A[,B...] --set=KEY=V1,V2 '
                     '-- python -m latentlm.train ... --workdir=DIR')
  trials = sweep_trials(args.set)
  commands = []
  for t, tpu in enumerate(tpus):
    script = '; '.join(
        f'{shlex.join(trial_command(args.command, trial))} > ~/sweep-{i}.log '
        '2>&1' for i, trial in enumerate(trials) if i % len(tpus) == t)
    if script:
      commands.append(tpu.ssh(detached(f'bash -c {shlex.quote(script)}',
                                       '/dev/null')))
  return commands


def parse_args(argv):
  command = []
  if '--' in argv:
    argv, command = argv[:argv.index('--')], argv[argv.index('--') + 1:]
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  subparsers = parser.add_subparsers(dest='subcommand', required=True)
  for name in ('create', 'delete', 'setup', 'run', 'tail', 'sweep'):
    sub = subparsers.add_parser(name)
    sub.add_argument('--name', required=True,
                     help='TPU (or queued resource) name; sweep: A,B,...')
    sub.add_argument('--zone', required=True)
    sub.add_argument('--project', default=None)
    sub.add_argument('--slices', type=int, default=1,
                     help='multi-slice: a queued resource of N slices')
    sub.add_argument('--queued', action='store_true',
                     help='a queued resource even for one slice')
    sub.add_argument('--dry-run', action='store_true',
                     help='print the gcloud commands, run nothing')
    if name == 'create':
      sub.add_argument('--type', required=True, help='e.g. v5p-64, v5litepod-256')
      sub.add_argument('--version', default=None,
                       help='TPU VM software; default by generation')
      sub.add_argument('--spot', action='store_true')
    if name == 'setup':
      sub.add_argument('--python', default='python3.11')
    if name in ('run', 'tail'):
      sub.add_argument('--log', default='latentlm.log',
                       help="the log in each worker's home")
    if name == 'tail':
      sub.add_argument('--lines', type=int, default=100)
    if name == 'sweep':
      sub.add_argument('--set', action='append', default=[],
                       help='KEY=V1,V2,...; repeat for a grid')
  args = parser.parse_args(argv)
  args.command = command
  if '--dry-run' in command:  # it would have run gcloud for real
    parser.error('--dry-run belongs before --, not in the remote command')
  if args.slices < 1:
    parser.error(f'--slices={args.slices} must be at least 1')
  return args


def main(argv):
  args = parse_args(argv)
  tpus = [Tpu(name, args.zone, args.project, args.slices,
              queued=args.queued or args.slices > 1)
          for name in args.name.split(',')]
  if args.subcommand == 'sweep':
    commands = sweep(tpus, args)
  elif len(tpus) > 1:
    raise SystemExit(f'error: {args.subcommand} takes one --name')
  else:
    action = dict(create=create, delete=delete, setup=setup, run=run,
                  tail=tail)[args.subcommand]
    commands = action(tpus[0], args)
  if args.subcommand == 'setup':
    print(f'# pack the working tree into {tarball_path(tpus[0].name)}',
          flush=True)
    if not args.dry_run:
      pack_working_tree(tarball_path(tpus[0].name))
  for command in commands:
    print(shlex.join(command), flush=True)
    if not args.dry_run:
      subprocess.run(command, check=True)


if __name__ == '__main__':
  main(sys.argv[1:])
