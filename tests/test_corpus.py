"""Tests for latentlm.data.corpus: Shakespeare, the user's files, catalog."""

import concurrent.futures
import os
import tempfile
import threading
import time

import pytest

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.data import corpus


@pytest.fixture(scope='session')
def shakespeare(tmp_path_factory):
  """A data config for Shakespeare, built once in a directory that
  test_pipeline.py shares."""
  data_config = config_lib.base_config().data
  data_config.data_dir = str(tmp_path_factory.getbasetemp() / 'tfds')
  corpus.load_split(data_config, 'train')
  return data_config


def files_config(tmp_path, pattern='*.txt'):
  data_config = config_lib.base_config().data
  data_config.name = 'files'
  data_config.files = str(tmp_path / pattern)
  data_config.data_dir = str(tmp_path / 'tfds')
  return data_config


def titles(data_config, split):
  source = corpus.load_split(data_config, split)
  return {source[i]['title'].decode() for i in range(len(source))}


def test_markdown_to_text():
  markdown = ('# Hamlet\n\n## ACT I\n\n_Enter BERNARDO and FRANCISCO_\n\n'
              '**BERNARDO**  \nWho\'s there?  \n__\\[Aside]_ Nay, answer me'
              '\n\n**ROSENCRANTZ: & GUILDENSTERN:**  \n\\--My lord!\n')
  assert corpus.markdown_to_text(markdown) == (
      'Hamlet\n\nACT I\n\nEnter BERNARDO and FRANCISCO\n\nBERNARDO.\n'
      'Who\'s there?\n[Aside] Nay, answer me\n\n'
      'ROSENCRANTZ: & GUILDENSTERN.\n--My lord!\n')


def test_shakespeare_splits(shakespeare):
  splits = {split: titles(shakespeare, split) for split in corpus.SPLITS}
  assert splits['validation'] == {'twelfth-night', 'richard-ii'}
  assert splits['test'] == {'the-tempest', 'julius-caesar'}
  assert len(splits['train']) == 34
  assert set.union(*splits.values()) == set(corpus.play_paths())
  assert len(set.union(*splits.values())) == 38


def test_shakespeare_text_is_plain(shakespeare):
  texts = corpus.split_texts(shakespeare, 'validation')
  play = next(t for t in texts if t.startswith(b'Twelfth Night\n'))
  assert (b'DUKE ORSINO.\nIf music be the food of love, play on;\n'
          b'Give me excess of it' in play)
  assert b'\nEnter VIOLA, a Captain, and Sailors\n' in play
  for text in texts:
    assert b'**' not in text and b'_' not in text and b' \n' not in text


def test_data_dir_from_environment(monkeypatch):
  data_config = config_lib.base_config().data
  monkeypatch.setenv('LATENTLM_DATA_DIR', '/somewhere/tfds')
  assert corpus.data_dir(data_config) == '/somewhere/tfds'
  data_config.data_dir = '/elsewhere'
  assert corpus.data_dir(data_config) == '/elsewhere'


def test_few_files_are_cut_into_splits(tmp_path):
  lines = [f'line {i:02d} of the only file\n'.encode() for i in range(100)]
  (tmp_path / 'a.txt').write_bytes(b''.join(lines))
  data_config = files_config(tmp_path)
  pieces = {split: corpus.split_texts(data_config, split)
            for split in corpus.SPLITS}
  assert [len(p) for p in pieces.values()] == [1, 1, 1]
  # The pieces are whole lines, in order, and together the whole file.
  assert pieces['train'][0] == b''.join(lines[:90])
  assert pieces['validation'][0] == b''.join(lines[90:95])
  assert pieces['test'][0] == b''.join(lines[95:])


def test_building_leaves_no_temporary_directories(tmp_path, monkeypatch):
  """TFDS makes one per builder of an unprepared dataset and never removes
  it; a test run used to leave hundreds in /tmp."""
  temp = tmp_path / 'tmp'
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  (tmp_path / 'a.txt').write_text('a line of text\n' * 50)
  assert corpus.split_texts(files_config(tmp_path), 'train')
  assert not list(temp.iterdir())
  assert tempfile.tempdir == str(temp)


