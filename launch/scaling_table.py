"""The decisive study's results (configs/paper/scaling.py), and one run's row.

  python launch/scaling_table.py --root=/tmp/paper/scaling \\
      --ngram=/tmp/paper/ngram --ngram=/tmp/paper/ngram_prose \\
      --commit=COMMIT [--commit=FAMILY=COMMIT] --out=docs/results

writes OUT/scaling.json (one object per run and evaluated text, and one
per n-gram reference), OUT/scaling.png, and prints the markdown tables and
the verdict that configs/paper/scaling.py's decision rule gives.

  python launch/scaling_table.py --row=WORKDIR --family=flow --budget=5e12 \\
      [--eval_data=/usr/share/common-licenses/GPL-3]

prints one run's object, with the keys of scaling.json, as its last line:
the end of each run's `command` there.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.metrics import intervals
from latentlm.tasks import pipeline

from configs.paper import scaling

PLAYS = 'shakespeare:test'
PROSE = '/usr/share/common-licenses/GPL-3'
METRICS = ('brier_1', 'brier_2', 'brier_3', 'brier_4', 'brier_lm')
DECIDING = ('brier_lm', 'brier_1')  # the rule's primary metric, then its fallback
# A run whose partial last units fell back more often than this is not
# ranked: its samples are not exactly the model's (configs/paper/scaling.py).
MAX_FALLBACK_RATE = 0.01


def _jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def latest(evaluations, metric: str, data: str) -> dict | None:
  """The last record of `metric` on `data` (a split name or a text path)."""
  found = [r for r in evaluations
           if r.get('metric', 'default') == metric and r.get('data') == data]
  return found[-1] if found else None


def budget_text(budget: float) -> str:
  """5e12, 1.5e13: the budget as the sweep's grid spells it."""
  return f'{budget:g}'.replace('e+', 'e')


def brier_fields(record: dict) -> dict:
  """Brier-1..4 and BrierLM of a BrierLM record, each with its interval."""
  return {f'{m}{end}': record[f'{m}{end}'] for m in METRICS
          for end in ('', '_ci_low', '_ci_high')}


def run_name(family: str, budget: float) -> str:
  """launch/sweep.py's name for the run (its two axes)."""
  return f'budget-{budget_text(budget)}_family-{family}'


def command(family: str, budget: float, eval_data: str) -> str:
  """The shell line that retrains, re-evaluates and prints this row."""
  arg = f'family={family},budget={budget_text(budget)}'
  where = '--split=test' if eval_data == PLAYS else f'--text={eval_data}'
  return (f'python -m latentlm.train --config=configs/paper/scaling.py:{arg} '
          '--workdir=$WORKDIR && python -m latentlm.evaluate '
          f'--workdir=$WORKDIR --metric=default --metric=brier {where} && '
          'python launch/scaling_table.py --row=$WORKDIR '
          f'--family={family} --budget={budget_text(budget)} '
          f'--eval_data={eval_data}')


def _trained_stage(path: str) -> str:
  """The directory of the run's trained model: a pipeline's last stage."""
  config = workdir_lib.Workdir(path).load_config()
  if pipeline.is_pipeline(config):
    return pipeline.stage_path(path, pipeline.last_stage(config))
  return path


def run_row(path: str, family: str, budget: float, eval_data: str = PLAYS,
            commit: str | None = None, with_terms: bool = False) -> dict:
  """One run's object of scaling.json, on `eval_data`."""
  from latentlm import report  # pylint: disable=g-import-not-at-top
  if family not in scaling.FAMILIES:
    raise UserError(f'--family={family} is not one of {scaling.FAMILIES}')
  stage = workdir_lib.Workdir(_trained_stage(path))
  trained = [r for r in workdir_lib.read_metrics(stage)
             if 'train/flops_all_in' in r]
  if not trained:
    raise UserError(f'{path} has no training metrics: train it first')
  evaluations = _jsonl(os.path.join(path, 'evaluations.jsonl'))
  brier = latest(evaluations, 'brier', eval_data)
  default = latest(evaluations, 'default', eval_data)
  if brier is None:
    raise UserError(f'{path} has no BrierLM evaluation on {eval_data}: run '
                    'python -m latentlm.evaluate --metric=brier on it')
  row = dict(
      name=run_name(family, budget), family=family, budget_flops=budget,
      flops_all_in=trained[-1]['train/flops_all_in'],
      params=report.trainable_params(stage.load_config()),
      steps=trained[-1]['step'],
      bits_per_byte=(default or {}).get('bits_per_byte')
      if family in scaling.TOKEN_FAMILIES else None,
      bytes_per_concept=(default or {}).get('bytes_per_concept'),
      **brier_fields(brier),
      num_positions=brier['num_positions'],
      partial_fallback_rate=brier.get('partial_fallback_rate'),
      eval_data=eval_data, commit=commit or _head(),
      command=command(family, budget, eval_data))
  if with_terms:
    row['brier_terms'] = brier['brier_terms']
    row['positions_key'] = brier['positions_key']
  return row


