"""launch/units_table.py: the segmentation rule of configs/paper/scaling.py
(units of meaning against fixed K=4 chunks)."""

import os

from latentlm.core import config_lib

import helpers
import test_scaling_table as scaling_rows

units = config_lib.load_module(
    os.path.join(helpers.REPO, 'launch', 'units_table.py'))
BUDGETS = scaling_rows.BUDGETS
_rates = scaling_rows._rates  # pylint: disable=protected-access


def test_units_that_beat_fixed_chunks_at_the_top_and_once_more_win():
  rows = scaling_rows._study({  # pylint: disable=protected-access
      BUDGETS[0]: _rates(.5, .5, .5, .5, word=.5, entropy=.5),
      BUDGETS[1]: _rates(.5, .5, .3, .3, word=.6, entropy=.1),
      BUDGETS[2]: _rates(.5, .5, .3, .3, word=.6, entropy=.1)})
  decision = units.decide(rows)
  word = decision['word']
  assert [word['outcomes']['brier_lm'][b]['winner'] for b in BUDGETS] == [
      'not resolved', 'units', 'units']
  assert word['verdict'] == 'units' and word['deciding_metric'] == 'brier_lm'
  assert decision['entropy']['verdict'] == 'fixed'
  # Its difference is word - flow, paired: positive where word is ahead.
  assert word['outcomes']['brier_1'][BUDGETS[2]]['diff'] > 0.2


def test_an_unranked_run_decides_nothing():
  rows = scaling_rows._study(  # pylint: disable=protected-access
      {b: _rates(.5, .5, .3, .3, word=.6) for b in BUDGETS},
      fallbacks={'word': 0.02})
  decision = units.decide(rows)
  assert all(o['winner'] == 'not ranked'
             for o in decision['word']['outcomes']['brier_lm'].values())
  assert decision['word']['verdict'] == 'not resolved'


def test_a_missing_budget_is_incomplete():
  rows = [r for r in scaling_rows._study(  # pylint: disable=protected-access
      {b: _rates(.5, .5, .3, .3, word=.6) for b in BUDGETS})
          if not (r['family'] == 'word' and r['budget_flops'] == BUDGETS[0])]
  assert units.decide(rows)['word']['verdicts']['brier_lm'] == 'incomplete'
