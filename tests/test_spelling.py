"""latentlm.spelling's pieces: the prompts it draws and distinct-2 (the
whole command runs on the main job in test_main_job.py)."""

import numpy as np
import pytest

from latentlm import spelling
from latentlm.core.errors import UserError

PLAY = ('Julius Caesar\n\nACT I\n\nFLAVIUS.\nHence! home, you idle creatures\n'
        'get you home.\n\nMARULLUS.\nWhere is thy leather apron?\n')


def test_a_prompt_is_the_start_of_a_speech():
  speeches = {'ACT I\n\n', 'FLAVIUS.\nHence! home, you idle creatures\n',
              'MARULLUS.\nWhere is thy leather apron?\n'}
  drawn = {spelling.speech_prompt(PLAY, np.random.default_rng(seed))
           for seed in range(40)}
  assert drawn == speeches
  # A seed always draws the same prompt.
  assert spelling.speech_prompt(PLAY, np.random.default_rng(3)) == (
      spelling.speech_prompt(PLAY, np.random.default_rng(3)))


def test_a_text_without_a_blank_line_is_a_clear_error():
  with pytest.raises(UserError, match='blank line'):
    spelling.speech_prompt('one line\nand another\n', np.random.default_rng(0))


def test_distinct_2_counts_repeated_word_pairs_within_a_text():
  # "a b a b a": pairs (a b) (b a) (a b) (b a): 2 distinct of 4; "c d": 1/1.
  assert spelling.distinct_2(['a b a b a', 'c d']) == 3 / 5
  assert spelling.distinct_2(['one']) == 0
