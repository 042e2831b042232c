"""The byte tokenizer: UTF-8 bytes as ids 0..255, then PAD, BOS, EOS; every
tokenizer keeps the byte ids first."""

import numpy as np

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
