"""The BrierLM protocol: word-end positions, exact completion of a partial
chunk, and intervals that cover the true value on sources with known
probabilities, through the token LM's and the concept LM's sampling code
(their models replaced by samplers with known distributions)."""

import functools
import itertools
import sys
import types

import jax
import numpy as np
import pytest

from latentlm import ngram
from latentlm import tasks
from latentlm.data import segment
from latentlm.data import tokenizers
from latentlm.metrics import brier
from latentlm.metrics import intervals
from latentlm.sampling import concepts as concept_sampling
from latentlm.sampling import tokens as token_sampling

import helpers

TOKENIZER = tokenizers.ByteTokenizer()
ALPHABET = b'ab '
P_SOURCE = np.array([0.6, 0.1, 0.3])  # the text: i.i.d. bytes a, b, ' '
# The concept model: i.i.d. two-byte chunks, not a product of bytes, so
# that what follows a partial chunk depends on it.
CHUNKS = [b'a ', b'b ', b'ab', b'ba', b' a', b'  ']
Q_CHUNKS = np.array([0.25, 0.15, 0.1, 0.1, 0.25, 0.15])
Q_BYTES = np.array([0.4, 0.2, 0.4])  # the token model: i.i.d. bytes


def _numpy_rng(rng):
  return np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel())


def _ids(texts):
  return np.array([list(t) for t in texts], np.int32)


class FakeConceptSampler:
  """ConceptSampler's interface, drawing i.i.d. chunks from Q_CHUNKS."""
  window = 1 << 20

  def __init__(self, task, *args, **kwargs):
    del args, kwargs
    self.task = task

  def _draw(self, rng, n):
    return _ids(CHUNKS)[_numpy_rng(rng).choice(len(CHUNKS), n, p=Q_CHUNKS)]

  def next_chunks(self, context_BxLxK, draws, rng, temperature):
    del temperature
    B = len(context_BxLxK)
    return None, self._draw(rng, B * draws).reshape(B, draws, -1)

  def stream(self, context_BxLxK, rng, max_new, temperature):
    del temperature
    for i in range(max_new):
      yield None, self._draw(jax.random.fold_in(rng, i), len(context_BxLxK))


class FakeTokenSampler:
  """TokenSampler's interface, drawing i.i.d. bytes from Q_BYTES."""
  window = 1 << 20

  def __init__(self, task, params):
    del task, params

  def stream(self, prompt_BxL, rng, max_new, temperature, top_p,
             first_allowed=None):
    del temperature, top_p
    alphabet = np.frombuffer(ALPHABET, np.uint8)
    q = Q_BYTES
    if first_allowed is not None:  # renormalised over the allowed bytes
      q = q * first_allowed[alphabet]
    for i in range(max_new):
      g = _numpy_rng(jax.random.fold_in(rng, i))
      yield alphabet[g.choice(3, len(prompt_BxL), p=q / q.sum())].astype(
          np.int32)
      q = Q_BYTES


def _concept_run():
  K = 2
  task = types.SimpleNamespace(
      tokenizer=TOKENIZER, pad_id=TOKENIZER.pad_id, chunk_len=K,
      head=types.SimpleNamespace(samples_vary=True),
      unit_fn=functools.partial(segment.segment, kind='fixed', K=K,
                                pad_id=TOKENIZER.pad_id),
      autoencoder=tasks.get_task(helpers.load_config('autoencoder',
                                                     f'K={K}')))
  return types.SimpleNamespace(task=task, config=types.SimpleNamespace(
      task='concept_lm'), state=types.SimpleNamespace(params=None,
                                                      frozen=None))


def _source_text(seed, num_bytes):
  rng = np.random.default_rng(seed)
  alphabet = np.frombuffer(ALPHABET, np.uint8)
  return rng.choice(alphabet, num_bytes, p=P_SOURCE).tobytes()


# --------------------------------------------------------------- positions
def test_positions_are_word_ends_with_word_aligned_contexts():
  text = b'To be, or  not to be,\nthat is the question. ' * 20
  chosen, key = brier.positions([text], 16, 50, seed=0, max_new_bytes=32)
  assert len(chosen) == 50
  for context, truth in chosen:
    assert len(context) <= 16
    assert context[:1].isspace() and not context[-1:].isspace()
    assert truth[0][:1].isspace()  # the next byte is whitespace
    assert context + truth[-1] in text
  # Seeded by the text alone: another call (another model) gets the same.
  again, same_key = brier.positions([text], 16, 50, seed=0, max_new_bytes=32)
  assert again == chosen and same_key == key
  _, other_key = brier.positions([text], 16, 50, seed=1, max_new_bytes=32)
  assert other_key != key


