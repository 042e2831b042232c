"""Tables and plots of finished runs: python -m latentlm.report DIRS... --out=DIR.

Reads each workdir's config.json, metrics.jsonl and evaluations.jsonl (what
`python -m latentlm.evaluate` appends), and n-gram reference directories
(`python -m latentlm.ngram`: reference.json and evaluations.jsonl, nothing
trained), which appear as fixed reference rows and lines. Writes to --out:
  report.md                   one row per run: config summary, trainable
                              params, all-in training FLOPs, final eval
                              metrics with their 95% intervals (metrics.jsonl's
                              last, overridden by what evaluate measured at
                              the latest step it evaluated, shown as
                              'evaluated at'), the references last; then
                              "Paired differences": each run and reference
                              minus the baseline (--baseline, default the
                              first directory given) on Brier-1..4 and
                              BrierLM, over the positions both were scored
                              on, with a paired bootstrap interval and a
                              verdict (better, worse, not resolved)
  report.json                 the same, per run, for study pages
                              (`report_json`)
  brier_vs_flops.png          BrierLM against all-in training FLOPs, a line
                              per run (its evaluations at several
                              checkpoints), with the bootstrap interval
                              evaluate measured; references as dashed
                              horizontal lines
  brier_1_vs_flops.png        Brier-1 the same way
  bits_per_byte_vs_flops.png  eval bits/byte against all-in training FLOPs
                              (runs with a likelihood), from metrics.jsonl
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

from latentlm import tasks
from latentlm.core import cli
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.metrics import intervals
from latentlm.tasks import flops

_NOISE = re.compile(r'^token_acc_noise_([0-9.]+)$')
EVALUATIONS = 'evaluations.jsonl'
REFERENCE = 'reference.json'  # marks an n-gram reference directory
# What the paired differences compare (latentlm.metrics.intervals' names).
BRIER_METRICS = ('brier_1', 'brier_2', 'brier_3', 'brier_4', 'brier_lm')
# Every Brier-n beside BrierLM: small models score Brier-3/4 near zero, and
# then BrierLM (their geometric mean with Brier-1/2) is zero for every run.
TABLE_METRICS = ('bits_per_byte', 'brier_lm', 'brier_1', 'brier_2',
                 'brier_3', 'brier_4', 'num_positions', 'partial_fallback_rate',
                 'latent_l2', 'roundtrip_l2', 'gmm_nll', 'token_acc',
                 'token_acc_noise_0.3')
# Records written before each Brier-n had an interval named BrierLM's plainly.
OLD_NAMES = {'ci_low': 'brier_lm_ci_low', 'ci_high': 'brier_lm_ci_high'}


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def config_summary(config) -> str:
  """The fields that tell variants apart (Task.describe)."""
  return tasks.task_class(config).describe(config)


def trainable_params(config) -> int | None:
  """Parameters the run trains (a concept LM's frozen stage 1 excluded);
  None when the config cannot be built here (e.g. a missing stage-1 run)."""
  return _trainable_params(config.to_json())


@functools.cache
def _trainable_params(config_json: str) -> int | None:
  """Cached by config: a sweep's runs often share one model."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  from latentlm.models import transformer  # pylint: disable=g-import-not-at-top
  try:
    task = tasks.get_task(config)  # the stages' configs, not their weights
    params, _ = jax.eval_shape(task.init, jax.random.key(0))
  except UserError:
    return None
  if task.trainable is not None:  # e.g. head_distill: only the head
    params = jax.tree.map(lambda train, p: p if train else None,
                          task.trainable(params), params)
  return transformer.param_count(params)


def _read_evaluations(path: str, split: str | None) -> list[dict]:
  """evaluations.jsonl of directory `path` in today's names; with `split`,
  only what was measured on that split."""
  evaluations = [{OLD_NAMES.get(k, k): v for k, v in r.items()}
                 for r in _read_jsonl(os.path.join(path, EVALUATIONS))]
  if split:
    evaluations = [r for r in evaluations
                   if str(r.get('data', '')).endswith(f':{split}')]
  return evaluations


def _measured(path: str, split: str | None) -> dict:
  """What was measured in directory `path`: its evaluations, and the numbers
  of those at the latest step evaluated (an earlier checkpoint than the last
  one, when so run: see `evaluated_step`), the last written winning."""
  evaluations = _read_evaluations(path, split)
  evaluated_step = max((r.get('step', 0) for r in evaluations), default=None)
  final = {}
  for record in evaluations:
    if record.get('step', 0) == evaluated_step:
      final.update({k: v for k, v in record.items()
                    if isinstance(v, (int, float)) and k != 'step'})
  return dict(name=os.path.basename(path.rstrip('/')), path=path,
              evaluations=evaluations, evaluated_step=evaluated_step,
              final=final)


def load_run(path: str, split: str | None = None) -> dict:
  """What the report needs of one workdir or n-gram reference directory.
  With `split`, only what evaluate measured on that split counts (not
  training's own evals)."""
  if os.path.exists(os.path.join(path, REFERENCE)):
    return load_reference(path, split)
  workdir = workdir_lib.Workdir(path)
  config = workdir.load_config()
  records = workdir_lib.read_metrics(workdir)
  run = _measured(workdir.path, split)
  final_step = max((r['step'] for r in records), default=0)
  final = {}
  if not split:  # training's own evals: each metric's latest value
    for record in records:
      final.update({k[len('eval/'):]: v for k, v in record.items()
                    if k.startswith('eval/')})
  run.update(
      family=config.task, reference=False, config=config,
      summary=config_summary(config), params=trainable_params(config),
      final_step=final_step,
      all_in_flops=flops.all_in_flops(config, final_step),
      final={**final, **run['final']}, records=records)
  return run


def load_reference(path: str, split: str | None = None) -> dict:
  """An n-gram reference directory: what it scored, and no config, params,
  steps or FLOPs (nothing in it was trained by gradient steps)."""
  run = _measured(os.path.abspath(os.path.expanduser(path)), split)
  with open(os.path.join(run['path'], REFERENCE)) as f:
    reference = json.load(f)
  run.update(
      family=reference['family'], reference=True, config=None,
      summary=(f"reference: {reference['family']}, "
               f"{reference.get('smoothing', '?')} smoothing, fit on "
               f"{reference.get('data', '?')}"),
      params=None, final_step=None, all_in_flops=None, records=[])
  return run


def _cell(value, sign: str = '') -> str:
  """`sign='+'` marks differences: +0.01 reads as a gain at a glance."""
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:{sign}.4g}'
  return str(value)


