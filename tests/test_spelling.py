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


def test_word_letters_is_the_mean_length_without_apostrophes():
  # the(3) bar(3) o'er(3) mar(3) creatures(9): 21 letters, 5 words.
  assert spelling.word_letters(["the bar o'er", 'mar, creatures!']) == 21 / 5
  assert spelling.word_letters(['', '!!']) == 0


def test_long_words_found_counts_only_words_of_five_letters_or_more():
  vocabulary = {'the', 'creatures', 'leather'}
  # Long words: creatures (found), lether (not), apron (not); short ones
  # (the, zz) count neither way.
  texts = ['the creatures zz', 'lether apron']
  assert spelling.long_words_found(texts, vocabulary) == 1 / 3
  assert spelling.long_words_found(['the zz'], vocabulary) == 0
