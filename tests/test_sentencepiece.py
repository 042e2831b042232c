"""Tests for the SentencePiece BPE tokenizer (data.tokenizer='spm:VOCAB')."""

import os

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.data import corpus
from latentlm.data import tokenizers
from latentlm.metrics import brier
from latentlm.training import loop as train_loop

import helpers

ADVERSARIAL = [
    '', ' ', '  \n\n\t ', '\r\n', '\x00', 'a\x00b',
    '\u2581', '\u2581\u2581 \u2581x',  # SentencePiece's own space mark
    '\ufb01ne \uff21 \u3000 \u2126',  # NFKC would change all of these
    'e\u0301 \u00e9', '\ufeffBOM', '\U0001F600\U0001F1FA\U0001F1F8',
    '\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627',  # RTL
    'ROMEO.\nBut soft, what light through yonder window breaks?\n',
    ' ' * 5000, 'x' * 5000, '<0x41> <unk> <s> </s>',
]


def _data_config(data_dir, tokenizer):
  data_config = config_lib.base_config().data
  data_config.data_dir = data_dir
  data_config.tokenizer = tokenizer
  return data_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def tokenizer(data_dir):
  return tokenizers.get_tokenizer(_data_config(data_dir, 'spm:1024'))


def test_ids_are_laid_out_like_the_byte_tokenizers(tokenizer):
  byte_tokenizer = tokenizers.ByteTokenizer()
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (
      byte_tokenizer.pad_id, byte_tokenizer.bos_id, byte_tokenizer.eos_id)
  assert tokenizer.vocab_size == 1024
  lengths_V = tokenizer.token_byte_lengths()
  assert lengths_V.shape == (1024,)
  assert lengths_V[:256].tolist() == [1] * 256
  assert lengths_V[256:259].tolist() == [0, 0, 0]
  assert (lengths_V[259:] >= 1).all()
  for i in (0, 65, 255):
    assert tokenizer.decode_bytes([i]) == bytes([i])
  # Merges, of real text: ' the' is among the first on English.
  assert b' the' in {tokenizer.decode_bytes([i]) for i in range(259, 1024)}


@pytest.mark.parametrize('text', ADVERSARIAL)
def test_adversarial_round_trip(tokenizer, text):
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32
  assert ((ids >= 0) & (ids < tokenizer.vocab_size)).all()
  assert not np.isin(ids, [256, 257, 258]).any()  # encode adds no specials
  assert tokenizer.decode(ids) == text
  assert tokenizer.token_byte_lengths()[ids].sum() == len(text.encode())


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=('Cs',)),
               max_size=64))
def test_unicode_round_trip(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert tokenizer.token_byte_lengths()[ids].sum() == len(text.encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_round_trip(tokenizer, data):
  # Corpora keep files that are not valid UTF-8 as raw bytes.
  ids = tokenizer.encode(data)
  assert tokenizer.decode_bytes(ids) == data
  assert tokenizer.token_byte_lengths()[ids].sum() == len(data)


def test_decode_drops_special_ids(tokenizer):
  ids = tokenizer.encode('to be')
  with_specials = np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id,
                                                              tokenizer.pad_id]])
  assert tokenizer.decode(with_specials) == 'to be'


def test_bytes_are_exact_and_fewer_tokens_on_held_out_plays(tokenizer,
                                                            data_dir):
  texts = corpus.split_texts(_data_config(data_dir, 'spm:1024'), 'test')
  num_bytes = sum(len(t) for t in texts)
  ids = np.concatenate([tokenizer.encode(t) for t in texts])
  assert tokenizer.token_byte_lengths()[ids].sum() == num_bytes
  # The compression configs/paper/token_baseline.py states.
  assert num_bytes / len(ids) == pytest.approx(2.26, abs=0.02)