def _with_interval(value, low, high, sign: str = '') -> str:
  return (f'{_cell(value, sign)} [{_cell(float(low), sign)}, '
          f'{_cell(float(high), sign)}]')


def _metric_cell(final: dict, metric: str) -> str:
  """`value [low, high]` where evaluate measured the metric's interval."""
  if f'{metric}_ci_low' not in final:
    return _cell(final.get(metric))
  return _with_interval(final[metric], final[f'{metric}_ci_low'],
                        final[f'{metric}_ci_high'])


def _table(header, rows) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in cells) + ' |' for cells in rows]
  return '\n'.join(lines) + '\n'


def _references_last(runs) -> list:
  """The runs in the order given, then the references: fixed rows that
  every table ends on."""
  return sorted(runs, key=lambda r: r['reference'])


def markdown_table(runs) -> str:
  columns = [m for m in TABLE_METRICS if any(m in r['final'] for r in runs)]
  header = ['run', 'config', 'params', 'steps', 'all-in FLOPs',
            'evaluated at'] + columns
  rows = []
  for r in _references_last(runs):
    all_in = r['all_in_flops']
    rows.append([r['name'], r['summary'], _cell(r['params']),
                 _cell(r['final_step']),
                 '-' if all_in is None else f'{all_in:.3g}',
                 _cell(r['evaluated_step'])] +
                [_metric_cell(r['final'], m) for m in columns])
  return _table(header, rows)


# ------------------------------------------------------ paired differences
def _brier_record(run, positions_key: str | None = None) -> dict | None:
  """The run's latest BrierLM evaluation that kept its per-position terms
  (on `positions_key`'s positions, when given), the last written winning."""
  records = [r for r in run['evaluations'] if 'brier_terms' in r and
             positions_key in (None, r.get('positions_key'))]
  if not records:
    return None
  return sorted(records, key=lambda r: r.get('step', 0))[-1]  # stable


def _not_comparable(run, base: dict | None, base_name: str) -> str:
  """Why `run` has no paired difference against the baseline's record."""
  if base is None:
    return (f'not comparable (no per-position terms): the baseline '
            f'{base_name} has no BrierLM evaluation with them; evaluate it '
            'with --metric=brier')
  if not any('brier_lm' in r for r in run['evaluations']):
    return 'not comparable (no BrierLM evaluation)'
  latest = _brier_record(run)
  if latest is None:
    return ('not comparable (no per-position terms): evaluated before '
            'paired intervals; evaluate it again with --metric=brier')
  differing = [f'{k} {latest.get(k)} here, {base.get(k)} in the baseline'
               for k in ('data', 'block_bytes', 'num_positions',
                         'positions_key') if latest.get(k) != base.get(k)]
  return 'not comparable (different positions): ' + '; '.join(differing)


