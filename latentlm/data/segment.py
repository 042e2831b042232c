"""Concept segmentation: a document's token ids -> chunks of at most K tokens.

Each chunk becomes one concept vector; it is padded to K with the pad id.

Kinds:
  fixed:     K tokens per chunk, the last one padded (CALM).
  words:     whole words packed greedily into chunks of at most K tokens; a word
             longer than K is cut into pieces of K (the last piece may share a
             chunk with the words after it).
  sentences: one sentence per chunk; a sentence longer than K is packed into
             several chunks like 'words'. Chunks never hold two sentences.
  word:      one spaced word per chunk (below); a spaced word longer than
             K is cut into pieces of K, each a chunk of its own. A chunk is
             a unit of meaning, of variable length: the word, not a packing
             of several.

Definitions, on byte ids:
  word:     a run of non-whitespace ids with the whitespace that follows it
            (whitespace: ASCII space, \\t, \\n, \\v, \\f, \\r). Whitespace at
            the start of a document is a word of its own. Ids >= 256 (BOS,
            ...) count as non-whitespace, except EOS.
  spaced word: a run of whitespace ids with the non-whitespace run that
            follows it, as SentencePiece's pieces carry the space before a
            word. Leading, not trailing, whitespace makes every word end a
            unit boundary, so a text cut at a word end (BrierLM's positions)
            ends in a whole unit, exactly as the document's own
            segmentation has it (metrics/brier.py). Text before the first
            whitespace of a document is a spaced word of its own.
  EOS:      a chunk of its own in every kind but 'fixed', so that no chunk
            spans two documents and the end of text is a concept of its own.
  sentence: ends after a word whose last non-whitespace id is . ! or ?, or
            whose whitespace holds a newline.

Segmentation is vectorised with numpy except one walk over chunk starts, so
a corpus the size of the plays costs the pipeline little
(docs/results/throughput.md).
"""

import numpy as np

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.data.tokenizers import ByteTokenizer

KINDS = ('fixed', 'words', 'sentences', 'word')
WHITESPACE = np.frombuffer(b' \t\n\v\f\r', np.uint8)
_SENTENCE_ENDS = np.frombuffer(b'.!?', np.uint8)
_NEWLINE = ord('\n')


def segment(tokens_N: np.ndarray, kind: str, K: int, pad_id: int,
            eos_id: int = ByteTokenizer.eos_id) -> np.ndarray:
  """Splits `tokens_N` into an int32 [M, K] array of pad-filled chunks.

  Every chunk holds 1..K tokens followed only by pads, and
  join(segment(tokens)) == tokens. `tokens_N` must not contain `pad_id`.
  """
  config_lib.choose('segmentation kind', kind, KINDS)
  if K < 1:
    raise UserError(f'chunk length K={K} must be at least 1')
  tokens_N = np.asarray(tokens_N).astype(np.int32, copy=False)
  if tokens_N.ndim != 1:
    raise ValueError(f'expected a 1-D array of token ids, got {tokens_N.shape}')
  if np.any(tokens_N == pad_id):
    raise ValueError(f'tokens contain the pad id {pad_id}')
  n = len(tokens_N)
  if kind == 'fixed' or n == 0:
    starts_M = np.arange(0, n, K)
  elif kind == 'word':
    starts_M = _pieces(np.flatnonzero(spaced_word_starts(tokens_N,
                                                              eos_id)), n, K)
  else:
    word_starts_W = np.flatnonzero(_word_start_mask(tokens_N, eos_id))
    forced_F = np.flatnonzero(eos_edges(tokens_N, eos_id))
    if kind == 'sentences':
      forced_F = np.union1d(forced_F,
                            _sentence_starts(tokens_N, word_starts_W))
    starts_M = _pack(_pieces(word_starts_W, n, K), forced_F, n, K)
  return gather(tokens_N, starts_M, K, pad_id)


def join(chunks_MxK: np.ndarray, pad_id: int) -> np.ndarray:
  """Inverse of `segment`: drops the pads and concatenates the chunks."""
  chunks_MxK = np.asarray(chunks_MxK)
  return chunks_MxK[chunks_MxK != pad_id].astype(np.int32)


def segment_stats(chunks_MxK: np.ndarray, pad_id: int) -> dict[str, float]:
  """Summary numbers for reports: how full the chunks are."""
  chunks_MxK = np.asarray(chunks_MxK)
  lengths_M = (chunks_MxK != pad_id).sum(axis=1)
  num_chunks = len(lengths_M)
  return dict(
      num_chunks=float(num_chunks),
      num_tokens=float(lengths_M.sum()),
      mean_tokens_per_chunk=float(lengths_M.mean()) if num_chunks else 0.0,
      full_chunk_fraction=(float(np.mean(lengths_M == chunks_MxK.shape[1]))
                           if num_chunks else 0.0),
  )


