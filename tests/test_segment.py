"""Segmentation: exact round trips, chunk form, and a plain-Python reference."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from latentlm.core.errors import UserError
from latentlm.data import segment
from latentlm.data.tokenizers import ByteTokenizer

PAD, BOS, EOS = (ByteTokenizer.pad_id, ByteTokenizer.bos_id,
                 ByteTokenizer.eos_id)


def _is_space(t):
  return t < 256 and bytes([t]).isspace()


def _reference_words(tokens):
  """Words by a token-at-a-time scan: EOS alone; space then non-space splits."""
  words = []
  for i, t in enumerate(tokens):
    starts = (i == 0 or t == EOS or tokens[i - 1] == EOS or
              (_is_space(tokens[i - 1]) and not _is_space(t)))
    if starts:
      words.append([])
    words[-1].append(t)
  return words


def _reference_spaced_words(tokens):
  """Spaced words by a token-at-a-time scan: EOS alone; non-space then space
  splits."""
  words = []
  for i, t in enumerate(tokens):
    starts = (i == 0 or t == EOS or tokens[i - 1] == EOS or
              (_is_space(t) and not _is_space(tokens[i - 1])))
    if starts:
      words.append([])
    words[-1].append(t)
  return words


def _ends_sentence(word):
  solid = [t for t in word if not _is_space(t)]
  return (ord('\n') in word or word == [EOS] or
          bool(solid) and solid[-1] in list(b'.!?'))


def _reference_groups(tokens, kind):
  """Runs of words that no chunk may cross."""
  groups = []
  for i, word in enumerate(_reference_words(tokens)):
    prev_word = groups[-1][-1] if groups else None
    new_group = (prev_word is None or word == [EOS] or prev_word == [EOS] or
                 kind == 'sentences' and _ends_sentence(prev_word))
    if new_group:
      groups.append([])
    groups[-1].append(word)
  return groups


def _reference_chunks(tokens, kind, K):
  if kind == 'fixed':
    return [tokens[i:i + K] for i in range(0, len(tokens), K)]
  if kind == 'word':
    return [word[i:i + K] for word in _reference_spaced_words(tokens)
            for i in range(0, len(word), K)]
  chunks = []
  for group in _reference_groups(tokens, kind):
    current = []
    for word in group:
      for piece in (word[i:i + K] for i in range(0, len(word), K)):
        if len(current) + len(piece) > K:
          chunks.append(current)
          current = []
        current += piece
    chunks.append(current)
  return chunks


def _check_form(chunks_MxK, tokens, K):
  """Chunks round-trip and hold 1..K tokens followed only by pads."""
  assert chunks_MxK.dtype == np.int32
  assert chunks_MxK.shape == (chunks_MxK.shape[0], K)
  np.testing.assert_array_equal(segment.join(chunks_MxK, PAD), tokens)
  is_pad_MxK = chunks_MxK == PAD
  assert not is_pad_MxK[:, 0].any()
  # Once a pad, always a pad.
  np.testing.assert_array_equal(np.logical_or.accumulate(is_pad_MxK, axis=1),
                                is_pad_MxK)


def _chunk_of_position(chunks_MxK):
  lengths_M = (chunks_MxK != PAD).sum(1)
  return np.repeat(np.arange(len(lengths_M)), lengths_M)


# Dense in spaces, newlines, sentence marks and special ids.
_TOKENS = st.lists(
    st.one_of(st.integers(0, 255),
              st.sampled_from([32, 32, 10, 9, ord('.'), ord('?'), BOS, EOS])),
    max_size=120)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(tokens=_TOKENS, kind=st.sampled_from(segment.KINDS),
                  K=st.integers(1, 9))
def test_matches_reference_and_round_trips(tokens, kind, K):
  chunks_MxK = segment.segment(np.array(tokens, np.int64), kind, K, PAD)
  _check_form(chunks_MxK, tokens, K)
  got = [row[row != PAD].tolist() for row in chunks_MxK]
  assert got == _reference_chunks(tokens, kind, K)


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(data=st.binary(max_size=300), K=st.integers(1, 12))
def test_words_never_split_a_short_word(data, K):
  tokens = np.frombuffer(data, np.uint8)
  chunk_N = _chunk_of_position(segment.segment(tokens, 'words', K, PAD))
  start = 0
  for word in _reference_words(tokens.tolist()):
    end = start + len(word)
    if len(word) <= K:
      assert chunk_N[start] == chunk_N[end - 1], word
    start = end


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(tokens=_TOKENS, K=st.integers(1, 12))
def test_sentences_never_share_a_chunk(tokens, K):
  chunk_N = _chunk_of_position(
      segment.segment(np.array(tokens, np.int32), 'sentences', K, PAD))
  sentence_lengths = [sum(map(len, sentence))
                      for sentence in _reference_groups(tokens, 'sentences')]
  sentence_N = np.repeat(np.arange(len(sentence_lengths)), sentence_lengths)
  # Each chunk lies inside one sentence.
  for chunk in np.unique(chunk_N):
    assert len(np.unique(sentence_N[chunk_N == chunk])) == 1


@pytest.mark.parametrize('kind', segment.KINDS)
@pytest.mark.parametrize('text', [
    b'', b' ', b' ' * 50, b'\n' * 9, b'x' * 1000, b'abcd efgh', b'abc def ',
    b'abcde fghij ', b'.!?. . ! \n', b'\tlead ing'])
@pytest.mark.parametrize('K', [1, 4, 5])
def test_adversarial_inputs(text, kind, K):
  tokens = np.frombuffer(text, np.uint8)
  chunks_MxK = segment.segment(tokens, kind, K, PAD)
  _check_form(chunks_MxK, tokens, K)
  got = [bytes(row[row != PAD].tolist()) for row in chunks_MxK]
  assert got == [bytes(c) for c in _reference_chunks(list(text), kind, K)]


@pytest.mark.parametrize('text, kind, K, expected', [
    (b'ab cd ef', 'words', 4, [b'ab ', b'cd ', b'ef']),
    (b'a b c d', 'words', 4, [b'a b ', b'c d']),
    (b'abc def', 'words', 4, [b'abc ', b'def']),  # words exactly K long
    (b'abcd efgh', 'words', 4, [b'abcd', b' ', b'efgh']),  # K + 1 long
    (b'abcdefg hi', 'words', 3, [b'abc', b'def', b'g ', b'hi']),
    (b'  lead', 'words', 8, [b'  lead']),
    (b'abcdefg hi', 'fixed', 3, [b'abc', b'def', b'g h', b'i']),
    (b'Hi. Yo! ok\nZ', 'sentences', 8, [b'Hi. ', b'Yo! ', b'ok\n', b'Z']),
    (b'Pi is 3.14 ok. Yes', 'sentences', 16, [b'Pi is 3.14 ok. ', b'Yes']),
    (b'One two three four. Z', 'sentences', 8,
     [b'One two ', b'three ', b'four. ', b'Z']),
    (b'\n\nA\n', 'sentences', 8, [b'\n\n', b'A\n']),
    (b'To be, or', 'word', 8, [b'To', b' be,', b' or']),
    (b'ROMEO.\n  Hence! ', 'word', 4, [b'ROME', b'O.', b'\n  H', b'ence',
                                       b'!', b' ']),
    (b'  lead', 'word', 8, [b'  lead']),  # the space before the word
])
def test_examples(text, kind, K, expected):
  chunks_MxK = segment.segment(np.frombuffer(text, np.uint8), kind, K, PAD)
  assert [bytes(row[row != PAD].tolist()) for row in chunks_MxK] == expected


@pytest.mark.parametrize('kind', ['words', 'sentences', 'word'])
def test_eos_is_a_chunk_of_its_own(kind):
  tokens = [BOS, ord('a'), ord(' '), EOS, ord('b'), EOS, EOS, ord(' ')]
  chunks_MxK = segment.segment(np.array(tokens), kind, 8, PAD)
  got = [row[row != PAD].tolist() for row in chunks_MxK]
  # A spaced word ('word') leaves the space after 'a' a unit of its own.
  head = ([[BOS, ord('a')], [ord(' ')]] if kind == 'word' else
          [[BOS, ord('a'), ord(' ')]])
  assert got == [*head, [EOS], [ord('b')], [EOS], [EOS], [ord(' ')]]


def test_stats():
  chunks_MxK = segment.segment(np.frombuffer(b'ab cd ef', np.uint8), 'words', 4,
                               PAD)
  stats = segment.segment_stats(chunks_MxK, PAD)
  assert stats['num_chunks'] == 3
  assert stats['num_tokens'] == 8
  assert stats['mean_tokens_per_chunk'] == pytest.approx(8 / 3)
  assert stats['full_chunk_fraction'] == 0


def test_unknown_kind_suggests():
  with pytest.raises(UserError, match="did you mean 'sentences'"):
    segment.segment(np.zeros(3, np.int32), 'sentence', 4, PAD)


def test_pad_in_input_is_rejected():
  with pytest.raises(ValueError, match='pad id'):
    segment.segment(np.array([1, PAD, 2]), 'fixed', 4, PAD)