def _verdict(diff: float, resolved: bool) -> str:
  """Brier scores are higher for better models."""
  if not resolved:
    return 'not resolved'
  return 'better' if diff > 0 else 'worse'


def paired_row(run, base: dict | None, base_name: str) -> dict:
  """`run` minus the baseline's BrierLM evaluation `base` over the same
  positions (resampled together, see latentlm.metrics.intervals), at the run's
  latest evaluation on them; `comparable` False and a `reason` where the
  run was scored on other positions or kept no terms: never compared then."""
  record = _brier_record(run, base['positions_key']) if base else None
  if record is None:
    return dict(comparable=False, step=None,
                reason=_not_comparable(run, base, base_name), differences={})
  differences = intervals.paired_difference(record['brier_terms'],
                                            base['brier_terms'])
  return dict(comparable=True, step=record.get('step'), reason=None,
              differences={
                  metric: dict(diff=diff, ci_low=low, ci_high=high,
                               verdict=_verdict(diff, resolved))
                  for metric, (diff, low, high, resolved)
                  in differences.items()})


def find_baseline(runs, name: str | None) -> dict:
  """The run `name` (a directory name, or its path); the first one given
  by default."""
  if name is None:
    return runs[0]
  matches = [r for r in runs
             if name == r['name'] or
             os.path.abspath(name) == os.path.abspath(r['path'])]
  if len(matches) != 1:
    names = ', '.join(r['name'] for r in runs)
    problem = 'none' if not matches else f'{len(matches)} (give its path)'
    raise UserError(f'--baseline={name} names {problem} of the runs: {names}')
  return matches[0]


def compare(runs, baseline: dict) -> dict:
  """{'baseline': what it was scored on, 'rows': {path: paired_row}},
  the baseline itself left out of the rows."""
  base = _brier_record(baseline)
  described = {k: base.get(k) for k in ('step', 'data', 'num_positions',
                                        'block_bytes', 'positions_key')
               } if base else {}
  return dict(
      baseline=dict(name=baseline['name'], path=baseline['path'],
                    **described),
      rows={r['path']: paired_row(r, base, baseline['name'])
            for r in runs if r is not baseline})


def paired_table(runs, comparison: dict) -> str:
  """Markdown: a line on what was compared, then a row per run."""
  base = comparison['baseline']
  heading = (f"## Paired differences\n\nEach run minus the baseline "
             f"**{base['name']}**")
  if 'positions_key' in base:
    heading += (f" (its BrierLM evaluation at step {base['step']} on "
                f"{base['data']}: {base['num_positions']} positions of "
                f"{base['block_bytes']} bytes)")
  heading += (f', with a {intervals.LEVEL:.0%} interval from a bootstrap '
              'over the positions both were scored on; "not resolved": the '
              'interval holds 0, so the two are not ranked.\n\n')
  header = ['run', 'step', 'positions']
  for metric in BRIER_METRICS:
    header += [f'{metric} diff', f'{metric} verdict']
  rows = []
  for r in _references_last(runs):
    row = comparison['rows'].get(r['path'])
    if row is None:  # the baseline
      continue
    cells = [r['name'], _cell(row['step']), row['reason'] or 'same']
    for metric in BRIER_METRICS:
      d = row['differences'].get(metric)
      cells += ([_with_interval(d['diff'], d['ci_low'], d['ci_high'], '+'),
                 d['verdict']] if d else ['-', '-'])
    rows.append(cells)
  return heading + _table(header, rows)


def report_json(runs, comparison: dict, split: str | None) -> dict:
  """What studies build their pages from: per run, its identity, all-in
  FLOPs, final metrics (with their intervals) and paired differences
  against the baseline (None for the baseline itself)."""
  return dict(
      split=split, level=intervals.LEVEL, baseline=comparison['baseline'],
      runs=[dict(name=r['name'], path=r['path'], family=r['family'],
                 reference=r['reference'], summary=r['summary'],
                 params=r['params'], steps=r['final_step'],
                 evaluated_step=r['evaluated_step'],
                 all_in_flops=r['all_in_flops'], final=r['final'],
                 paired=comparison['rows'].get(r['path']))
            for r in _references_last(runs)])


# ----------------------------------------------------------------- series
def evaluation_series(run, metric: str):
  """[(all-in training FLOPs, value[, (ci_low, ci_high)])] of `metric` in
  the run's evaluations, the last record of a step winning, with the
  bootstrap interval evaluate measured where it did. Empty for a reference:
  it has no FLOPs, and is drawn as a horizontal line (`reference_lines`)."""
  if run['reference']:
    return []
  points = {}
  for r in run['evaluations']:
    if metric in r:
      interval = ((r[f'{metric}_ci_low'], r[f'{metric}_ci_high'])
                  if f'{metric}_ci_low' in r else None)
      points[r['step']] = (r[metric],) + ((interval,) if interval else ())
  return [(flops.all_in_flops(run['config'], step),) + value
          for step, value in sorted(points.items())]


