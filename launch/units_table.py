"""Units of meaning against fixed chunks: the segmentation rule of
configs/paper/scaling.py on the scaling sweep's word, entropy and flow runs.

  python launch/units_table.py --root=/tmp/paper/scaling \\
      --commit=COMMIT [--commit=FAMILY=COMMIT] --out=docs/results

prints, per budget, each unit kind's paired difference from fixed K=4
(the flow family: same head, stage-1 recipe and budget) on BrierLM and
Brier-1, each kind's verdict, and the runs' rows with their bytes per
concept; writes OUT/units.png. The runs' own rows and commands are in
scaling.json (launch/scaling_table.py).
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from latentlm.core import config_lib
from latentlm.core.errors import UserError

from configs.paper import scaling

table = config_lib.load_module(os.path.join(REPO, 'launch',
                                            'scaling_table.py'))

FIXED = 'flow'  # fixed K=4 chunks, the unit kinds' reference


def kind_outcomes(rows: list[dict], kind: str, metric: str,
                  eval_data: str = table.PLAYS) -> dict:
  """{budget: (kind - fixed) on `metric`, with 'winner'} for the budgets
  where both ran; an unranked run's budget is 'not ranked'."""
  outcomes = {}
  for budget, families in sorted(table.rows_by_budget(rows,
                                                      eval_data).items()):
    if kind not in families or FIXED not in families:
      continue
    unit, fixed = families[kind], families[FIXED]
    if not (table.ranked(unit) and table.ranked(fixed)):
      outcomes[budget] = dict(winner='not ranked')
      continue
    d = table.paired(unit, fixed, metric)
    d['winner'] = (('units' if d['diff'] > 0 else 'fixed') if d['resolved']
                   else 'not resolved')
    outcomes[budget] = d
  return outcomes


def decide(rows: list[dict], eval_data: str = table.PLAYS) -> dict:
  """Each unit kind's outcomes and verdict; Brier-1 decides a kind whose
  BrierLM verdict is 'not resolved'."""
  result = {}
  for kind in scaling.UNIT_FAMILIES:
    by_metric = {m: kind_outcomes(rows, kind, m, eval_data)
                 for m in table.DECIDING}
    verdicts = {m: table.verdict(o, sides=('units', 'fixed'))
                for m, o in by_metric.items()}
    deciding = 'brier_1' if verdicts['brier_lm'] == 'not resolved' else (
        'brier_lm')
    result[kind] = dict(outcomes=by_metric, verdicts=verdicts,
                        deciding_metric=deciding,
                        verdict=verdicts[deciding])
  return result


def _difference(d: dict, digits: int) -> str:
  if 'diff' not in d:
    return d['winner']
  return (f'{d["diff"]:+.{digits}f} [{d["ci_low"]:+.{digits}f}, '
          f'{d["ci_high"]:+.{digits}f}]')


def decision_table(decision: dict) -> str:
  lines = ['| budget | units | paired BrierLM (units - fixed K=4) | paired '
           'Brier-1 | budget won by (BrierLM; Brier-1) |',
           '|---|---|---|---|---|']
  for kind, result in decision.items():
    primary, fallback = (result['outcomes'][m] for m in table.DECIDING)
    for budget in sorted(primary):
      lines.append(
          f'| {budget:.3g} | {kind} | {_difference(primary[budget], 2)} | '
          f'{_difference(fallback[budget], 3)} | '
          f'{primary[budget]["winner"]}; {fallback[budget]["winner"]} |')
  return '\n'.join(lines)


def rows_table(rows: list[dict], eval_data: str = table.PLAYS) -> str:
  lines = ['| run | all-in FLOPs | steps | bytes/concept | BrierLM | Brier-1 '
           '| fallback |', '|---|---|---|---|---|---|---|']
  for row in rows:
    if row['eval_data'] != eval_data or row['family'] not in (
        FIXED, *scaling.UNIT_FAMILIES):
      continue
    per_concept = ('-' if row['bytes_per_concept'] is None
                   else f'{row["bytes_per_concept"]:.2f}')
    fallback = ('-' if row['partial_fallback_rate'] is None
                else f'{row["partial_fallback_rate"]:.3f}')
    lines.append(f'| {row["name"]} | {row["flops_all_in"]:.3g} | '
                 f'{row["steps"]} | {per_concept} | '
                 f'{table._cell(row, "brier_lm", 2)} | '  # pylint: disable=protected-access
                 f'{table._cell(row, "brier_1")} | {fallback} |')  # pylint: disable=protected-access
  return '\n'.join(lines)


def plot(rows: list[dict], path: str):
  """BrierLM and Brier-1 of fixed, word and entropy units against all-in
  FLOPs, with interval bands."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, metric, label in zip(axes, table.DECIDING, ('BrierLM', 'Brier-1')):
    for i, family in enumerate((FIXED, *scaling.UNIT_FAMILIES)):
      points = sorted((r['flops_all_in'], r[metric], r[f'{metric}_ci_low'],
                       r[f'{metric}_ci_high']) for r in rows
                      if r['family'] == family and r['eval_data'] == table.PLAYS)
      if not points:
        continue
      x, y, low, high = map(np.array, zip(*points))
      name = 'fixed K=4' if family == FIXED else family
      ax.plot(x, y, marker='os^'[i], color=f'C{i}', label=name)
      ax.fill_between(x, low, high, color=f'C{i}', alpha=0.2)
    ax.set_xscale('log')
    ax.set_xticks(scaling.BUDGETS,
                  [table.budget_text(b) for b in scaling.BUDGETS])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel='all-in training FLOPs', ylabel=label,
           title=f'{label}, Shakespeare test plays')
    ax.grid(alpha=0.3, which='both')
  axes[0].legend(fontsize=8)
  figure.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(figure)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True,
                      help='The sweep root of scaling.py.')
  parser.add_argument('--commit', action='append', default=[],
                      help='As launch/scaling_table.py --commit.')
  parser.add_argument('--out', help='Writes units.png here.')
  a = parser.parse_args(argv)
  try:
    rows = table.study_rows(a.root, table.commits_by_family(a.commit))
    decision = decide(rows)
    for kind, result in decision.items():
      print(f'{kind}: {result["verdict"]} (by {result["deciding_metric"]}; '
            f'BrierLM alone: {result["verdicts"]["brier_lm"]})')
    print('\n' + decision_table(decision) + '\n')
    print(rows_table(rows))
    if a.out:
      os.makedirs(a.out, exist_ok=True)
      plot(rows, os.path.join(a.out, 'units.png'))
  except UserError as e:
    parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
  main()