def test_a_fixed_k_context_is_cut_to_whole_chunks():
  run = _concept_run()
  chunks_LxK = brier.concept_chunks(run.task, b' to be')
  np.testing.assert_array_equal(chunks_LxK, _ids([b' t', b'o ', b'be']))
  unaligned = brier.concept_chunks(run.task, b' to be or', align_fixed=False)
  assert unaligned[-1][1] == TOKENIZER.pad_id  # ends in a partial chunk
  aligned = brier.concept_chunks(run.task, b' to be or')
  assert TOKENIZER.pad_id not in aligned and len(aligned) == 4


# ------------------------------------------------- completing a partial chunk
def test_completion_draws_the_conditional_of_the_partial_text():
  sampler = FakeConceptSampler(_concept_run().task)
  partial_K = np.array([ord('a'), TOKENIZER.pad_id])
  context_BxLxK = np.zeros((2, 1, 2), np.int32)
  chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
      sampler, context_BxLxK, np.stack([partial_K] * 2), 1000,
      jax.random.key(0), 1.0)
  assert not fell_back_BxR.any()
  texts = [c.astype(np.uint8).tobytes() for c in chosen_BxRxK.reshape(-1, 2)]
  # Q('a ') : Q('ab') = 0.25 : 0.1 among the chunks that start with 'a'.
  share = texts.count(b'a ') / len(texts)
  expected = 0.25 / 0.35
  assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) /
                                              len(texts))
  assert set(texts) == {b'a ', b'ab'}
  assert {tuple(ids) for row in new_ids for ids in row} == {(ord(' '),),
                                                            (ord('b'),)}


def test_completion_that_never_matches_falls_back_and_says_so():
  sampler = FakeConceptSampler(_concept_run().task)
  partial_2xK = np.array([[ord('z'), TOKENIZER.pad_id],
                          [ord('b'), TOKENIZER.pad_id]])
  chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
      sampler, np.zeros((2, 1, 2), np.int32), partial_2xK, 2,
      jax.random.key(1), 1.0, max_draws=64)
  np.testing.assert_array_equal(fell_back_BxR, [[True, True], [False, False]])
  np.testing.assert_array_equal(chosen_BxRxK[0], partial_2xK[[0, 0]])
  assert new_ids[0] == [[], []]


def test_a_full_last_chunk_draws_nothing():
  sampler = FakeConceptSampler(_concept_run().task)
  sampler.next_chunks = None  # it must not be called: a full chunk is whole
  full_1xK = _ids([b'ab'])
  chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
      sampler, np.zeros((1, 1, 2), np.int32), full_1xK, 2, None, 1.0)
  np.testing.assert_array_equal(chosen_BxRxK[0], [full_1xK[0]] * 2)
  assert new_ids == [[[], []]] and not fell_back_BxR.any()


def test_a_short_last_unit_the_segmentation_ended_draws_nothing():
  """Entropy units end where the byte LM says (autoencoder.Task.ends_unit):
  such a unit is whole though shorter than K, and is never extended."""
  sampler = FakeConceptSampler(_concept_run().task)
  sampler.next_chunks = None
  short_2xK = np.array([[ord('a'), TOKENIZER.pad_id]] * 2)
  chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
      sampler, np.zeros((2, 1, 2), np.int32), short_2xK, 2, None, 1.0,
      whole_B=[True, True])
  np.testing.assert_array_equal(chosen_BxRxK.reshape(-1, 2), [short_2xK[0]] * 4)
  assert new_ids == [[[], []]] * 2 and not fell_back_BxR.any()


# ------------------------------------------------ the next byte is whitespace
def _texts(chosen_BxRxK):
  return [c.astype(np.uint8).tobytes() for c in chosen_BxRxK.reshape(-1, 2)]


def test_the_next_chunk_is_drawn_given_that_whitespace_comes_next():
  sampler = FakeConceptSampler(_concept_run().task)
  empty_K = np.full(2, TOKENIZER.pad_id)
  partial_2xK = np.stack([empty_K, [ord('a'), TOKENIZER.pad_id]])
  chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
      sampler, np.zeros((2, 1, 2), np.int32), partial_2xK, 1000,
      jax.random.key(2), 1.0, next_byte_allowed=brier.first_byte_allowed())
  assert not fell_back_BxR.any()
  after_whole = _texts(chosen_BxRxK[0])
  # Q(' a') : Q('  ') = 0.25 : 0.15 among the chunks that start with ' '.
  share = after_whole.count(b' a') / len(after_whole)
  expected = 0.25 / 0.4
  assert set(after_whole) == {b' a', b'  '}
  assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) /
                                              len(after_whole))
  assert {bytes(ids) for ids in new_ids[0]} == {b' a', b'  '}
  # After the partial 'a' only 'a ' goes on with whitespace ('ab' does not).
  assert set(_texts(chosen_BxRxK[1])) == {b'a '}
  assert {tuple(ids) for ids in new_ids[1]} == {(ord(' '),)}