def brier_series(run):
  return evaluation_series(run, 'brier_lm')


def brier_1_series(run):
  """Brier-1 too: at CPU scale BrierLM is 0 for most runs (TABLE_METRICS)."""
  return evaluation_series(run, 'brier_1')


def bits_per_byte_series(run):
  return [(flops.all_in_flops(run['config'], r['step']),
           r['eval/bits_per_byte'])
          for r in run['records'] if 'eval/bits_per_byte' in r]


def reference_lines(runs, metric: str, labels: dict) -> dict:
  """{label: value} of the references that measured `metric`."""
  return {labels[r['path']]: r['final'][metric] for r in runs
          if r['reference'] and metric in r['final']}


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
         log_x: bool, references: dict | None = None) -> bool:
  """One line per run, with error bars where its points carry an interval,
  and a dashed horizontal line per reference ({label: value}); writes
  nothing when no run has points. `log_x` takes effect only when x spans
  more than a decade (an equal-FLOPs study sits at one x)."""
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
  for j, (name, value) in enumerate((references or {}).items()):
    axes.axhline(value, linestyle='--', label=name, alpha=0.7,
                 color=f'C{(len(series_by_run) + j) % 10}')
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
                   lambda r: f"{r['name']} ({r['family']})"):
    labels = {path: label_of(r) for path, r in by_path.items()}
    if len(set(labels.values())) == len(labels):
      return labels
  root = os.path.commonpath(list(by_path))
  return {path: os.path.relpath(path, root) for path in by_path}


def write_report(run_dirs, out: str, plots: bool = True,
                 split: str | None = None,
                 baseline: str | None = None) -> dict:
  """Writes report.md, report.json (and the plots); returns {'table': path,
  'json': path, ...}. With `split` the runs are compared on what evaluate
  measured on that split; `baseline` names the run the paired differences
  are taken against (the first one by default)."""
  if not run_dirs:
    raise UserError('name at least one run directory')
  runs = [load_run(path, split) for path in run_dirs]
  comparison = compare(runs, find_baseline(runs, baseline))
  if plots:
    _pyplot()  # fail before writing anything
  os.makedirs(out, exist_ok=True)
  written = dict(table=os.path.join(out, 'report.md'),
                 json=os.path.join(out, 'report.json'))
  with open(written['table'], 'w') as f:
    f.write(markdown_table(runs) + '\n' + paired_table(runs, comparison))
  with open(written['json'], 'w') as f:
    json.dump(report_json(runs, comparison, split), f, indent=1)
  if plots:
    written.update(write_plots(runs, out))
  return written


def write_plots(runs, out: str) -> dict:
  """{figure: path} of the plots that had points to draw."""
  labels = run_labels(runs)
  flops_label = 'all-in training FLOPs'
  figures = dict(  # series, file, x label, y label, log x, reference metric
      brier=(brier_series, 'brier_vs_flops.png', flops_label,
             'BrierLM (95% bootstrap interval)', True, 'brier_lm'),
      brier_1=(brier_1_series, 'brier_1_vs_flops.png', flops_label,
               'Brier-1 (95% bootstrap interval)', True, 'brier_1'),
      bits_per_byte=(bits_per_byte_series, 'bits_per_byte_vs_flops.png',
                     flops_label, 'eval bits/byte', True, 'bits_per_byte'),
      reconstruction=(noise_series, 'reconstruction_vs_noise.png',
                      'noise sigma on z', 'token accuracy', False, None))
  written = {}
  for key, (series, name, xlabel, ylabel, log_x, metric) in figures.items():
    path = os.path.join(out, name)
    if plot({labels[r['path']]: series(r) for r in runs}, path, xlabel,
            ylabel, log_x, reference_lines(runs, metric, labels)):
      written[key] = path
  return written


def define_flags():
  flags.DEFINE_string('out', None, 'Directory for report.md and the plots.')
  flags.DEFINE_bool('plots', True, 'Write PNG plots (needs matplotlib).')
  flags.DEFINE_string('split', None, 'Only evaluations of this split (e.g. '
                      "test, from evaluate --split=test); default: all, with "
                      "training's own evals.")
  flags.DEFINE_string('baseline', None, 'The run (its directory name) that '
                      'the paired differences are taken against; default: '
                      'the first one given.')


def main(argv):
  f = flags.FLAGS
  if not f.out:
    raise UserError('--out is required: a directory for the report')
  written = write_report(argv[1:], f.out, f.plots, f.split,
                         f.baseline)
  with open(written['table']) as table:
    print(table.read(), end='')
  print(json.dumps(written))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
