"""Byte n-grams: a brute-force Witten-Bell on dicts, sampling, the command."""

import collections
import json
import math
import os
import re

import numpy as np
import pytest

import helpers
from latentlm import ngram
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError

# Bytes 0 and 255 and a document shorter than the highest order test the
# packed keys and the document boundaries.
TINY = [b'abracadabra, cadabra abra!\n', b'\x00\xff\x00\xffab', b'ab', b'']
CONTEXTS = [b'', b'a', b'ab', b'abr', b'xyz', b'\xff\x00', b'zzab',
            b'q\x00\xff', b'cadab', b'long context that ends in abra']


class BruteWittenBell:
  """The same smoothing, written from its definition: Python dicts of
  (context, next byte) counts and a recursion from the full context down."""

  def __init__(self, documents, order):
    self.order = order
    self.followers = collections.defaultdict(collections.Counter)
    for doc in documents:
      for i in range(len(doc)):
        for k in range(1, order + 1):
          if i - k + 1 >= 0:
            self.followers[doc[i - k + 1:i]][doc[i]] += 1

  def prob(self, byte: int, context: bytes) -> float:
    lower = self.prob(byte, context[1:]) if context else 1 / 256
    seen = self.followers.get(context, {})
    total, types = sum(seen.values()), len(seen)
    if total == 0:
      return lower
    return (seen.get(byte, 0) + types * lower) / (total + types)

  def context_of(self, text: bytes) -> bytes:
    return text[max(0, len(text) - self.order + 1):] if self.order > 1 else b''


@pytest.mark.parametrize('order', [1, 2, 3, 5])
def test_probabilities_equal_a_brute_force_count(order):
  model = ngram.fit(TINY, order)
  brute = BruteWittenBell(TINY, order)
  probs_Bx256 = model.next_byte_probs(CONTEXTS)
  expected = [[brute.prob(b, brute.context_of(c)) for b in range(256)]
              for c in CONTEXTS]
  np.testing.assert_allclose(probs_Bx256, expected, rtol=1e-12)
  log2_probs = [math.log2(brute.prob(doc[i], brute.context_of(doc[:i])))
                for doc in TINY for i in range(len(doc))]
  np.testing.assert_allclose(model.log2_probs(TINY), log2_probs, rtol=1e-12)


@pytest.mark.parametrize('order', [1, 2, 4, 8])
def test_probabilities_sum_to_one_for_every_context(order):
  model = ngram.fit(TINY, order)
  rng = np.random.default_rng(0)
  unseen = [rng.integers(0, 256, n, np.uint8).tobytes() for n in range(12)]
  probs_Bx256 = model.next_byte_probs(CONTEXTS + unseen)
  assert np.all(probs_Bx256 > 0)
  np.testing.assert_allclose(probs_Bx256.sum(1), 1, rtol=1e-12)
  # No training document as long as the order: the high orders are empty.
  short = ngram.fit([b'ab', b'c'], order).next_byte_probs(CONTEXTS)
  np.testing.assert_allclose(short.sum(1), 1, rtol=1e-12)


def test_order_1_bits_per_byte_is_the_smoothed_unigram_cross_entropy():
  train, held_out = b'to be or not to be, that is the question', b'tobeornot?'
  counts = collections.Counter(train)
  types, total = len(counts), len(train)
  expected = -sum(math.log2((counts[b] + types / 256) / (total + types))
                  for b in held_out) / len(held_out)
  model = ngram.fit([train], 1)
  assert model.bits_per_byte([held_out]) == pytest.approx(expected, rel=1e-12)


def test_contexts_do_not_cross_documents():
  model = ngram.fit([b'ab', b'bd', b'cd'], 2)
  bigram = lambda pair: np.array([pair[0] << 8 | pair[1]], np.uint64)
  assert model.counts[1].ngram_counts_of(bigram(b'bd'))[0] == 1
  for boundary in (b'bb', b'dc'):  # ab|bd, bd|cd: no bigrams
    assert model.counts[1].ngram_counts_of(bigram(boundary))[0] == 0
  whole = model.log2_probs([b'abcd'])
  parts = model.log2_probs([b'ab', b'cd'])
  assert whole[2] != parts[2]  # 'c' after 'b', not from the start
  assert parts[2] == model.log2_probs([b'cd'])[0]