def test_a_model_that_never_writes_whitespace_next_falls_back_and_says_so(
    monkeypatch):
  monkeypatch.setattr(sys.modules[__name__], 'Q_CHUNKS',
                      np.array([0, 0, 0.5, 0.5, 0, 0]))  # only 'ab', 'ba'
  sampler = FakeConceptSampler(_concept_run().task)
  chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
      sampler, np.zeros((1, 1, 2), np.int32),
      np.full((1, 2), TOKENIZER.pad_id), 2, jax.random.key(3), 1.0,
      max_draws=64, next_byte_allowed=brier.first_byte_allowed())
  assert fell_back_BxR.all()
  # It goes on with a draw the condition rejected, not with an empty chunk.
  assert set(_texts(chosen_BxRxK[0])) <= {b'ab', b'ba'}
  assert all(len(ids) == 2 for ids in new_ids[0])


def test_a_head_whose_draws_do_not_vary_is_drawn_once(monkeypatch):
  """An mse head writes one chunk whatever its rng: if it does not start
  with whitespace, more draws cannot help, and the context falls back."""
  monkeypatch.setattr(sys.modules[__name__], 'Q_CHUNKS',
                      np.array([0, 0, 1.0, 0, 0, 0]))  # always 'ab'
  calls = []

  class CountingSampler(FakeConceptSampler):
    def next_chunks(self, *args, **kwargs):
      calls.append(1)
      return super().next_chunks(*args, **kwargs)

  monkeypatch.setattr(concept_sampling, 'ConceptSampler', CountingSampler)
  run = _concept_run()
  run.task.head.samples_vary = False
  stats = {}
  samples = brier.concept_lm_continuations(
      run, [b' to be', b' or not'], jax.random.key(4), 8, stats=stats)
  assert len(calls) == 1  # one round for the one batch, not 4096 draws
  assert stats['partial_fallback_rate'] == 1.0
  assert all(text.startswith(b'ab') for text, _ in samples)


def test_the_first_token_may_be_only_one_that_starts_with_whitespace():
  allowed_V = brier.first_token_allowed(TOKENIZER)
  assert len(allowed_V) == TOKENIZER.vocab_size
  np.testing.assert_array_equal(np.flatnonzero(allowed_V),
                                np.sort(segment.WHITESPACE))
  assert not allowed_V[[TOKENIZER.eos_id, TOKENIZER.pad_id]].any()


def test_the_ngram_sampler_starts_with_whitespace_in_its_own_proportions():
  text = b'to be or\tnot to be\nthat is ' * 50
  model = ngram.fit([text], 2)
  probs_256 = model.next_byte_probs([b' to be'])[0]
  allowed_256 = brier.first_byte_allowed()
  expected = probs_256 * allowed_256 / (probs_256 * allowed_256).sum()
  first_N = next(model.stream([b' to be'] * 4000, np.random.default_rng(0),
                              allowed_256))
  assert set(first_N.tolist()) <= set(segment.WHITESPACE.tolist())
  for byte in b' \t\n':
    share = np.mean(first_N == byte)
    assert abs(share - expected[byte]) < 4 * np.sqrt(
        expected[byte] * (1 - expected[byte]) / len(first_N)) + 1e-3


def test_a_rule_segmentation_ends_a_unit_only_when_it_is_full():
  task = _concept_run().task.autoencoder  # fixed chunks of K=2
  to_b = np.frombuffer(b'to b', np.uint8)
  assert task.ends_unit(to_b[:2], to_b[:2])
  assert not task.ends_unit(to_b[:3], np.array([ord(' '), TOKENIZER.pad_id]))


def test_a_spaced_word_ends_where_whitespace_follows():
  """Spaced words carry the whitespace before them, so the whitespace after
  a BrierLM context (a word end) starts a unit: its last word is whole."""
  task = tasks.get_task(helpers.load_config('autoencoder',
                                            'K=8,segment=word'))
  text = np.frombuffer(b'To be', np.uint8)
  last_K = task.unit_fn(text)[-1]
  assert bytes(last_K[last_K != TOKENIZER.pad_id].tolist()) == b' be'
  assert task.ends_unit(text, last_K, followed_by_whitespace=True)
  assert not task.ends_unit(text, last_K)  # ' be' may go on: ' best'
  # A text ending in whitespace ends in the unit ' ', which whitespace
  # after it extends: it stays open.
  spaced = np.frombuffer(b'To be ', np.uint8)
  assert not task.ends_unit(spaced, task.unit_fn(spaced)[-1],
                            followed_by_whitespace=True)