def test_many_files_are_split_by_file(tmp_path):
  contents = {f'doc{i}.txt': f'document {i}\n' * (i + 1) for i in range(25)}
  for name, text in contents.items():
    (tmp_path / name).write_text(text)
  data_config = files_config(tmp_path)
  splits = {split: {os.path.basename(t) for t in titles(data_config, split)}
            for split in corpus.SPLITS}
  assert [len(s) for s in splits.values()] == [23, 1, 1]
  assert set.union(*splits.values()) == set(contents)
  assert sorted(corpus.split_texts(data_config, 'test') +
                corpus.split_texts(data_config, 'validation') +
                corpus.split_texts(data_config, 'train')) == sorted(
                    t.encode() for t in contents.values())


def test_non_utf8_file_warns_and_keeps_bytes(tmp_path, caplog):
  (tmp_path / 'good.txt').write_text('plain text\n' * 30)
  latin1 = 'caf\u00e9 cr\u00e8me\n'.encode('latin-1') * 30
  (tmp_path / 'latin1.txt').write_bytes(latin1)
  data_config = files_config(tmp_path)
  texts = corpus.split_texts(data_config, 'train')
  warnings = [r.getMessage() for r in caplog.records
              if 'not valid UTF-8' in r.getMessage()]
  assert len(warnings) == 1 and 'latin1.txt' in warnings[0]
  assert any(latin1.startswith(t) for t in texts)


def test_changed_files_rebuild(tmp_path):
  path = tmp_path / 'a.txt'
  path.write_text('first version\n' * 40)
  data_config = files_config(tmp_path)
  assert corpus.split_texts(data_config, 'train')[0].startswith(b'first')
  path.write_text('second, longer version\n' * 40)
  assert corpus.split_texts(data_config, 'train')[0].startswith(b'second')


def test_concurrent_loads_build_once(tmp_path, monkeypatch):
  (tmp_path / 'a.txt').write_text('some text\n' * 40)
  data_config = files_config(tmp_path)
  building, most = 0, 0
  lock = threading.Lock()
  split_generators = corpus.LatentlmFiles._split_generators

  def slow_split_generators(self, dl_manager):
    nonlocal building, most
    with lock:
      building += 1
      most = max(most, building)
    time.sleep(0.3)  # Long enough for the other thread to try building.
    with lock:
      building -= 1
    return split_generators(self, dl_manager)

  monkeypatch.setattr(corpus.LatentlmFiles, '_split_generators',
                      slow_split_generators)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    texts = list(pool.map(lambda _: corpus.split_texts(data_config, 'test'),
                          range(2)))
  assert most == 1
  assert texts[0] == texts[1] == [b'some text\n' * 2]


@pytest.mark.parametrize('pattern,message', [
    ('nothing*.txt', 'matches no files'),
    ('empty*.txt', 'matches only empty files'),
])
def test_bad_globs(tmp_path, pattern, message):
  (tmp_path / 'empty.txt').write_bytes(b'')
  with pytest.raises(UserError, match=message):
    corpus.load_split(files_config(tmp_path, pattern), 'train')


def test_empty_held_out_split(tmp_path):
  (tmp_path / 'one_line.txt').write_text('a single line\n')
  with pytest.raises(UserError, match="no text for the 'test' split"):
    corpus.load_split(files_config(tmp_path), 'test')


def test_unknown_split(shakespeare):
  with pytest.raises(UserError, match="unknown split 'valid'"):
    corpus.load_split(shakespeare, 'valid')


def test_catalog_dataset_must_be_prepared(tmp_path):
  data_config = config_lib.base_config().data
  data_config.data_dir = str(tmp_path)
  data_config.name = 'lm1b'
  with pytest.raises(UserError, match='not prepared.*tfds build lm1b'):
    corpus.load_split(data_config, 'train')
  data_config.name = 'no_such_dataset'
  with pytest.raises(UserError, match='not shakespeare, files, or a TFDS'):
    corpus.load_split(data_config, 'train')