def test_higher_orders_do_better_on_a_repetitive_text():
  text = b'the cat sat on the mat. the dog sat on the log. ' * 40
  bits = [ngram.fit([text], n).bits_per_byte([text[:200]])
          for n in range(1, 6)]
  assert all(a > b for a, b in zip(bits, bits[1:])), bits


def test_sampling_frequencies_match_next_byte_probs():
  model = ngram.fit(TINY, 3)
  num = 20000
  rng = np.random.default_rng(1)
  contexts = [b'ab', b'zz']
  samples = model.sample(contexts * num, 2, rng)
  for c, context in enumerate(contexts):
    rows = samples[c::2]
    first = np.bincount([s[0] for s in rows], minlength=256) / num
    probs_256 = model.next_byte_probs([context])[0]
    tolerance = 5 * np.sqrt(probs_256 * (1 - probs_256) / num) + 1e-9
    np.testing.assert_array_less(np.abs(first - probs_256), tolerance)
    # The second byte is drawn given the first: the window moved on.
    pairs = collections.Counter(rows)
    top = pairs.most_common(1)[0][0]
    exact = (probs_256[top[0]] *
             model.next_byte_probs([context + top[:1]])[0][top[1]])
    assert abs(pairs[top] / num - exact) < 5 * np.sqrt(exact / num)


def test_continuations_are_two_seeded_rows_per_context():
  model = ngram.fit(TINY, 3)
  sample = ngram.continuations(model, max_new_bytes=16)
  contexts = [b'abra', b'cad'] * 20
  out = sample(contexts, 7)
  assert len(out) == 2 * len(contexts)
  # Bytes: BrierLM reads 4; the sampler stops there.
  assert all(len(text) == 4 and ended is False for text, ended in out)
  assert out == sample(contexts, np.random.default_rng(7))
  assert out != sample(contexts, 8)
  assert any(a != b for a, b in zip(out[0::2], out[1::2]))  # independent
  words = ngram.continuations(ngram.fit([b'to be or not to be '], 2), 64,
                              'words')(contexts, 0)
  four_words = re.compile(rb'(\s*\S+\s){4}')
  assert all(four_words.match(text) for text, _ in words)  # then it stops:
  assert not all(four_words.match(text[:-1]) for text, _ in words)
  assert {len(t) for t, _ in ngram.continuations(model, 2)(contexts, 0)} == {2}


def test_bad_orders_and_empty_texts_are_user_errors():
  with pytest.raises(UserError, match='order 0 is not in 1..8'):
    ngram.fit(TINY, 0)
  with pytest.raises(UserError, match='order 9'):
    ngram.parse_orders('2,9')
  with pytest.raises(UserError, match='not a comma-separated list'):
    ngram.parse_orders('2,x')
  with pytest.raises(UserError, match='training text is empty'):
    ngram.fit([b'', b''], 2)
  with pytest.raises(UserError, match='evaluation text is empty'):
    ngram.fit(TINY, 2).bits_per_byte([b''])


def test_a_reference_directory_gains_records_but_keeps_its_model(tmp_path):
  reference = dict(family='ngram-2', order=2, smoothing='witten-bell',
                   data='files:train')
  directory = str(tmp_path / 'ngram-2')
  ngram.write_reference(directory, reference, [{'metric': 'default'}])
  ngram.write_reference(directory, reference, [{'metric': 'brier',
                                                'terms': np.zeros(2)}])
  with open(os.path.join(directory, 'evaluations.jsonl')) as f:
    assert [json.loads(line) for line in f] == [
        {'metric': 'default'}, {'metric': 'brier', 'terms': [0.0, 0.0]}]
  with pytest.raises(UserError, match="data='files:train', not 'other:train'"):
    ngram.write_reference(directory, dict(reference, data='other:train'), [])


