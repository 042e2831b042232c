"""A SentencePiece BPE vocabulary trained on the corpus's training split.

`--config.data.tokenizer=spm:VOCAB` (e.g. spm:1024). The model is trained
once on the TRAINING split only (validation and test never shape the
vocabulary), cached in the data dir under a hash of the training text and
VOCAB, and built under a file lock so concurrent processes train it once.

Ids are laid out like the byte tokenizer's, so the two share code and eyes:
0..255 are the UTF-8 bytes (SentencePiece's byte-fallback pieces), 256 PAD,
257 BOS, 258 EOS, then the learnt pieces up to VOCAB - 1. Any text encodes
(characters outside the vocabulary fall back to bytes) and decodes to the
same bytes: no normalisation, no dummy prefix, whitespace kept. Two things
SentencePiece cannot round-trip are handled around it: its own whitespace
mark U+2581 in the text, and bytes that are not valid UTF-8; both become
byte ids. `token_byte_lengths` is each id's exact byte count, so bits per
byte stay bits per byte of text, comparable with byte models.
"""

import hashlib
import os
import re

import numpy as np

from latentlm.core.errors import UserError
from latentlm.data import byte_tokenizer
from latentlm.data import corpus

NUM_BYTES = byte_tokenizer.NUM_BYTES
NUM_SPECIALS = 3  # PAD, BOS, EOS
# SentencePiece writes a space as this mark; literal ones in text go as bytes.
_SPACE_MARK = '\u2581'
# Invalid UTF-8 bytes decode (surrogateescape) to U+DC80..U+DCFF.
_BYTE_EXCEPTIONS = re.compile('([\u2581\udc80-\udcff])')
# SentencePiece skips longer training sentences; lines are cut to this.
_MAX_TRAIN_LINE = 4000
_MAX_TRAIN_LINES = 2_000_000
_MAX_TRAIN_BYTES = 200 << 20
_CACHE_VERSION = 1


def _sentencepiece():
  try:
    import sentencepiece  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("data.tokenizer='spm:...' needs the sentencepiece "
                    'package: pip install sentencepiece') from None
  return sentencepiece


def parse_vocab_size(arg: str) -> int:
  """VOCAB of 'spm:VOCAB', checked: bytes and specials need 259 ids."""
  try:
    vocab_size = int(arg)
  except ValueError:
    vocab_size = -1
  if vocab_size < NUM_BYTES + NUM_SPECIALS + 1:
    raise UserError(f"data.tokenizer='spm:{arg}' needs a vocabulary size of "
                    f'at least {NUM_BYTES + NUM_SPECIALS + 1}, e.g. spm:1024')
  return vocab_size


def _training_lines(texts):
  """Lines of the training documents, as SentencePiece can take them."""
  count = 0
  for text in texts:
    text = text.decode('utf-8', errors='ignore') if isinstance(
        text, bytes) else text
    for line in text.replace(_SPACE_MARK, ' ').split('\n'):
      for start in range(0, len(line), _MAX_TRAIN_LINE):
        yield line[start:start + _MAX_TRAIN_LINE]
        count += 1
        if count >= _MAX_TRAIN_LINES:
          return


def train_model(texts, vocab_size: int, model_path: str):
  """Trains a byte-fallback BPE model on `texts` and writes `model_path`."""
  spm = _sentencepiece()
  prefix = f'{model_path}.tmp{os.getpid()}'
  # SentencePiece's own ids: unk 0, then 256 byte pieces, then merges; our
  # three specials replace its unk, so it has vocab_size - 2 pieces.
  try:
    _train(spm, texts, vocab_size, prefix)
  except RuntimeError as e:  # e.g. more pieces asked than the text has
    raise UserError(f"data.tokenizer='spm:{vocab_size}' cannot be trained on "
                    f'this training split: {e}') from None
  os.replace(f'{prefix}.model', model_path)  # atomic: readers see all or none
  os.remove(f'{prefix}.vocab')


def _train(spm, texts, vocab_size, prefix):
  spm.SentencePieceTrainer.train(
      sentence_iterator=_training_lines(texts),
      model_prefix=prefix, model_type='bpe', vocab_size=vocab_size - 2,
      byte_fallback=True, character_coverage=0.9995,
      normalization_rule_name='identity', add_dummy_prefix=False,
      remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
      split_digits=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
      num_threads=2, minloglevel=2)


def _piece_bytes(piece: str) -> bytes:
  """The text bytes of a learnt piece: its space marks are spaces."""
  return piece.replace(_SPACE_MARK, ' ').encode('utf-8')


