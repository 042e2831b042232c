"""Runs a grid of configs, one after another here, or prints one command each.

  python launch/sweep.py --config=configs/token_lm.py:size=nano \\
      --grid='args.size=nano,tiny' --grid='train.num_steps=100,200' \\
      --root=/tmp/sweep [--evaluate=brier] [--eval_flag=--block_bytes=64] \\
      [--eval_text=FILE] [--print]

Each --grid axis is NAME=V1,V2,...: `args.NAME` sets an argument of the
config file (FILE.py:NAME=V), any other NAME a config field
(--config.NAME=V). The runs are the product of the axes; each trains into
ROOT/<values of the axes that have several>, then is evaluated (its task's
metrics, and BrierLM with --evaluate=brier; --eval_flag passes flags to
evaluate; each --eval_text evaluates the same metrics on that text too), so
`python -m latentlm.report ROOT/*` tabulates them.
Runs go one at a time: in parallel they would share the CPU and distort the
timings. They share a persistent XLA compilation cache, ROOT/.jax_cache
(unless JAX_COMPILATION_CACHE_DIR is set): runs of one shape, and a run's
evaluation after its training, compile each program once. A run whose
workdir already holds its evaluations is skipped, so a rerun finishes an
interrupted sweep. --print prints one shell line per run instead (train,
then evaluate), for a fleet of machines.
"""

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_axis(text: str) -> tuple[str, list[str]]:
  name, sep, values = text.partition('=')
  values = [v for v in values.split(',') if v]
  if not sep or not name or not values:
    raise ValueError(f'--grid={text!r} must look like NAME=V1,V2')
  return name, values


def runs(config: str, axes: list[tuple[str, list[str]]]):
  """[(run name, config flag, override flags)] of the grid's product."""
  path, _, base_args = config.partition(':')
  result = []
  for values in itertools.product(*(v for _, v in axes)):
    args = [a for a in base_args.split(',') if a]
    overrides = []
    for (name, _), value in zip(axes, values):
      if name.startswith('args.'):
        key = name[len('args.'):]
        args = [a for a in args if a.partition('=')[0] != key]
        args.append(f'{key}={value}')
      else:
        overrides.append(f'--config.{name}={value}')
    # Only axes with several values tell runs apart; others would be noise.
    run_name = '_'.join(f'{n.removeprefix("args.")}-{v}'
                        for (n, vs), v in zip(axes, values)
                        if len(vs) > 1) or 'base'
    config_flag = f'--config={path}' + (f':{",".join(args)}' if args else '')
    result.append((run_name, config_flag, overrides))
  return result


def commands(workdir: str, config_flag: str, overrides: list[str],
             metrics: list[str], eval_flags=(), python: str = 'python',
             text_metrics=None):
  """The train command, then one evaluate command for all the metrics
  (one process loads the run and compiles its model once), then one for
  each text of `text_metrics` ({text file: its metrics})."""
  python = [python, '-m']
  train = python + ['latentlm.train', config_flag, *overrides,
                    f'--workdir={workdir}']
  evaluate = python + ['latentlm.evaluate', f'--workdir={workdir}']
  result = [train]
  if metrics:
    result.append(evaluate + [f'--metric={m}' for m in metrics]
                  + list(eval_flags))
  for text, on_text in (text_metrics or {}).items():
    if on_text:
      result.append(evaluate + [f'--metric={m}' for m in on_text]
                    + list(eval_flags) + [f'--text={text}'])
  return result


def evaluated(workdir: str) -> set[tuple[str, str]]:
  """The (metric, data) pairs evaluate has recorded in `workdir`."""
  path = os.path.join(workdir, 'evaluations.jsonl')
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {(r.get('metric', 'default'), r.get('data', '')) for r in records}


def missing_metrics(workdir: str, metrics, eval_texts):
  """(metrics not yet evaluated on the split, {text: metrics not yet
  evaluated on it}). An evaluation of data other than the texts counts as
  the split's."""
  recorded = evaluated(workdir)
  on_split = {m for m, data in recorded if data not in eval_texts}
  on_text = {text: [m for m in metrics if (m, text) not in recorded]
             for text in eval_texts}
  return [m for m in metrics if m not in on_split], on_text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True,
                      help='Base config, FILE.py[:ARGS].')
  parser.add_argument('--grid', action='append', default=[],
                      help='An axis NAME=V1,V2 (repeatable).')
  parser.add_argument('--root', required=True, help='One workdir per run in it.')
  parser.add_argument('--evaluate', choices=['default', 'brier'],
                      action='append', default=None,
                      help='Also BrierLM: --evaluate=brier (repeatable).')
  parser.add_argument('--eval_flag', action='append', default=[],
                      help="A flag for every evaluate, e.g. "
                      "--eval_flag=--block_bytes=64 (repeatable).")
  parser.add_argument('--eval_text', action='append', default=[],
                      help='Also evaluate on this text file (repeatable).')
  parser.add_argument('--print', action='store_true', dest='print_only',
                      help='Print one shell line per run; run nothing.')
  a = parser.parse_args(argv)
  try:
    axes = [parse_axis(g) for g in a.grid]
  except ValueError as e:
    parser.exit(2, f'error: {e}\n')
  if not os.path.exists(os.path.join(REPO, a.config.partition(':')[0])) and (
      not os.path.exists(a.config.partition(':')[0])):
    parser.exit(2, f'error: no config file {a.config.partition(":")[0]!r}\n')
  metrics = ['default'] + [m for m in a.evaluate or [] if m != 'default']
  eval_texts = [os.path.abspath(t) for t in a.eval_text]
  for text in eval_texts:
    if not os.path.isfile(text):
      parser.exit(2, f'error: --eval_text={text} is not a file\n')
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR',
                 os.path.join(os.path.abspath(a.root), '.jax_cache'))
  failed = []
  for name, config_flag, overrides in runs(a.config, axes):
    workdir = os.path.join(a.root, name)
    if a.print_only:
      steps = commands(workdir, config_flag, overrides, metrics, a.eval_flag,
                       text_metrics={t: metrics for t in eval_texts})
      print(' && '.join(shlex.join(c) for c in steps))
      continue
    missing, text_missing = missing_metrics(workdir, metrics, eval_texts)
    if not missing and not any(text_missing.values()):
      print(f'{name}: evaluated already, skipped', flush=True)
      continue
    steps = commands(workdir, config_flag, overrides, missing, a.eval_flag,
                     python=sys.executable, text_metrics=text_missing)
    print(f'{name}: {shlex.join(steps[0][2:])}', flush=True)
    for command in steps:
      if subprocess.run(command, cwd=REPO, env=env).returncode:
        failed.append(name)
        break
  if failed:
    parser.exit(1, f'error: {len(failed)} run(s) failed: {", ".join(failed)}\n')
  if not a.print_only:
    print(f'report: python -m latentlm.report {a.root}/* --out={a.root}/report')


if __name__ == '__main__':
  main()
