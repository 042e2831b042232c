"""launch/scaling_table.py: the scaling study's decision rule, as its config
writes it, and one run's row from its workdir."""

import json
import os

import numpy as np
import pytest

from latentlm.core import config_lib
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError

import helpers

table = config_lib.load_module(
    os.path.join(helpers.REPO, 'launch', 'scaling_table.py'))
BUDGETS = table.scaling.BUDGETS
NUM_POSITIONS = 2000


def _terms(rate: float, seed: int):
  """Per-position Brier terms (positions x 4) of a model that gets a
  position's every n-gram right with probability `rate` (terms 1) and
  otherwise wrong (terms 0)."""
  right_P = np.random.default_rng(seed).random(NUM_POSITIONS) < rate
  return np.repeat(right_P[:, None], 4, axis=1).astype(float)


def _row(family, budget, rate, seed, fallback=0.0):
  return dict(family=family, budget_flops=budget, eval_data=table.PLAYS,
              name=table.run_name(family, budget), positions_key='k',
              brier_terms=_terms(rate, seed).tolist(),
              brier_lm=100 * float(_terms(rate, seed).mean()),
              partial_fallback_rate=None if family in (
                  table.scaling.TOKEN_FAMILIES) else fallback)


def _study(rates_by_budget, fallbacks=None):
  """Rows of every family; rates_by_budget[b] = {family: rate};
  fallbacks = {family: partial_fallback_rate} (default 0)."""
  fallbacks = fallbacks or {}
  return [_row(family, budget, rate, seed=10 * i + j,
               fallback=fallbacks.get(family, 0.0))
          for i, budget in enumerate(BUDGETS)
          for j, (family, rate) in enumerate(rates_by_budget[budget].items())]


def _rates(bytes_, spm, flow, energy, word=None, entropy=None):
  """The units of meaning score as the flow family unless given."""
  return dict(bytes=bytes_, spm=spm, flow=flow, energy=energy,
              word=flow if word is None else word,
              entropy=flow if entropy is None else entropy)


def test_tokens_win_when_every_concept_family_loses_at_the_top_and_once_more():
  rows = _study({BUDGETS[0]: _rates(.5, .5, .5, .5),
                 BUDGETS[1]: _rates(.6, .7, .3, .3),
                 BUDGETS[2]: _rates(.8, .7, .4, .3)})
  decision = table.decide(rows)
  outcomes = decision['brier_lm']['outcomes']
  assert outcomes[BUDGETS[0]]['winner'] == 'not resolved'
  assert outcomes[BUDGETS[1]]['best_token'] == 'spm'
  assert outcomes[BUDGETS[2]]['best_token'] == 'bytes'
  assert [outcomes[b]['winner'] for b in BUDGETS[1:]] == ['tokens'] * 2
  assert decision['verdict'] == 'tokens'
  assert decision['deciding_metric'] == 'brier_lm'


def test_one_concept_family_ahead_wins_the_budget_for_concepts():
  rows = _study({BUDGETS[0]: _rates(.3, .3, .6, .2),
                 BUDGETS[1]: _rates(.5, .5, .5, .5),
                 BUDGETS[2]: _rates(.3, .3, .2, .6)})
  decision = table.decide(rows)
  assert [decision['brier_lm']['outcomes'][b]['winner'] for b in BUDGETS] == [
      'concepts', 'not resolved', 'concepts']
  assert decision['verdict'] == 'concepts'


def test_a_win_at_the_top_alone_is_not_a_verdict():
  rows = _study({BUDGETS[0]: _rates(.5, .5, .5, .5),
                 BUDGETS[1]: _rates(.5, .5, .5, .5),
                 BUDGETS[2]: _rates(.8, .7, .4, .3)})
  decision = table.decide(rows)
  assert decision['verdict'] == 'not resolved'
  assert decision['deciding_metric'] == 'brier_1'  # the rule's fallback


def test_a_missing_run_leaves_the_study_incomplete():
  rates = _rates(.8, .7, .4, .3)
  rows = [r for r in _study({b: rates for b in BUDGETS})
          if not (r['family'] == 'energy' and r['budget_flops'] == BUDGETS[2])]
  decision = table.decide(rows)
  assert decision['brier_lm']['outcomes'][BUDGETS[2]]['winner'] == (
      'tokens (incomplete)')
  assert decision['verdict'] == 'incomplete'
  only_bytes_at_the_top = [r for r in rows if r['budget_flops'] != BUDGETS[2]
                           or r['family'] == 'bytes']
  assert table.decide(only_bytes_at_the_top)['verdict'] == 'incomplete'


def test_a_run_whose_partial_units_fell_back_is_not_ranked():
  # Word units would win every budget, but fell back on 5% of positions.
  rows = _study({b: _rates(.6, .6, .3, .3, word=.9) for b in BUDGETS},
                fallbacks={'word': 0.05})
  decision = table.decide(rows)
  for outcome in decision['brier_lm']['outcomes'].values():
    assert outcome['unranked'] == ['word'] and outcome['winner'] == 'tokens'
  assert decision['verdict'] == 'tokens'
  assert 'not ranked' in table.decision_table(decision)


def test_commits_by_family():
  commits = table.commits_by_family(['abc', 'word=def', 'entropy=0123'])
  assert commits == {None: 'abc', 'word': 'def', 'entropy': '0123'}
  with pytest.raises(UserError, match='not one of'):
    table.commits_by_family(['words=def'])


def test_runs_scored_on_other_positions_are_never_paired():
  rows = _study({b: _rates(.5, .5, .5, .5) for b in BUDGETS})
  rows[2]['positions_key'] = 'other'
  with pytest.raises(UserError, match='different positions'):
    table.decide(rows)


def test_a_run_row_reads_its_workdir(tmp_path):
  config = helpers.tiny_token_lm(str(tmp_path / 'tfds'))
  workdir = workdir_lib.Workdir(str(tmp_path / 'run'))
  workdir.prepare(config)
  with open(os.path.join(workdir.path, 'metrics.jsonl'), 'w') as f:
    for step in (1, 2):
      f.write(json.dumps({'step': step, 'train/flops_all_in': 10.0 * step})
              + '\n')
  brier = {f'{m}{end}': 0.5 for m in table.METRICS
           for end in ('', '_ci_low', '_ci_high')}
  records = [
      dict(metric='default', data=table.PLAYS, bits_per_byte=2.5),
      dict(brier, metric='brier', data=table.PLAYS, num_positions=8,
           brier_terms=[[1, 0, 0, 0]] * 8, positions_key='k'),
  ]
  with open(os.path.join(workdir.path, 'evaluations.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records))
  row = table.run_row(workdir.path, 'bytes', 5e12, commit='abc')
  assert row['flops_all_in'] == 20.0 and row['steps'] == 2
  assert row['bits_per_byte'] == 2.5 and row['num_positions'] == 8
  assert row['params'] > 0 and row['commit'] == 'abc'
  assert row['name'] == 'budget-5e12_family-bytes'
  assert row['command'].startswith(
      'python -m latentlm.train --config=configs/paper/scaling.py:'
      'family=bytes,budget=5e12 --workdir=$WORKDIR')
  assert 'brier_terms' not in row
  with pytest.raises(UserError, match='no BrierLM evaluation'):
    table.run_row(workdir.path, 'bytes', 5e12, eval_data=table.PROSE)
