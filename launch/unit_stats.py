"""What a run's units are: their lengths and how they sit on words.

  python launch/unit_stats.py --workdir=DIR [--split=test] [--text=FILE]

DIR is a run with a stage-1 autoencoder (an autoencoder, a concept LM or a
pipeline such as configs/entropy_units.py). Its segmentation cuts the text
(the split of the run's corpus, or FILE), and the last line is one JSON
object: bytes per concept, the share of units of each length, the share of
units that start at an edge between whitespace and a word (either edge, so
that leading and trailing whitespace count alike), the share of words that
no unit cuts (a word longer than K is always cut), and the first units of
the text.
"""

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from latentlm.core.errors import UserError
from latentlm.data import corpus
from latentlm.data import segment
from latentlm.training import runs

SHOWN_UNITS = 40


def unit_stats(chunks_MxK: np.ndarray, tokens_N: np.ndarray,
               pad_id: int) -> dict:
  """The statistics of the module doc for units `chunks_MxK` of `tokens_N`."""
  lengths_M = (chunks_MxK != pad_id).sum(-1)
  if lengths_M.sum() != len(tokens_N):
    raise ValueError('the units do not cover the text')
  unit_start_N = np.zeros(len(tokens_N), bool)
  unit_start_N[np.concatenate([[0], np.cumsum(lengths_M)[:-1]])] = True
  space_N = np.isin(tokens_N, segment.WHITESPACE)
  previous_space_N = np.concatenate([[True], space_N[:-1]])
  # An edge: whitespace starts or a word starts (either side of a unit's
  # whitespace, leading or trailing).
  edge_N = space_N != previous_space_N
  edge_N[:1] = True
  # Words, numbered from 1; a unit starting inside one (not at its first
  # byte) splits it.
  word_N = np.cumsum(~space_N & previous_space_N) * ~space_N
  split_words = np.unique(word_N[unit_start_N & ~space_N & ~previous_space_N])
  K = chunks_MxK.shape[1]
  return dict(
      bytes_per_concept=float(lengths_M.mean()),
      length_shares={int(n): float(np.mean(lengths_M == n))
                     for n in range(1, K + 1)},
      units_at_edges=float(edge_N[unit_start_N].mean()),
      words_whole=1.0 - len(split_words) / max(int(word_N.max()), 1),
      num_units=int(len(lengths_M)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='test')
  parser.add_argument('--text', help='A text file instead of the split.')
  a = parser.parse_args(argv)
  try:
    run = runs.load(a.workdir)
    task = getattr(run.task, 'autoencoder', run.task)
    if not hasattr(task, 'unit_fn') or not hasattr(task, 'ends_unit'):
      raise UserError(f'{a.workdir} has no stage-1 segmentation: give an '
                      'autoencoder, concept LM or pipeline run')
    if a.text:
      with open(a.text, 'rb') as f:
        texts = [f.read()]
    else:
      texts = [d['text'] for d in corpus.load_split(run.config.data, a.split)]
    tokenizer = run.task.tokenizer
    tokens_N = np.concatenate([np.asarray(tokenizer.encode(
        t.decode('utf-8', errors='replace')), np.int32) for t in texts])
    chunks_MxK = np.asarray(task.unit_fn(tokens_N))
    stats = unit_stats(chunks_MxK, tokens_N, task.pad_id)
    stats['first_units'] = [
        bytes(c[c != task.pad_id].tolist()).decode('utf-8', 'replace')
        for c in chunks_MxK[:SHOWN_UNITS]]
    print(json.dumps(stats))
  except UserError as e:
    parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
  main()