class SentencePieceTokenizer:
  """A trained SentencePiece BPE model with the byte tokenizer's id layout."""

  pad_id = NUM_BYTES
  bos_id = NUM_BYTES + 1
  eos_id = NUM_BYTES + 2

  def __init__(self, model_path: str):
    spm = _sentencepiece()
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    sp_size = self._sp.get_piece_size()
    self.vocab_size = sp_size + 2
    # SentencePiece id -> our id; the bytes of each of our ids.
    to_ours = np.full(sp_size, -1, np.int64)
    piece_bytes = [bytes([b]) for b in range(NUM_BYTES)] + [b''] * (
        NUM_SPECIALS + sp_size)
    next_id = NUM_BYTES + NUM_SPECIALS
    for sp_id in range(sp_size):
      if self._sp.is_byte(sp_id):
        to_ours[sp_id] = int(self._sp.id_to_piece(sp_id)[3:5], 16)
      elif not (self._sp.is_unknown(sp_id) or self._sp.is_control(sp_id)):
        to_ours[sp_id] = next_id
        piece_bytes[next_id] = _piece_bytes(self._sp.id_to_piece(sp_id))
        next_id += 1
    self._to_ours = to_ours
    self._piece_bytes = piece_bytes[:self.vocab_size]
    self._byte_lengths = np.array([len(b) for b in self._piece_bytes],
                                  np.int32)

  def encode(self, text: str | bytes) -> np.ndarray:
    """The int32 ids of `text` (str is UTF-8 encoded), no specials."""
    if isinstance(text, str):
      text = text.encode('utf-8')
    ids = []
    for i, part in enumerate(_BYTE_EXCEPTIONS.split(
        text.decode('utf-8', errors='surrogateescape'))):
      if i % 2:  # a separator: an invalid byte or a literal space mark
        ids.extend(part.encode('utf-8', errors='surrogateescape'))
      elif part:
        sp_ids = self._to_ours[self._sp.encode(part, out_type=int)]
        if (sp_ids < 0).any():  # byte fallback should make this impossible
          raise ValueError(f'sentencepiece left {part!r} unknown')
        ids.extend(sp_ids.tolist())
    return np.asarray(ids, np.int32)

  def decode_bytes(self, ids) -> bytes:
    """The bytes of `ids`; special and out-of-range ids are dropped."""
    ids = np.asarray(ids).reshape(-1)
    return b''.join(self._piece_bytes[i] for i in ids.tolist()
                    if 0 <= i < self.vocab_size)

  def decode(self, ids) -> str:
    """`decode_bytes` as text; invalid UTF-8 becomes U+FFFD."""
    return self.decode_bytes(ids).decode('utf-8', errors='replace')

  def token_byte_lengths(self) -> np.ndarray:
    """Text bytes each id stands for (0 for specials): bits per byte needs it."""
    return self._byte_lengths.copy()


def _training_texts(data_config) -> list[bytes]:
  """The training split's documents (never held-out text), the first
  `_MAX_TRAIN_BYTES` of them for a large corpus."""
  source = corpus.load_split(data_config, 'train')
  texts, total = [], 0
  for i in range(len(source)):
    texts.append(source[i]['text'])
    total += len(texts[-1])
    if total >= _MAX_TRAIN_BYTES:
      break
  return texts


def _model_path(data_config, texts, vocab_size: int) -> str:
  digest = hashlib.sha256(f'{_CACHE_VERSION}:{vocab_size}'.encode())
  for text in texts:
    digest.update(len(text).to_bytes(8, 'little'))
    digest.update(text if isinstance(text, bytes) else text.encode('utf-8'))
  return os.path.join(corpus.data_dir(data_config), 'sentencepiece',
                      f'bpe{vocab_size}-{digest.hexdigest()[:16]}.model')


# (corpus fields, VOCAB) -> model path, so that a process reads and hashes
# the training split once, however many times it asks for the tokenizer.
_MODEL_PATHS = {}


def from_data_config(data_config, arg: str) -> SentencePieceTokenizer:
  """The 'spm:VOCAB' tokenizer of the configured corpus, trained at most once."""
  vocab_size = parse_vocab_size(arg)
  key = (corpus.data_dir(data_config), data_config.name, data_config.files,
         data_config.text_key, vocab_size)
  if key not in _MODEL_PATHS or not os.path.exists(_MODEL_PATHS[key]):
    _MODEL_PATHS[key] = _trained_model(data_config, vocab_size)
  return _load(_MODEL_PATHS[key], vocab_size)


def _trained_model(data_config, vocab_size: int) -> str:
  texts = _training_texts(data_config)
  path = _model_path(data_config, texts, vocab_size)
  if not os.path.exists(path):
    with corpus._file_lock(f'{path}.lock'):  # pylint: disable=protected-access
      if not os.path.exists(path):  # another process may have trained it
        train_model(texts, vocab_size, path)
  return path


def _load(path: str, vocab_size: int) -> SentencePieceTokenizer:
  tokenizer = SentencePieceTokenizer(path)
  if tokenizer.vocab_size != vocab_size:
    raise UserError(f"data.tokenizer='spm:{vocab_size}': the training split "
                    f'only supports {tokenizer.vocab_size} ids; use fewer')
  return tokenizer