def ngram_rows(directory: str, commit: str) -> list[dict]:
  """The n-gram references of DIR/ngram-N, one object per order and data."""
  rows = []
  for name in sorted(os.listdir(directory)):
    evaluations = _jsonl(os.path.join(directory, name, 'evaluations.jsonl'))
    for data in dict.fromkeys(r.get('data') for r in evaluations):
      brier = latest(evaluations, 'brier', data)
      default = latest(evaluations, 'default', data) or {}
      if brier is None:
        continue
      where = '--split=test' if data == PLAYS else f'--text={data}'
      rows.append(dict(
          name=name, family=name, budget_flops=None, flops_all_in=None,
          params=None, steps=None, bits_per_byte=default.get('bits_per_byte'),
          bytes_per_concept=None,
          **brier_fields(brier),
          num_positions=brier['num_positions'], partial_fallback_rate=None,
          eval_data=data, commit=commit,
          command=(f'python -m latentlm.ngram --config=configs/token_lm.py '
                   f'--orders={name.split("-")[1]} {where} --out=$WORKDIR')))
  return rows


def _head() -> str:
  return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                        capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------ the decision
def ranked(row: dict) -> bool:
  """Whether the rule ranks a run: its partial units seldom fell back."""
  return (row['partial_fallback_rate'] or 0.0) <= MAX_FALLBACK_RATE


def paired(row: dict, reference: dict, metric: str) -> dict:
  """`row` - `reference` on `metric`, paired over their shared positions."""
  if row['positions_key'] != reference['positions_key']:
    raise UserError(f'{row["name"]} and {reference["name"]} were scored on '
                    'different positions: evaluate both with the defaults')
  diff, low, high, resolved = intervals.paired_difference(
      row['brier_terms'], reference['brier_terms'])[metric]
  return dict(diff=diff, ci_low=low, ci_high=high, resolved=resolved)


def budget_outcome(rows_by_family: dict, metric: str) -> dict:
  """At one budget: the best token LM, each ranked concept family's paired
  difference from it on `metric`, and who wins the budget."""
  tokens = [rows_by_family[f] for f in scaling.TOKEN_FAMILIES
            if f in rows_by_family]
  present = [rows_by_family[f] for f in scaling.FAMILIES
             if f not in scaling.TOKEN_FAMILIES and f in rows_by_family]
  concepts = [row for row in present if ranked(row)]
  if not tokens or not concepts:
    return dict(best_token=None, differences={}, winner='incomplete')
  best = max(tokens, key=lambda r: r['brier_lm'])
  differences = {row['family']: paired(row, best, metric) for row in concepts}
  if any(d['resolved'] and d['diff'] > 0 for d in differences.values()):
    winner = 'concepts'
  elif all(d['resolved'] and d['diff'] < 0 for d in differences.values()):
    winner = 'tokens'
  else:
    winner = 'not resolved'
  complete = len(present) == len(scaling.FAMILIES) - len(
      scaling.TOKEN_FAMILIES) and len(tokens) == len(scaling.TOKEN_FAMILIES)
  return dict(best_token=best['family'], differences=differences,
              unranked=[row['family'] for row in present if not ranked(row)],
              winner=winner if complete else f'{winner} (incomplete)')


def verdict(outcomes_by_budget: dict, sides=('concepts', 'tokens')) -> str:
  """The one of `sides` that wins the top budget and one more; else 'not
  resolved'."""
  budgets = sorted(outcomes_by_budget)
  if budgets != sorted(scaling.BUDGETS) or any(
      'incomplete' in o['winner'] for o in outcomes_by_budget.values()):
    return 'incomplete'
  top = outcomes_by_budget[budgets[-1]]['winner']
  if top in sides and any(
      outcomes_by_budget[b]['winner'] == top for b in budgets[:-1]):
    return top
  return 'not resolved'