# ---------------------------------------------------- intervals cover truth
def _continuation_probs(first_chunk_probs: dict, length: int) -> dict:
  """{first `length` bytes: probability} of a first chunk's remaining text
  followed by i.i.d. chunks."""
  probs = {}
  for first, p_first in first_chunk_probs.items():
    for rest in itertools.product(range(len(CHUNKS)), repeat=length):
      text = first + b''.join(CHUNKS[i] for i in rest)
      p = p_first * np.prod(Q_CHUNKS[list(rest)])
      probs[text[:length]] = probs.get(text[:length], 0.0) + p
  return probs


def _exact_terms(probs: dict, n: int) -> float:
  """E_y[2 P(y)] - sum_x P(x)^2 over n-byte strings, y a space then i.i.d.
  source bytes."""
  marginal = {}
  for text, p in probs.items():
    marginal[text[:n]] = marginal.get(text[:n], 0.0) + p
  source = dict(zip(ALPHABET, P_SOURCE))
  truth = lambda x: (x[0] == ord(' ')) * np.prod([source[b] for b in x[1:]])
  return sum(2 * p * truth(x) - p * p for x, p in marginal.items())


def _concept_truth(block_bytes: int) -> np.ndarray:
  """Exact Brier-1..4 of the fake concept model, averaged over the share of
  contexts that end in each partial chunk (from a long text)."""
  chosen, _ = brier.positions([_source_text(99, 200_000)], block_bytes,
                              20_000, 99, 16)
  ends = [c[-1:] if len(c) % 2 else b'' for c, _ in chosen]
  truth_N = np.zeros(4)
  for end in set(ends):
    # The next byte is whitespace: the protocol's condition.
    first = {c[len(end):]: q for c, q in zip(CHUNKS, Q_CHUNKS)
             if c.startswith(end) and c[len(end):len(end) + 1] == b' '}
    total = sum(first.values())
    probs = _continuation_probs({t: q / total for t, q in first.items()}, 4)
    share = ends.count(end) / len(ends)
    truth_N += share * np.array([_exact_terms(probs, n) for n in range(1, 5)])
  return truth_N


def _token_truth() -> np.ndarray:
  """The first byte is drawn given that it is whitespace: always ' '."""
  agree, same = P_SOURCE @ Q_BYTES, Q_BYTES @ Q_BYTES
  return np.array([2 * agree ** (n - 1) - same ** (n - 1)
                   for n in range(1, 5)])


@pytest.mark.parametrize('kind', ['token_lm', 'concept_lm'])
def test_every_interval_covers_the_true_value_at_about_its_rate(kind,
                                                               monkeypatch):
  monkeypatch.setattr(concept_sampling, 'ConceptSampler', FakeConceptSampler)
  monkeypatch.setattr(token_sampling, 'TokenSampler', FakeTokenSampler)
  block_bytes, trials = 9, 40
  if kind == 'token_lm':
    run = types.SimpleNamespace(task=types.SimpleNamespace(
        tokenizer=TOKENIZER), state=types.SimpleNamespace(params=None))
    truth_N = _token_truth()
    sample = brier.token_lm_continuations
  else:
    run = _concept_run()
    truth_N = _concept_truth(block_bytes)
    # Not cut to whole chunks: about half the contexts end in a partial one.
    sample = functools.partial(brier.concept_lm_continuations,
                               align_fixed=False)
  assert (truth_N > 0.005).all()  # BrierLM is then a proper geometric mean
  truth = dict(zip(['brier_1', 'brier_2', 'brier_3', 'brier_4', 'brier_lm'],
                   [*truth_N, float(intervals.brier_lm(truth_N))]))
  covered = dict.fromkeys(truth, 0)
  for trial in range(trials):
    stats = {}
    continuations = lambda contexts, rng: sample(  # pylint: disable=cell-var-from-loop
        run, contexts, rng, 16, 1.0, 'bytes', stats)
    metrics = brier.score(continuations, [_source_text(trial, 3000)],
                          jax.random.key(trial), block_bytes=block_bytes,
                          num_positions=300, max_new_bytes=16, seed=trial)
    for name, value in truth.items():
      covered[name] += (metrics[f'{name}_ci_low'] <= value <=
                        metrics[f'{name}_ci_high'])
    if kind == 'concept_lm':
      assert stats['partial_fallback_rate'] == 0.0
  for name, count in covered.items():  # 95% intervals: about 38 of 40
    assert 33 <= count <= trials, (name, count)
