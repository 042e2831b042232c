"""Tables and plots of finished runs: python -m latentlm.report DIRS... --out=DIR.

Reads each workdir's config.json, metrics.jsonl and evaluations.jsonl (what
`python -m latentlm.evaluate` appends) and writes to --out:
  report.md                   one row per run: config summary, trainable
                              params, training FLOPs, final eval metrics
                              (metrics.jsonl's last, overridden by what
                              evaluate measured at the latest step it
                              evaluated, shown as 'evaluated at')
  brier_vs_flops.png          BrierLM against training FLOPs, a line per run
                              (its evaluations at several checkpoints), with
                              the bootstrap interval evaluate measured
  brier_1_vs_flops.png        Brier-1 the same way
  bits_per_byte_vs_flops.png  eval bits/byte against training FLOPs (runs
                              with a likelihood), from metrics.jsonl
  reconstruction_vs_noise.png autoencoder token accuracy against noise sigma
Plots need matplotlib (pip install -e '.[report]'); --noplots skips them.
--split=test compares the runs on what evaluate measured on that split only.
"""

import functools
import json
import os
import re

from absl import flags
import jax
import ml_collections

from latentlm import cli
from latentlm import flops
from latentlm import tasks
from latentlm import workdir as workdir_lib
from latentlm.errors import UserError

_NOISE = re.compile(r'^token_acc_noise_([0-9.]+)$')
# Brier-1 and -2 beside BrierLM: small models score Brier-3/4 near zero, and
# then BrierLM (their geometric mean with Brier-1/2) is zero for every run.
TABLE_METRICS = ('bits_per_byte', 'brier_lm', 'brier_1', 'brier_2',
                 'latent_l2', 'roundtrip_l2', 'gmm_nll', 'token_acc',
                 'token_acc_noise_0.3')


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def config_summary(config) -> str:
  """The fields that tell variants apart, per task."""
  if config.task == 'token_lm':
    m = config.model
    return (f'token_lm {config.data.tokenizer} d={m.d_model} L={m.num_layers}'
            f' seq={config.data.seq_len}')
  if config.task in tasks.CONCEPT_LM_TASKS:
    m = config.model
    steps = (f' steps={config.head.num_steps}'
             if config.task == 'head_distill' else '')
    return (f'{config.task} head={config.head.name}{steps} input={m.input} '
            f'd={m.d_model} L={m.num_layers} seq={config.data.seq_len}')
  if config.task == 'autoencoder':
    return (f'autoencoder K={config.segment.chunk_len} '
            f'segment={config.segment.kind} Dz={config.model.latent_dim}')
  return config.task


def trainable_params(config) -> int | None:
  """Parameters the run trains (a concept LM's frozen stage 1 excluded);
  None when the config cannot be built here (e.g. a missing stage-1 run)."""
  return _trainable_params(config.to_json())