def test_brier_contexts_encode_as_the_documents_own_tokens(tokenizer,
                                                           data_dir):
  """BrierLM's contexts (word end to word end) are piece boundaries at both
  ends, so the BPE model sees the tokens it saw in training there."""
  from latentlm.metrics import brier  # pylint: disable=g-import-not-at-top
  text = corpus.split_texts(_data_config(data_dir, 'spm:1024'), 'test')[0]
  ids = tokenizer.encode(text)
  starts = np.concatenate([[0], np.cumsum(tokenizer.token_byte_lengths()[ids])])
  ends = brier._word_ends(text)  # pylint: disable=protected-access
  for position in ends[ends >= 64][:500]:
    start = brier.context_start(ends, int(position), 64)
    first, last = np.searchsorted(starts, [start, position])
    assert starts[first] == start and starts[last] == position
    np.testing.assert_array_equal(tokenizer.encode(text[start:position]),
                                  ids[first:last])
  # A cut a byte before a word end often falls inside a piece: the
  # protocol never makes one.
  inside = [int(e) - 1 for e in ends[ends >= 64][:200]]
  assert np.mean([i not in starts for i in inside]) > 0.3


def test_brier_draws_a_first_piece_that_starts_with_whitespace(tokenizer):
  allowed_V = brier.first_token_allowed(tokenizer)
  pieces = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
  assert [p[:1].isspace() for p in pieces] == allowed_V.tolist()
  assert allowed_V.any() and not allowed_V.all()
  assert not allowed_V[tokenizer.eos_id]


def test_trained_once_and_cached_in_the_data_dir(tokenizer, data_dir):
  models = os.listdir(os.path.join(data_dir, 'sentencepiece'))
  assert len([m for m in models if m.endswith('.model')]) == 1
  again = tokenizers.get_tokenizer(_data_config(data_dir, 'spm:1024'))
  assert os.listdir(os.path.join(data_dir, 'sentencepiece')) == models
  text = 'Is this a dagger which I see before me?'
  assert again.encode(text).tolist() == tokenizer.encode(text).tolist()


def test_trained_on_the_training_split_only(tmp_path):
  # Under 20 files, each file's first 90% is train, the last 10% held out
  # (latentlm/data/corpus.py): a word only the held-out part repeats must
  # not become a piece, while one the training part repeats does.
  text = ''.join(f'wvkwvk line {i} of the plain training text.\n'
                 for i in range(900))
  text += ''.join(f'zqxzqx held out line {i}.\n' for i in range(200))
  path = tmp_path / 'corpus.txt'
  path.write_text(text)
  data_config = _data_config(str(tmp_path / 'tfds'), 'spm:300')
  data_config.name = 'files'
  data_config.files = str(path)
  held_out = b''.join(corpus.split_texts(data_config, 'validation') +
                      corpus.split_texts(data_config, 'test'))
  assert b'zqxzqx' in held_out and b'wvkwvk' not in held_out
  tokenizer = tokenizers.get_tokenizer(data_config)
  pieces = [tokenizer.decode_bytes([i]) for i in range(259, 300)]
  assert any(b'wvk' in p for p in pieces)
  assert not any(b'zq' in p or b'xz' in p or b'qx' in p for p in pieces)
  data_config.tokenizer = 'spm:20000'  # more pieces than this text has
  with pytest.raises(UserError, match='cannot be trained'):
    tokenizers.get_tokenizer(data_config)


@pytest.mark.parametrize('name', ['spm:100', 'spm:abc', 'spm:'])
def test_bad_vocab_size_is_a_user_error(data_dir, name):
  with pytest.raises(UserError, match='vocabulary size of at least 260'):
    tokenizers.get_tokenizer(_data_config(data_dir, name))


def test_token_lm_trains_five_steps_on_bpe(tokenizer, data_dir, tmp_path):
  del tokenizer  # trained already: the run reuses the cached model
  config = helpers.tiny_token_lm(data_dir, num_steps=5, log_every=1,
                                 eval_every=5, checkpoint_every=5,
                                 eval_batches=1)
  config.data.tokenizer = 'spm:1024'
  config.model.vocab_size = 1024
  metrics = train_loop.train(config, str(tmp_path / 'run'))
  assert np.isfinite(metrics['loss'])
  # Bits per byte of text, not per token: an untrained model over 1024 ids
  # pays about log2(1024) = 10 bits per token of 2.26 bytes.
  assert 2.0 < metrics['bits_per_byte'] < 10.0 / 2.26 * 1.3