def rows_by_budget(rows: list[dict], eval_data: str) -> dict:
  """{budget: {family: row}} of the study's runs scored on `eval_data`."""
  by_budget = {}
  for row in rows:
    if row['eval_data'] == eval_data and row['budget_flops'] is not None:
      by_budget.setdefault(row['budget_flops'], {})[row['family']] = row
  return by_budget


def decide(rows: list[dict], eval_data: str = PLAYS) -> dict:
  """The rule of configs/paper/scaling.py on the rows of `eval_data` (the
  plays decide; the prose is reported beside them)."""
  by_budget = rows_by_budget(rows, eval_data)
  result = {}
  for metric in DECIDING:
    outcomes = {b: budget_outcome(by_budget[b], metric) for b in by_budget}
    result[metric] = dict(outcomes=outcomes, verdict=verdict(outcomes))
  primary = result['brier_lm']['verdict']
  result['deciding_metric'] = ('brier_1' if primary == 'not resolved'
                               else 'brier_lm')
  result['verdict'] = result[result['deciding_metric']]['verdict']
  return result


# ---------------------------------------------------------------- output
def _cell(row, metric, digits=3) -> str:
  return (f'{row[metric]:.{digits}f} [{row[f"{metric}_ci_low"]:.{digits}f}, '
          f'{row[f"{metric}_ci_high"]:.{digits}f}]')


