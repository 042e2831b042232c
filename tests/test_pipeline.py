"""Tests for latentlm.data.pipeline: packing, order, sharding, restoring."""

import json

import chex
import numpy as np
import pytest

from latentlm.core import config_lib
from latentlm.data import corpus
from latentlm.data import pipeline

PAD, EOS = 256, 258
K = 4


@pytest.fixture(scope='session')
def shakespeare(tmp_path_factory):
  """A data config for Shakespeare, built once in a directory that
  test_corpus.py shares."""
  data_config = config_lib.base_config().data
  data_config.data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  corpus.load_split(data_config, 'train')
  return data_config


def chunk_units(tokens_N):
  """Fixed chunks of K tokens, the last one PAD-filled."""
  padded = np.pad(tokens_N, (0, -len(tokens_N) % K), constant_values=PAD)
  return padded.reshape(-1, K)


def reference_stream(data_config, split):
  """The split's documents as byte ids, each led by EOS, in order."""
  return np.concatenate([
      np.insert(np.frombuffer(text, np.uint8).astype(np.int32), 0, EOS)
      for text in corpus.split_texts(data_config, split)]).astype(np.int32)


def batches(data_config, *, split='validation', unit_fn=pipeline.token_unit_fn,
            unit_shape=(), row_len=257, batch_size=8, seed=0, shuffle=False,
            num_epochs=1, max_batches=None, **kwargs):
  iterator = pipeline.make_iterator(
      data_config, split=split, unit_fn=unit_fn, unit_shape=unit_shape,
      row_len=row_len, batch_size=batch_size, seed=seed, shuffle=shuffle,
      num_epochs=num_epochs, **kwargs)
  return [b['tokens'] for _, b in zip(range(max_batches or 10**9), iterator)]


def test_overlapping_rows_make_every_token_a_target_once(shakespeare):
  out = batches(shakespeare, row_overlap=1)
  rows = np.concatenate(out)
  np.testing.assert_array_equal(rows[1:, 0], rows[:-1, -1])
  targets = rows[:, 1:].reshape(-1)
  expected = reference_stream(shakespeare, 'validation')
  np.testing.assert_array_equal(targets[:len(expected) - 1], expected[1:])
  assert np.all(targets[len(expected) - 1:] == PAD)


def test_overlap_state_restores_exactly(shakespeare):
  first = pipeline.make_iterator(
      shakespeare, split='validation', unit_fn=pipeline.token_unit_fn,
      row_len=33, batch_size=4, seed=1, row_overlap=1)
  for _ in range(5):
    next(first)
  restored = pipeline.make_iterator(
      shakespeare, split='validation', unit_fn=pipeline.token_unit_fn,
      row_len=33, batch_size=4, seed=1, row_overlap=1)
  restored.set_state(first.get_state())
  for _ in range(3):
    np.testing.assert_array_equal(next(restored)['tokens'],
                                  next(first)['tokens'])


def test_one_epoch_is_the_split_once_then_padding(shakespeare):
  out = batches(shakespeare)
  for tokens_BxL in out:
    chex.assert_shape(tokens_BxL, (8, 257))
    chex.assert_type(tokens_BxL, np.int32)
  stream = np.concatenate(out).reshape(-1)
  expected = reference_stream(shakespeare, 'validation')
  np.testing.assert_array_equal(stream[:len(expected)], expected)
  assert np.all(stream[len(expected):] == PAD)
  assert len(stream) - len(expected) < 8 * 257  # Less than a batch of PAD.


def test_chunk_units_are_packed_whole(shakespeare):
  out = batches(shakespeare, unit_fn=chunk_units, unit_shape=(K,), row_len=9)
  chex.assert_shape(out, (8, 9, K))
  units = np.concatenate(out).reshape(-1, K)
  expected = np.concatenate([
      chunk_units(np.insert(np.frombuffer(text, np.uint8).astype(np.int32),
                            0, EOS))
      for text in corpus.split_texts(shakespeare, 'validation')])
  np.testing.assert_array_equal(units[:len(expected)], expected)
  assert np.all(units[len(expected):] == PAD)


def test_wrong_unit_shape_raises(shakespeare):
  with pytest.raises(ValueError, match='expected'):
    batches(shakespeare, unit_fn=chunk_units, unit_shape=(K + 1,))


def test_shuffled_epoch_has_the_same_tokens(shakespeare):
  shuffled = np.concatenate(batches(shakespeare, shuffle=True)).reshape(-1)
  plain = np.concatenate(batches(shakespeare)).reshape(-1)
  assert shuffled.shape == plain.shape
  assert not np.array_equal(shuffled, plain)
  np.testing.assert_array_equal(np.bincount(shuffled, minlength=259),
                                np.bincount(plain, minlength=259))