@functools.cache
def _trainable_params(config_json: str) -> int | None:
  """Cached by config: a sweep's runs often share one model."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  from latentlm.models import transformer  # pylint: disable=g-import-not-at-top
  from latentlm.tasks import concept_lm  # pylint: disable=g-import-not-at-top
  try:
    if config.task == 'concept_lm':  # the stage-1 config, not its weights
      task = concept_lm.Task(config, concept_lm.load_autoencoder_config(
          config.autoencoder_workdir))
    else:
      task = tasks.get_task(config)
    params, _ = jax.eval_shape(task.init, jax.random.key(0))
  except UserError:
    return None
  if hasattr(task, 'trainable'):  # e.g. head_distill: only the head
    params = jax.tree.map(lambda train, p: p if train else None,
                          task.trainable(params), params)
  return transformer.param_count(params)


def load_run(path: str, split: str | None = None) -> dict:
  """What the report needs of one workdir. With `split`, only what
  evaluate measured on that split counts (not training's own evals)."""
  workdir = workdir_lib.Workdir(path)
  config = workdir.load_config()
  records = workdir_lib.read_metrics(workdir)
  evaluations = _read_jsonl(os.path.join(workdir.path, 'evaluations.jsonl'))
  if split:
    evaluations = [r for r in evaluations
                   if str(r.get('data', '')).endswith(f':{split}')]
  flops_per_step = flops.train_flops_per_step(config)
  final_step = max((r['step'] for r in records), default=0)
  final = {}
  if not split:  # training's own evals: each metric's latest value
    for record in records:
      final.update({k[len('eval/'):]: v for k, v in record.items()
                    if k.startswith('eval/')})
  # Then what evaluate measured, at the latest step it evaluated (an
  # earlier checkpoint than the last one, when so run: see `evaluated_step`).
  evaluated_step = max((r.get('step', 0) for r in evaluations), default=None)
  for record in evaluations:
    if record.get('step', 0) == evaluated_step:
      final.update({k: v for k, v in record.items()
                    if isinstance(v, (int, float)) and k != 'step'})
  return dict(
      name=os.path.basename(workdir.path.rstrip('/')), path=workdir.path,
      config=config, summary=config_summary(config),
      params=trainable_params(config), flops_per_step=flops_per_step,
      final_step=final_step, evaluated_step=evaluated_step,
      train_flops=flops_per_step * final_step,
      final=final, records=records, evaluations=evaluations)


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def markdown_table(runs) -> str:
  columns = [m for m in TABLE_METRICS if any(m in r['final'] for r in runs)]
  header = ['run', 'config', 'params', 'steps', 'train FLOPs',
            'evaluated at'] + columns
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for r in runs:
    cells = [r['name'], r['summary'], _cell(r['params']), r['final_step'],
             f"{r['train_flops']:.3g}", _cell(r['evaluated_step'])]
    cells += [_cell(r['final'].get(m)) for m in columns]
    lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------- series
def evaluation_series(run, metric: str):
  """[(training FLOPs, value[, (ci_low, ci_high)])] of `metric` in the run's
  evaluations, the last record of a step winning; BrierLM carries its
  bootstrap interval when evaluate measured one."""
  points = {}
  for r in run['evaluations']:
    if metric in r:
      interval = ((r['ci_low'], r['ci_high'])
                  if metric == 'brier_lm' and 'ci_low' in r else None)
      points[r['step']] = (r[metric],) + ((interval,) if interval else ())
  return [(step * run['flops_per_step'],) + value
          for step, value in sorted(points.items())]


def brier_series(run):
  return evaluation_series(run, 'brier_lm')


def brier_1_series(run):
  """Brier-1 too: at CPU scale BrierLM is 0 for most runs (TABLE_METRICS)."""
  return evaluation_series(run, 'brier_1')


def bits_per_byte_series(run):
  return [(r['step'] * run['flops_per_step'], r['eval/bits_per_byte'])
          for r in run['records'] if 'eval/bits_per_byte' in r]


def noise_series(run):
  """[(sigma, token accuracy)], sigma 0 being the clean reconstruction."""
  final = run['final']
  points = [(float(m.group(1)), v) for k, v in final.items()
            if (m := _NOISE.match(k))]
  if 'token_acc' in final:
    points.append((0.0, final['token_acc']))
  return sorted(points)


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError("plots need matplotlib: pip install -e '.[report]' "
                    '(or pass --noplots)') from e
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


MARKERS = 'osD^vPX<>*'


def plot(series_by_run: dict, path: str, xlabel: str, ylabel: str,
         log_x: bool) -> bool:
  """One line per run, with error bars where its points carry an interval;
  writes nothing when no run has points. `log_x` takes effect only when x
  spans more than a decade (an equal-FLOPs study sits at one x)."""
  series_by_run = {k: v for k, v in series_by_run.items() if v}
  if not series_by_run:
    return False
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(8, 4))
  all_x = [p[0] for points in series_by_run.values() for p in points]
  for i, (name, points) in enumerate(series_by_run.items()):
    x, y = [p[0] for p in points], [p[1] for p in points]
    line, = axes.plot(x, y, marker=MARKERS[i % len(MARKERS)], label=name,
                      alpha=0.85)
    if all(len(p) > 2 for p in points):
      below = [value - p[2][0] for value, p in zip(y, points)]
      above = [p[2][1] - value for value, p in zip(y, points)]
      axes.errorbar(x, y, yerr=[below, above], fmt='none', capsize=3,
                    color=line.get_color(), alpha=0.5)
  if log_x and min(all_x) > 0 and max(all_x) > 10 * min(all_x):
    axes.set_xscale('log')
  elif log_x:  # a narrow FLOPs range: linear, in one power of ten
    axes.ticklabel_format(axis='x', style='sci', scilimits=(0, 0))
  axes.set(xlabel=xlabel, ylabel=ylabel)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  figure.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(figure)
  return True


def run_labels(runs) -> dict:
  """{path: legend label}: the run's name (report.md has its config), with
  its task added where names alone collide, else its path below the runs'
  common directory."""
  by_path = {r['path']: r for r in runs}
  for label_of in (lambda r: r['name'],
                   lambda r: f"{r['name']} ({r['config'].task})"):
    labels = {path: label_of(r) for path, r in by_path.items()}
    if len(set(labels.values())) == len(labels):
      return labels
  root = os.path.commonpath(list(by_path))
  return {path: os.path.relpath(path, root) for path in by_path}


def write_report(run_dirs, out: str, plots: bool = True,
                 split: str | None = None) -> dict:
  """Writes report.md (and the plots); returns {'table': path, ...}. With
  `split` the runs are compared on what evaluate measured on that split."""
  if not run_dirs:
    raise UserError('name at least one run directory')
  runs = [load_run(path, split) for path in run_dirs]
  if plots:
    _pyplot()  # fail before writing anything
  os.makedirs(out, exist_ok=True)
  written = dict(table=os.path.join(out, 'report.md'))
  with open(written['table'], 'w') as f:
    f.write(markdown_table(runs))
  if not plots:
    return written
  labels = run_labels(runs)
  label = lambda r: labels[r['path']]
  figures = dict(
      brier=(brier_series, 'brier_vs_flops.png', 'training FLOPs',
             'BrierLM (95% bootstrap interval)', True),
      brier_1=(brier_1_series, 'brier_1_vs_flops.png', 'training FLOPs',
               'Brier-1', True),
      bits_per_byte=(bits_per_byte_series, 'bits_per_byte_vs_flops.png',
                     'training FLOPs', 'eval bits/byte', True),
      reconstruction=(noise_series, 'reconstruction_vs_noise.png',
                      'noise sigma on z', 'token accuracy', False))
  for key, (series, name, xlabel, ylabel, log_x) in figures.items():
    path = os.path.join(out, name)
    if plot({label(r): series(r) for r in runs}, path, xlabel, ylabel, log_x):
      written[key] = path
  return written


def define_flags():
  flags.DEFINE_string('out', None, 'Directory for report.md and the plots.')
  flags.DEFINE_bool('plots', True, 'Write PNG plots (needs matplotlib).')
  flags.DEFINE_string('split', None, 'Only evaluations of this split (e.g. '
                      "test, from evaluate --split=test); default: all, with "
                      "training's own evals.")


def main(argv):
  f = flags.FLAGS
  if not f.out:
    raise UserError('--out is required: a directory for the report')
  written = write_report(argv[1:], f.out, f.plots, f.split)
  with open(written['table']) as table:
    print(table.read(), end='')
  print(json.dumps(written))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