def _shifted_right(mask_N: np.ndarray) -> np.ndarray:
  """mask[i - 1] at position i, False at position 0."""
  return np.concatenate([[False], mask_N[:-1]])


def eos_edges(tokens_N, eos_id) -> np.ndarray:
  """Where a chunk must start, whatever the kind: position 0, at each EOS
  and right after it."""
  eos_N = np.asarray(tokens_N) == eos_id
  forced_N = eos_N | _shifted_right(eos_N)
  forced_N[:1] = True
  return forced_N


def _word_start_mask(tokens_N, eos_id) -> np.ndarray:
  """True where a word starts: non-whitespace after whitespace, or EOS edges."""
  space_N = np.isin(tokens_N, WHITESPACE)
  return (_shifted_right(space_N) & ~space_N) | eos_edges(
      tokens_N, eos_id)


def spaced_word_starts(tokens_N, eos_id) -> np.ndarray:
  """True where a spaced word starts: whitespace after non-whitespace, or
  EOS edges."""
  space_N = np.isin(tokens_N, WHITESPACE)
  return (space_N & ~_shifted_right(space_N)) | eos_edges(tokens_N, eos_id)


def _sentence_starts(tokens_N, word_starts_W) -> np.ndarray:
  """The word starts that follow a sentence-ending word."""
  n = len(tokens_N)
  positions_N = np.arange(n)
  last_solid_N = np.maximum.accumulate(
      np.where(np.isin(tokens_N, WHITESPACE), -1, positions_N))
  word_ends_W = np.append(word_starts_W[1:], n)
  last_solid_W = last_solid_N[word_ends_W - 1]
  # A whitespace-only word (start of a document) has no final mark.
  has_solid_W = last_solid_W >= word_starts_W
  final_mark_W = has_solid_W & np.isin(
      tokens_N[np.maximum(last_solid_W, 0)], _SENTENCE_ENDS)
  has_newline_W = np.add.reduceat(tokens_N == _NEWLINE, word_starts_W) > 0
  ends_W = final_mark_W | has_newline_W
  return word_starts_W[1:][ends_W[:-1]]


def _pieces(word_starts_W, n, K) -> np.ndarray:
  """Word starts plus a cut every K tokens inside words longer than K."""
  lengths_W = np.diff(np.append(word_starts_W, n))
  num_pieces_W = -(-lengths_W // K)
  first_piece_W = np.cumsum(num_pieces_W) - num_pieces_W
  piece_in_word_P = (np.arange(num_pieces_W.sum())
                     - np.repeat(first_piece_W, num_pieces_W))
  return np.repeat(word_starts_W, num_pieces_W) + K * piece_in_word_P


def _pack(piece_starts_P, forced_F, n, K) -> np.ndarray:
  """Chunk starts from packing pieces greedily, restarting at forced starts.

  From a chunk starting at piece p, the chunk ends at the last piece start
  that is at most p + K tokens on and not past the next forced start. Pieces
  are at most K long, so every chunk takes at least one piece.
  """
  bounds_P1 = np.append(piece_starts_P, n)
  forced_F1 = np.append(forced_F, n)
  next_forced_P = forced_F1[np.searchsorted(forced_F1, piece_starts_P,
                                            side='right')]
  limit_P = np.minimum(piece_starts_P + K, next_forced_P)
  next_chunk_P = np.searchsorted(bounds_P1, limit_P, side='right') - 1
  # The greedy walk is sequential: on Python ints, not numpy scalars, it stays
  # cheap per chunk (docs/results/throughput.md).
  next_chunk = next_chunk_P.tolist()
  chunk_pieces, p, num_pieces = [], 0, len(piece_starts_P)
  while p < num_pieces:
    chunk_pieces.append(p)
    p = next_chunk[p]
  return piece_starts_P[np.asarray(chunk_pieces, np.int64)]


def gather(tokens_N, starts_M, K, pad_id) -> np.ndarray:
  """[M, K] chunks: tokens from each start up to the next (at most K
  apart), then pads."""
  n = len(tokens_N)
  lengths_M = np.diff(np.append(starts_M, n))
  offsets_K = np.arange(K)
  index_MxK = np.minimum(starts_M[:, None] + offsets_K, max(n - 1, 0))
  valid_MxK = offsets_K < lengths_M[:, None]
  return np.where(valid_MxK, tokens_N[index_MxK], pad_id).astype(np.int32)
