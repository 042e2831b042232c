"""Tests for latentlm.data.tokenizers."""

import chex
from hypothesis import given
from hypothesis import strategies as st
import numpy as np
import pytest

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.data import tokenizers

TOKENIZER = tokenizers.ByteTokenizer()


def test_special_ids():
  assert (TOKENIZER.pad_id, TOKENIZER.bos_id, TOKENIZER.eos_id,
          TOKENIZER.vocab_size) == (256, 257, 258, 259)


@given(st.binary(max_size=64))
def test_bytes_round_trip(data):
  ids = TOKENIZER.encode(data)
  assert ids.dtype == np.int32
  assert ids.tolist() == list(data)
  assert TOKENIZER.decode_bytes(ids) == data


@given(st.text(alphabet=st.characters(blacklist_categories=('Cs',)),
               max_size=32))
def test_unicode_round_trip(text):
  ids = TOKENIZER.encode(text)
  chex.assert_shape(ids, (len(text.encode('utf-8')),))
  assert TOKENIZER.decode(ids) == text


@given(st.lists(st.integers(0, 258), max_size=64))
def test_decode_drops_special_ids(ids):
  expected = bytes(i for i in ids if i < 256)
  assert TOKENIZER.decode_bytes(np.asarray(ids, np.int32)) == expected
  assert TOKENIZER.decode(ids) == expected.decode('utf-8', errors='replace')


def test_decode_replaces_invalid_utf8():
  ids = [ord('a'), 0xff, TOKENIZER.eos_id, ord('b')]
  assert TOKENIZER.decode(ids) == 'a\ufffdb'


def test_token_byte_lengths():
  lengths_V = TOKENIZER.token_byte_lengths()
  chex.assert_shape(lengths_V, (259,))
  assert lengths_V[:256].tolist() == [1] * 256
  assert lengths_V[256:].tolist() == [0, 0, 0]


def test_get_tokenizer():
  data_config = config_lib.base_config().data
  assert isinstance(tokenizers.get_tokenizer(data_config),
                    tokenizers.ByteTokenizer)
  data_config.tokenizer = 'byte'
  with pytest.raises(UserError, match="did you mean 'bytes'"):
    tokenizers.get_tokenizer(data_config)