def results_table(rows: list[dict], eval_data: str) -> str:
  lines = ['| run | all-in FLOPs | params | steps | bits/byte | BrierLM | '
           'Brier-1 | positions | fallback |',
           '|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    if row['eval_data'] != eval_data:
      continue
    flops = f'{row["flops_all_in"]:.3g}' if row['flops_all_in'] else '-'
    bpb = (f'{row["bits_per_byte"]:.3f}' if row['bits_per_byte'] is not None
           else '-')
    fallback = ('-' if row['partial_fallback_rate'] is None
                else f'{row["partial_fallback_rate"]:.3f}')
    lines.append(f'| {row["name"]} | {flops} | {row["params"] or "-"} | '
                 f'{row["steps"] or "-"} | {bpb} | {_cell(row, "brier_lm", 2)}'
                 f' | {_cell(row, "brier_1")} | {row["num_positions"]} | '
                 f'{fallback} |')
  return '\n'.join(lines)


def decision_table(decision: dict) -> str:
  lines = ['| budget | best token LM | concept family | paired BrierLM '
           '(concept - token) | paired Brier-1 | budget won by (BrierLM; '
           'Brier-1) |', '|---|---|---|---|---|---|']
  primary, fallback = (decision[m]['outcomes'] for m in DECIDING)
  for budget in sorted(primary):
    for family, d in primary[budget]['differences'].items():
      d1 = fallback[budget]['differences'][family]
      lines.append(
          f'| {budget:.3g} | {primary[budget]["best_token"]} | {family} | '
          f'{d["diff"]:+.2f} [{d["ci_low"]:+.2f}, {d["ci_high"]:+.2f}] | '
          f'{d1["diff"]:+.3f} [{d1["ci_low"]:+.3f}, {d1["ci_high"]:+.3f}] | '
          f'{primary[budget]["winner"]}; {fallback[budget]["winner"]} |')
    for family in primary[budget].get('unranked', []):
      lines.append(f'| {budget:.3g} | {primary[budget]["best_token"]} | '
                   f'{family} | not ranked: partial fallback above '
                   f'{MAX_FALLBACK_RATE:.0%} | | |')
  return '\n'.join(lines)


def plot(rows: list[dict], path: str, eval_data: str = PLAYS):
  """BrierLM and Brier-1 against all-in FLOPs: a line and an interval band
  per family, the n-gram ladder as dashed horizontal lines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  shown = [r for r in rows if r['eval_data'] == eval_data]
  references = [r for r in shown if r['budget_flops'] is None]
  for ax, metric, label in zip(axes, ('brier_lm', 'brier_1'),
                               ('BrierLM', 'Brier-1')):
    for i, family in enumerate(scaling.FAMILIES):
      points = sorted((r['flops_all_in'], r[metric], r[f'{metric}_ci_low'],
                       r[f'{metric}_ci_high']) for r in shown
                      if r['family'] == family and r['budget_flops'])
      if not points:
        continue
      x, y, low, high = map(np.array, zip(*points))
      ax.plot(x, y, marker='osD^vP'[i], color=f'C{i}', label=family)
      ax.fill_between(x, low, high, color=f'C{i}', alpha=0.2)
    for j, ref in enumerate(references):
      ax.axhline(ref[metric], linestyle='--',
                 color=f'C{len(scaling.FAMILIES) + j}', alpha=0.7,
                 label=ref['family'])
    ax.set_xscale('log')
    ax.set_xticks(scaling.BUDGETS, [budget_text(b) for b in scaling.BUDGETS])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel='all-in training FLOPs', ylabel=label,
           title=f'{label}, Shakespeare test plays' if eval_data == PLAYS
           else f'{label}, {os.path.basename(eval_data)}')
    ax.grid(alpha=0.3, which='both')
  axes[1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  figure.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(figure)


def commits_by_family(values: list[str]) -> dict:
  """--commit values, COMMIT or FAMILY=COMMIT, as {family or None: commit};
  None is every other family's (default HEAD)."""
  commits = {None: None}
  for value in values:
    family, _, commit = value.rpartition('=')
    if family and family not in scaling.FAMILIES:
      raise UserError(f'--commit={value}: {family} is not one of '
                      f'{scaling.FAMILIES}')
    commits[family or None] = commit
  if commits[None] is None:
    commits[None] = _head()
  return commits


def study_rows(root: str, commits: dict) -> list[dict]:
  """Every trained and evaluated run under `root`, on every text, each
  with its family's commit (`commits_by_family`)."""
  rows = []
  for budget in scaling.BUDGETS:
    for family in scaling.FAMILIES:
      path = os.path.join(root, run_name(family, budget))
      commit = commits.get(family, commits[None])
      for data in (PLAYS, PROSE):
        try:
          rows.append(run_row(path, family, budget, data, commit,
                              with_terms=True))
        except UserError:
          continue  # not trained or not evaluated yet: left out
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', help='The sweep root of scaling.py.')
  parser.add_argument('--ngram', action='append', default=[],
                      help='A latentlm.ngram --out directory (repeatable).')
  parser.add_argument('--out', help='Writes scaling.json and scaling.png.')
  parser.add_argument('--commit', action='append', default=[],
                      help='The commit the runs were made at (default HEAD); '
                      'FAMILY=COMMIT for one family (repeatable).')
  parser.add_argument('--row', help='Print the row of this one run.')
  parser.add_argument('--family')
  parser.add_argument('--budget', type=float)
  parser.add_argument('--eval_data', default=PLAYS)
  a = parser.parse_args(argv)
  try:
    if a.row:
      if a.family is None or a.budget is None:
        raise UserError('--row needs --family and --budget')
      print(json.dumps(run_row(a.row, a.family, a.budget, a.eval_data,
                               commits_by_family(a.commit)[None])))
      return
    if not a.root or not a.out:
      raise UserError('give --root and --out (or --row=WORKDIR)')
    commits = commits_by_family(a.commit)
    rows = study_rows(a.root, commits)
    decision = decide(rows)
    for directory in a.ngram:
      rows += ngram_rows(directory, commits[None])
    public = [{k: v for k, v in r.items()
               if k not in ('brier_terms', 'positions_key')} for r in rows]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, 'scaling.json'), 'w') as f:
      json.dump(public, f, indent=1)
      f.write('\n')
    plot(public, os.path.join(a.out, 'scaling.png'))
    plot(public, os.path.join(a.out, 'scaling_prose.png'), PROSE)
    print(f'verdict: {decision["verdict"]} (by {decision["deciding_metric"]}; '
          f'BrierLM alone: {decision["brier_lm"]["verdict"]})\n')
    print(decision_table(decision) + '\n')
    prose = decide([r for r in rows if 'brier_terms' in r], PROSE)
    print(f'the same rule on {PROSE} (not part of the verdict): '
          f'{prose["verdict"]} (by {prose["deciding_metric"]})\n')
    print(decision_table(prose) + '\n')
    for data in (PLAYS, PROSE):
      print(f'{data}:\n\n' + results_table(public, data) + '\n')
  except UserError as e:
    parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
  main()
