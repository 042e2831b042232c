"""Shared test helpers: tiny configs and running the command-line tools."""

import json
import os
import subprocess
import sys

from latentlm.core import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests compile far more than they run, and LLVM's -O0 compiles a tiny step
# about a third faster. Every comparison in the suite is between runs built
# with the same flags, or against a reference with a tolerance.
COMPILE_FLAGS = '--xla_backend_optimization_level=0'


def xla_flags(num_devices: int = 1) -> str:
  """XLA_FLAGS of a test's JAX: `num_devices` CPU devices, COMPILE_FLAGS."""
  return (f'--xla_force_host_platform_device_count={num_devices} '
          f'{COMPILE_FLAGS}')


def load_config(name: str, arg: str | None = None):
  """configs/NAME.py's get_config(arg), as the command line would load it."""
  path = os.path.join(REPO, 'configs', f'{name}.py')
  return config_lib.load_module(path).get_config(arg)


def tiny_token_lm(data_dir: str, **train):
  """A nano token LM that trains a step in well under a second."""
  config = load_config('token_lm', 'size=nano')
  config.data.data_dir = data_dir
  config.data.seq_len = 32
  config.model.max_len = 32
  config.train.batch_size = 8
  config.train.progress_bar = False
  config.optimizer.warmup_steps = 2
  config.train.update(train)
  return config


def pipeline_stage_flags(stage: str, data_dir: str,
                         num_steps: int) -> list[str]:
  """--config.stages.STAGE flags that shrink one stage of a pipeline
  config to `num_steps`, evaluated and checkpointed once, at the end."""
  prefix = f'--config.stages.{stage}'
  return [f'{prefix}.data.data_dir={data_dir}',
          f'{prefix}.train.num_steps={num_steps}',
          f'{prefix}.train.log_every=1',
          f'{prefix}.train.eval_every={num_steps}',
          f'{prefix}.train.eval_batches=1',
          f'{prefix}.train.checkpoint_every={num_steps}',
          f'{prefix}.train.progress_bar=False']


def subprocess_env() -> dict:
  """The environment of a latentlm command a test starts: 1 CPU device."""
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags())


def run_module(module: str, *args: str, env=None, timeout=300):
  """Runs `python -m latentlm.MODULE ARGS` in a fresh process on 1 CPU device."""
  full_env = subprocess_env()
  full_env.update(env or {})
  return subprocess.run([sys.executable, '-m', f'latentlm.{module}', *args],
                        capture_output=True, text=True, timeout=timeout,
                        env=full_env, cwd=REPO)


def config_flags(config, prefix='--config') -> list[str]:
  """--config.a.b=VALUE flags that reproduce every leaf of `config`."""
  flags = []
  def walk(tree, path):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f'{path}.{key}')
      elif not isinstance(value, (list, tuple)):
        flags.append(f'{path}.{key}={value}')
  walk(json.loads(config.to_json()), prefix)
  return flags


def check_summary(stdout: str, workdir: str, *units: str):
  """`stdout` ends with a finished run's summary: its final eval metrics
  with their `units`, its files and the next commands."""
  summary = stdout[stdout.index('=== run finished'):]
  for text in (*units, f'{workdir}/checkpoints', f'{workdir}/samples.txt',
               f'{workdir}/metrics.jsonl',
               f'python -m latentlm.evaluate --workdir={workdir}'):
    assert text in summary, text


def last_json_line(stdout: str) -> dict:
  return json.loads(stdout.strip().splitlines()[-1])
