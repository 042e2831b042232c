"""Tokenizers: text <-> int32 ids: bytes, or SentencePiece BPE (spm:VOCAB).

Every tokenizer has `encode`, `decode`, `decode_bytes`, `token_byte_lengths`
and the attributes `pad_id`, `bos_id`, `eos_id`, `vocab_size`. `encode` adds
no special ids: the pipeline appends EOS per document, and models decide
about BOS.
"""

import numpy as np

from latentlm import config_lib

NUM_BYTES = 256


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then PAD=256, BOS=257, EOS=258."""

  pad_id = NUM_BYTES
  bos_id = NUM_BYTES + 1
  eos_id = NUM_BYTES + 2
  vocab_size = NUM_BYTES + 3

  def encode(self, text: str | bytes) -> np.ndarray:
    """The int32 byte ids of `text` (str is UTF-8 encoded), no specials."""
    if isinstance(text, str):
      text = text.encode('utf-8')
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32)

  def decode_bytes(self, ids) -> bytes:
    """The bytes of `ids`; special ids are dropped, nothing stops decoding."""
    ids = np.asarray(ids).reshape(-1)
    return ids[(ids >= 0) & (ids < NUM_BYTES)].astype(np.uint8).tobytes()

  def decode(self, ids) -> str:
    """`decode_bytes` as text; invalid UTF-8 becomes U+FFFD."""
    return self.decode_bytes(ids).decode('utf-8', errors='replace')

  def token_byte_lengths(self) -> np.ndarray:
    """Text bytes each id stands for (0 for specials): bits per byte needs it."""
    return (np.arange(self.vocab_size) < NUM_BYTES).astype(np.int32)


def _sentencepiece(data_config, arg):
  # Imported here: it imports this module, and bytes need none of it.
  from latentlm.data import sentencepiece_tokenizer  # pylint: disable=g-import-not-at-top
  return sentencepiece_tokenizer.from_data_config(data_config, arg)


# Name -> constructor taking the data config and the text after 'NAME:'.
TOKENIZERS = {
    'bytes': lambda data_config, arg: ByteTokenizer(),
    'spm': _sentencepiece,  # spm:VOCAB, trained on the training split
}


def get_tokenizer(data_config):
  """The tokenizer named by `data_config.tokenizer` ('bytes', 'spm:1024')."""
  name, _, arg = data_config.tokenizer.partition(':')
  name = config_lib.choose('data.tokenizer', name, TOKENIZERS)
  return TOKENIZERS[name](data_config, arg)