def test_deterministic_for_a_seed(shakespeare):
  run = lambda seed: batches(shakespeare, split='train', shuffle=True,
                             num_epochs=None, row_len=65, batch_size=4,
                             seed=seed, max_batches=3)
  first, again, other = run(0), run(0), run(1)
  chex.assert_trees_all_equal(first, again)
  assert not any(np.array_equal(a, b) for a, b in zip(first, other))


def test_each_epoch_is_shuffled_anew(tmp_path, monkeypatch):
  letters = 'abcdefghijklmnopqrstuvwxy'
  for letter in letters:
    (tmp_path / f'{letter}.txt').write_text(letter * 7)
  data_config = config_lib.base_config().data
  data_config.update(name='files', files=str(tmp_path / '*.txt'),
                     data_dir=str(tmp_path / 'tfds'))
  monkeypatch.setattr(pipeline, 'ROW_SHUFFLE_WINDOW', 1)  # Rows in order.
  # One document per row: EOS and 7 letters.
  rows = np.concatenate(batches(data_config, split='train', row_len=8,
                                batch_size=1, shuffle=True, num_epochs=2))
  order = [chr(r[1]) for r in rows]
  documents = sorted(chr(t[0]) for t in corpus.split_texts(data_config,
                                                           'train'))
  epoch_1, epoch_2 = order[:len(documents)], order[len(documents):]
  assert sorted(epoch_1) == sorted(epoch_2) == documents
  assert epoch_1 != epoch_2 and documents not in (epoch_1, epoch_2)


def test_restore_equals_uninterrupted(shakespeare, monkeypatch):
  monkeypatch.setattr(pipeline, 'ROW_SHUFFLE_WINDOW', 16)
  make = lambda: pipeline.make_iterator(
      shakespeare, split='train', unit_fn=pipeline.token_unit_fn,
      row_len=33, batch_size=4, seed=3)
  iterator = make()
  for _ in range(37):  # Into the tenth shuffle window.
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = [next(iterator)['tokens'] for _ in range(20)]
  restored = make()
  restored.set_state(state)
  chex.assert_trees_all_equal([next(restored)['tokens'] for _ in range(20)],
                              expected)


def test_restore_through_the_end_of_an_epoch(shakespeare):
  make = lambda: pipeline.make_iterator(
      shakespeare, split='validation', unit_fn=pipeline.token_unit_fn,
      row_len=257, batch_size=4, seed=0, shuffle=False, num_epochs=1,
      process_index=1, process_count=2)
  iterator = make()
  states, expected = [iterator.get_state()], []
  for batch in iterator:
    expected.append(batch['tokens'])
    states.append(iterator.get_state())
  for k in (0, len(expected) // 2, len(expected) - 1, len(expected)):
    restored = make()
    restored.set_state(states[k])
    chex.assert_trees_all_equal([b['tokens'] for b in restored], expected[k:])


def test_processes_share_rows_of_a_small_corpus(shakespeare):
  whole = np.concatenate(batches(shakespeare))
  shards = [np.concatenate(batches(shakespeare, process_index=i,
                                   process_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1])  # Same number of batches.
  merged = np.empty((2 * len(shards[0]), 257), np.int32)
  merged[0::2], merged[1::2] = shards
  np.testing.assert_array_equal(merged[:len(whole)], whole)
  assert np.all(merged[len(whole):] == PAD)


def test_processes_read_their_own_documents(shakespeare, monkeypatch):
  monkeypatch.setattr(pipeline, 'MIN_DOCUMENTS_PER_PROCESS', 1)
  texts = corpus.split_texts(shakespeare, 'validation')
  for i in range(2):
    stream = np.concatenate(batches(shakespeare, process_index=i,
                                    process_count=2)).reshape(-1)
    expected = np.insert(np.frombuffer(texts[i], np.uint8).astype(np.int32),
                         0, EOS)
    np.testing.assert_array_equal(stream[:len(expected)], expected)
    assert np.all(stream[len(expected):] == PAD)


@pytest.mark.slow
def test_worker_processes_restore_exactly(shakespeare):
  data_config = shakespeare.copy_and_resolve_references()
  data_config.worker_count = 2
  make = lambda: pipeline.make_iterator(
      data_config, split='train', unit_fn=pipeline.token_unit_fn,
      row_len=33, batch_size=4, seed=0)
  iterator = make()
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)['tokens'] for _ in range(4)]
  iterator.close()
  restored = make()
  restored.set_state(state)
  chex.assert_trees_all_equal([next(restored)['tokens'] for _ in range(4)],
                              expected)
  restored.close()