# ---------------------------------------------------------------- the command
@pytest.fixture(scope='module')
def fake_run(tmp_path_factory):
  """A workdir whose data is one text file (split 90/5/5 by lines)."""
  tmp = tmp_path_factory.mktemp('ngram')
  rng = np.random.default_rng(0)
  words = ['to', 'be', 'or', 'not', 'the', 'question', 'whether', "'tis"]
  lines = [' '.join(rng.choice(words, 8)) + '\n' for _ in range(600)]
  text_path = tmp / 'plays.txt'
  text_path.write_text(''.join(lines))
  config = helpers.load_config('token_lm', 'size=nano')
  config.data.name = 'files'
  config.data.files = str(text_path)
  config.data.data_dir = str(tmp / 'tfds')
  workdir = workdir_lib.Workdir(str(tmp / 'run'))
  workdir.prepare(config)
  return workdir.path, tmp


def test_command_writes_a_reference_per_order(fake_run):
  run_dir, tmp = fake_run
  out = tmp / 'refs'
  args = [f'--workdir={run_dir}', '--orders=1,3', f'--out={out}',
          '--split=test', '--num_positions=32', '--block_bytes=16',
          '--max_new_bytes=8']
  result = helpers.run_module('ngram', *args)
  assert result.returncode == 0, result.stderr
  rows = helpers.last_json_line(result.stdout)
  assert [r['family'] for r in rows] == ['ngram-1', 'ngram-3']
  assert rows[0]['bits_per_byte'] > rows[1]['bits_per_byte']
  for row in rows:
    directory = out / row['family']
    reference = json.loads((directory / 'reference.json').read_text())
    assert reference['family'] == row['family']
    assert reference['order'] == row['order']
    assert reference['smoothing'] == 'witten-bell'
    assert reference['data'] == 'files:train'
    lines = (directory / 'evaluations.jsonl').read_text().splitlines()
    default, brier = [json.loads(line) for line in lines]
    assert default['metric'] == 'default' and brier['metric'] == 'brier'
    assert default['data'] == brier['data'] == 'files:test'
    assert default['bits_per_byte'] == pytest.approx(row['bits_per_byte'])
    assert default['num_bytes'] > 0 and default['step'] == brier['step']
    assert brier['num_positions'] == 32
    assert 0 <= brier['brier_lm'] <= 100
    assert -1 <= brier['brier_1'] <= 1
  assert not [p for p in os.listdir(out / 'ngram-1') if p.startswith('.tmp')]


def test_a_config_names_the_data_as_its_run_does(fake_run):
  run_dir, tmp = fake_run
  args = ['--orders=2', '--split=test', '--num_positions=16',
          '--block_bytes=16', '--max_new_bytes=8']
  by_run = helpers.run_module('ngram', f'--workdir={run_dir}',
                              f'--out={tmp / "by_run"}', *args)
  config = tmp / 'files_config.py'
  config.write_text(
      'from configs import token_lm\n'
      'def get_config(arg=None):\n'
      "  c = token_lm.get_config('size=nano')\n"
      f"  c.data.name, c.data.files = 'files', {str(tmp / 'plays.txt')!r}\n"
      f"  c.data.data_dir = {str(tmp / 'tfds')!r}\n"
      '  return c\n')
  by_config = helpers.run_module('ngram', f'--config={config}',
                                 f'--out={tmp / "by_config"}', *args)
  assert by_run.returncode == by_config.returncode == 0, by_config.stderr
  untimed = lambda rows: [{k: v for k, v in r.items()
                           if not k.endswith('_s')} for r in rows]
  assert (untimed(helpers.last_json_line(by_config.stdout)) ==
          untimed(helpers.last_json_line(by_run.stdout)))
  both = helpers.run_module('ngram', f'--workdir={run_dir}',
                            f'--config={config}', f'--out={tmp / "both"}')
  assert both.returncode == 2 and 'not both' in both.stderr


@pytest.mark.parametrize('args, message', [
    (['--orders=2,0'], 'error: n-gram order 0 is not in 1..8'),
    (['--workdir=NOWHERE'], 'is not a latentlm workdir (no config.json)'),
    (['--text=EMPTY'], 'empty.txt'),
])
def test_command_bad_input_is_one_line(fake_run, args, message):
  run_dir, tmp = fake_run
  (tmp / 'empty.txt').write_text('')
  args = [a.replace('NOWHERE', str(tmp / 'nowhere'))
          .replace('EMPTY', str(tmp / 'empty.txt')) for a in args]
  result = helpers.run_module('ngram', f'--workdir={run_dir}',
                              f'--out={tmp / "bad"}', *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ')
  assert message in lines[0], lines
