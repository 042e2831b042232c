"""launch/unit_stats.py: what a segmentation's units are."""

import os

import numpy as np
import pytest

from latentlm.core import config_lib
from latentlm.data import segment

import helpers

stats_module = config_lib.load_module(
    os.path.join(helpers.REPO, 'launch', 'unit_stats.py'))
PAD = 0


def _stats(units):
  K = max(map(len, units))
  chunks_MxK = np.full((len(units), K), PAD, np.int32)
  for i, unit in enumerate(units):
    chunks_MxK[i, :len(unit)] = list(unit)
  return stats_module.unit_stats(chunks_MxK, np.frombuffer(
      b''.join(units), np.uint8).astype(np.int32), PAD)


def test_spaced_words_start_at_edges_and_keep_words_whole():
  stats = _stats([b'To', b' be,', b' or', b'\n not'])
  assert stats['bytes_per_concept'] == 14 / 4
  assert stats['units_at_edges'] == 1.0 and stats['words_whole'] == 1.0
  assert stats['length_shares'][3] == 0.25  # ' or'


def test_a_unit_inside_a_word_cuts_it():
  # 'question' is cut once; 'the ' starts at an edge, 'stion' does not.
  stats = _stats([b'the ', b'que', b'stion ', b'is'])
  assert stats['units_at_edges'] == 3 / 4
  assert stats['words_whole'] == pytest.approx(2 / 3)


def test_the_units_must_cover_the_text():
  chunks_MxK = segment.segment(np.frombuffer(b'ab cd', np.uint8), 'word', 4,
                               PAD)
  with pytest.raises(ValueError, match='cover'):
    stats_module.unit_stats(chunks_MxK, np.zeros(9, np.int32) + 97, PAD)
