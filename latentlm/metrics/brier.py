"""BrierLM: one likelihood-free score for token LMs, concept LMs and n-grams.

Brier(P, y) = 2 P(y) - sum_x P(x)^2 (higher is better, at most 1) needs no
probabilities: with two independent samples x1, x2 of the model,

  E[1[x1 = y] + 1[x2 = y] - 1[x1 = x2]] = 2 P(y) - sum_x P(x)^2,

so the mean of that per-position term is an unbiased estimate of Brier-n.
BrierLM = 100 x the geometric mean of Brier-1..Brier-4 (CALM, Shao et al.
2025). Every evaluation keeps its per-position terms: intervals (and the
paired differences latentlm.report draws between runs scored on the same
positions) are bootstraps over positions (latentlm/metrics/intervals.py).

The protocol, the same for every model:
  positions:  word ends of the held-out documents: a position i where the
              byte before is not whitespace and byte i is. Drawn with a fixed
              seed from the text alone (never from the model), each with at
              least `block_bytes` bytes of its document before it and
              MAX_NGRAM complete units within `max_new_bytes` after it; the
              `positions_key` of a result names exactly which.
  context:    the bytes before i, from the first word end at or after
              i - block_bytes (so at most `block_bytes`, starting at
              whitespace), nothing else: no EOS or BOS in front.
  samples:    two independent continuations per position from the model's
              own sampler at temperature 1 (no top-p), as bytes, each
              conditioned on its first byte being whitespace, as the
              truth's always is (`NEXT_BYTE`).
  n-gram:     the first n units of a continuation, compared as exact byte
              strings. unit='bytes' (the default): n bytes. unit='words': n
              words, a word being optional whitespace then a run of
              non-whitespace that whitespace (or the end of the text)
              closes, so a different space or newline inside counts as a miss.

Why the next byte is given. At a word end the next byte is whitespace by
construction. A model whose unit closes there (spaced words, entropy
units, in part BPE, whose next piece may still continue the word) reads
that from where its context stops, while a byte LM or fixed chunks would
have to predict it: a byte LM puts well under all of its probability on
it (launch/word_end_prior.py). So every model is told it: each sampler
draws its first byte (its first token, chunk or unit) from the model's
distribution conditioned on that byte being whitespace. Every model is
then scored on the same question, what follows a word and the whitespace
after it, and none is handed information another must earn.

Why it is unbiased for every model kind. The term above is unbiased for
Brier-n of whatever distribution the two samples come from, so what matters
is that each model is sampled from its own conditional p(continuation |
context bytes, first byte whitespace), not from a distortion of it:
  bytes:     any cut is a token boundary; the first token is drawn from the
             next-byte distribution renormalised over whitespace bytes.
  BPE:       a SentencePiece piece starts at whitespace (no dummy prefix,
             whitespace kept as a prefix of the next piece), so both ends of
             the context, word ends, are piece boundaries: the context
             encodes to the very tokens the document's own encoding has
             there, as in training. A random byte cut instead ends a context
             inside a piece ("the kin"), a token sequence the model never saw
             in training, and scores BPE unfairly low. The first token is
             drawn renormalised over the pieces that start with whitespace:
             a continuation starts with whitespace exactly when its first
             piece does.
  concepts:  the next chunk is drawn by rejection until its text goes on
             with whitespace (concept_sampling.complete_partials): exact,
             and a context whose draws hit the cap is counted in
             `partial_fallback_rate` instead of being scored as if nothing
             happened. A context whose text ends inside a unit (a fixed-K
             chunk cut short) ends in a partial chunk, and the drawn chunk
             must also start with that text. For fixed-K segmentation the
             context is first cut at its front to whole chunks (at most
             K - 1 bytes fewer), so its last chunk is whole: a fixed-K
             model never saw an alignment that the text decides, so any
             alignment is in its training distribution. Spaced-word units
             (segment kind 'word') carry the whitespace before a word, as
             BPE's pieces do, so a context cut at a word end ends in a
             whole unit, the one the document's own segmentation has there,
             for the reason BPE's context needs no re-tokenising. Entropy
             units start at every spaced word as well (data/entropy.py), so
             the same holds for them.
  n-grams:   a count model samples bytes from its exact conditional, the
             first renormalised over whitespace bytes.
Bytes or words, never a model's own step: a BPE token or a K-byte concept is
one model's unit and not the other's. Bytes are what every model emits in
the end, so byte n-grams ask all of them for exactly the same thing. Words
ask the same over a longer span, but at CPU scale word 3- and 4-grams
almost never match. Continuations stop after `max_new_bytes`; one with fewer
than n complete units is an outcome of its own (it never matches the truth).
"""

import hashlib
import re

import jax
import numpy as np

from latentlm.core.errors import UserError
from latentlm.data import segment
from latentlm.metrics import intervals
from latentlm.sampling import concepts as concept_sampling
from latentlm.sampling import tokens as token_sampling

MAX_NGRAM = 4
UNITS = ('bytes', 'words')
# 64 bytes: the longest context the main job's K=2 concept LM reads (half its
# window of 64 chunks), so one default serves every model of the project.
DEFAULT_BLOCK_BYTES = 64
# Enough that Brier-1's 95% interval is narrow enough to rank CPU-scale
# models (the target half-width and what it costs: docs/measurement.md).
DEFAULT_NUM_POSITIONS = 8192
DEFAULT_MAX_NEW_BYTES = 64
MAX_SAMPLER_ROWS = 512  # rows of one batched sampling stream
# The condition every sample is drawn under (the module doc); it is part of
# positions_key, so a score under another protocol never pairs with one
# under this.
NEXT_BYTE = 'whitespace'
_WORD = re.compile(rb'\s*\S+')


# ------------------------------------------------------------ the estimator
def leading_ngram(text: bytes, n: int, ended: bool,
                  unit: str = 'bytes') -> bytes | None:
  """The bytes of the first n units of `text`, or None if it has fewer.

  A word is closed by whitespace after it, or by the end of a text that
  `ended` (an EOS); an open last word may still grow, so it does not count.
  """
  if unit == 'bytes':
    return text[:n] if len(text) >= n else None
  end = 0
  for count, match in enumerate(_WORD.finditer(text), start=1):
    if match.end() == len(text) and not ended:
      return None
    end = match.end()
    if count == n:
      return text[:end]
  return None


def ngrams(text: bytes, ended: bool, unit: str = 'bytes') -> list:
  """[first 1 unit, ..., first MAX_NGRAM units]; a missing one is a marker
  distinct from every text and equal to the same marker of another sample."""
  return [leading_ngram(text, n, ended, unit) or ('short', n)
          for n in range(1, MAX_NGRAM + 1)]


def brier_terms(truths, first, second) -> np.ndarray:
  """P x MAX_NGRAM unbiased per-position terms 1[x1=y] + 1[x2=y] - 1[x1=x2].

  Each argument is a list over positions of the n-gram lists of `ngrams`.
  """
  terms = [[(x1 == y) + (x2 == y) - (x1 == x2) for y, x1, x2 in zip(*row)]
           for row in zip(truths, first, second)]
  return np.asarray(terms, np.int64).reshape(-1, MAX_NGRAM)


# ------------------------------------------------------------ the positions
def _word_ends(text: bytes) -> np.ndarray:
  """Indices i where text[i] is whitespace and text[i - 1] is not."""
  space_N = np.isin(np.frombuffer(text, np.uint8), segment.WHITESPACE)
  return np.flatnonzero(space_N[1:] & ~space_N[:-1]) + 1


def context_start(word_ends: np.ndarray, position: int,
                  block_bytes: int) -> int:
  """The first word end at or after position - block_bytes (or that byte
  itself when a single word spans the whole block)."""
  earliest = position - block_bytes
  k = np.searchsorted(word_ends, earliest)
  return int(word_ends[k]) if word_ends[k] < position else earliest


def positions(documents, block_bytes: int, num_positions: int, seed: int,
              max_new_bytes: int, unit: str = 'bytes'):
  """([(context bytes, truth n-grams)], positions_key) at word ends drawn
  with `seed` (the protocol)."""
  candidates, ends_by_doc = [], []
  for d, text in enumerate(documents):
    ends = _word_ends(text)
    ends_by_doc.append(ends)
    candidates += [(d, int(i)) for i in ends[ends >= block_bytes]]
  rng = np.random.default_rng(seed)
  chosen, where = [], []
  for index in rng.permutation(len(candidates)):
    d, i = candidates[index]
    text = documents[d]
    truth = ngrams(text[i:i + max_new_bytes], i + max_new_bytes >= len(text),
                   unit)
    if isinstance(truth[-1], bytes):  # MAX_NGRAM units within reach
      start = context_start(ends_by_doc[d], i, block_bytes)
      chosen.append((text[start:i], truth))
      where.append((d, start, i))
    if len(chosen) == num_positions:
      break
  return chosen, positions_key(documents, where, max_new_bytes, unit)


def positions_key(documents, where, max_new_bytes: int, unit: str) -> str:
  """A digest of the texts, the (document, context start, position)
  triples and the n-gram settings: equal keys, equal evaluation items."""
  digest = hashlib.sha256(
      f'{max_new_bytes}:{unit}:{MAX_NGRAM}:next={NEXT_BYTE}'.encode())
  for text in documents:
    digest.update(hashlib.sha256(text).digest())
  digest.update(np.asarray(where, np.int64).tobytes())
  return digest.hexdigest()[:16]


# -------------------------------------------------- samples from the models
def first_byte_allowed() -> np.ndarray:
  """256 booleans: the bytes a continuation may start with (NEXT_BYTE)."""
  allowed_256 = np.zeros(256, bool)
  allowed_256[segment.WHITESPACE] = True
  return allowed_256


def first_token_allowed(tokenizer) -> np.ndarray:
  """Booleans over the tokenizer's ids: those whose text starts with a byte
  first_byte_allowed allows (special ids have no text: never)."""
  allowed_256 = first_byte_allowed()
  starts = [tokenizer.decode_bytes([i])[:1]
            for i in range(tokenizer.vocab_size)]
  return np.array([bool(b) and allowed_256[b[0]] for b in starts])


def _batches(sequences, max_rows: int):
  """Index lists of equal-length sequences, at most max_rows // 2 each
  (every context is sampled twice), padded to a power of two by repeating
  the last index, so the samplers compile for few shapes."""
  groups = {}
  for i, sequence in enumerate(sequences):
    groups.setdefault(len(sequence), []).append(i)
  size = max(1, max_rows // 2)
  for indices in groups.values():
    for start in range(0, len(indices), size):
      batch = indices[start:start + size]
      padded = concept_sampling.power_of_two_at_least(len(batch))
      yield batch, batch + [batch[-1]] * (padded - len(batch))


def _done(texts, ended, unit: str, max_new_bytes: int) -> bool:
  """Whether every row has MAX_NGRAM units, has ended, or is long enough."""
  return all(e or len(t) >= max_new_bytes or
             leading_ngram(t, MAX_NGRAM, False, unit) is not None
             for t, e in zip(texts, ended))


def _check_fits(length: int, window: int, what: str):
  if length > window // 2:
    raise UserError(f'--block_bytes gives contexts of {length} {what} but the '
                    f'model samples from at most {window // 2}; lower '
                    '--block_bytes')


def token_lm_continuations(run, contexts, rng, max_new_bytes: int,
                           temperature: float = 1.0, unit: str = 'bytes',
                           stats=None):
  """Two (bytes, ended) continuations per context, rows 2p and 2p + 1."""
  del stats  # a token LM has nothing to report beyond its samples
  tokenizer = run.task.tokenizer
  sampler = token_sampling.TokenSampler(run.task, run.state.params)
  encoded = [np.asarray(tokenizer.encode(c), np.int32) for c in contexts]
  first_allowed = first_token_allowed(tokenizer)
  results = [None] * (2 * len(contexts))
  for batch, padded in _batches(encoded, MAX_SAMPLER_ROWS):
    _check_fits(len(encoded[batch[0]]), sampler.window, 'tokens')
    prompt_BxL = np.repeat(np.stack([encoded[i] for i in padded]), 2, 0)
    texts, ended = [b''] * len(prompt_BxL), np.zeros(len(prompt_BxL), bool)
    stream = sampler.stream(prompt_BxL, jax.random.fold_in(rng, batch[0]),
                            max_new_bytes, temperature, 1.0, first_allowed)
    for tokens_B in stream:
      for row in np.flatnonzero(~ended):
        ended[row] = tokens_B[row] == tokenizer.eos_id
        texts[row] += tokenizer.decode_bytes([int(tokens_B[row])])
      if _done(texts, ended, unit, max_new_bytes):
        break
    for row, i in enumerate(np.repeat(batch, 2)):
      results[2 * i + row % 2] = (texts[row][:max_new_bytes], bool(ended[row]))
  return results


def concept_chunks(task, context: bytes, align_fixed: bool = True):
  """The context's chunks L x K; with fixed-K segmentation (and
  `align_fixed`) cut at the front to whole chunks (see the module doc)."""
  tokens_N = np.asarray(task.tokenizer.encode(context), np.int32)
  K = task.chunk_len
  if align_fixed and task.autoencoder.config.segment.kind == 'fixed':
    tokens_N = tokens_N[len(tokens_N) % K:]
  return np.asarray(task.unit_fn(tokens_N), np.int32).reshape(-1, K)


def concept_lm_continuations(run, contexts, rng, max_new_bytes: int,
                             temperature: float = 1.0, unit: str = 'bytes',
                             stats=None, align_fixed: bool = True):
  """Two (bytes, ended) continuations per context, rows 2p and 2p + 1.

  `stats`, a dict, receives `partial_fallback_rate`: the share of samples
  whose next chunk (with a partial last chunk, its completion) met the
  protocol's condition in none of the draws the cap allows.
  """
  task = run.task
  tokenizer = task.tokenizer
  sampler = concept_sampling.ConceptSampler(task, run.state.params,
                                            run.state.frozen)
  chunks = [concept_chunks(task, c, align_fixed) for c in contexts]
  # Every context ends at a word end. One whose last unit the segmentation
  # has closed there is whole, and the next chunk is drawn after it; one
  # that ends inside a unit completes that unit.
  whole = [task.autoencoder.ends_unit(segment.join(c_LxK, task.pad_id),
                                      c_LxK[-1], followed_by_whitespace=True)
           for c_LxK in chunks]
  empty_K = np.full(task.chunk_len, task.pad_id, np.int32)
  # A head whose draws do not vary (mse) writes the one chunk it would on
  # every draw: one draw says whether it meets the condition.
  max_draws = (concept_sampling.MAX_COMPLETION_DRAWS
               if task.head.samples_vary else 1)
  before = [c_LxK if w else c_LxK[:-1] for c_LxK, w in zip(chunks, whole)]
  partial = [empty_K if w else c_LxK[-1] for c_LxK, w in zip(chunks, whole)]
  results = [None] * (2 * len(contexts))
  fell_back = []
  for batch, padded in _batches(before, MAX_SAMPLER_ROWS):
    _check_fits(len(chunks[batch[0]]), sampler.window, 'chunks')
    batch_rng = jax.random.fold_in(rng, batch[0])
    partial_rng, stream_rng = jax.random.split(batch_rng)
    before_BxLxK = np.stack([before[i] for i in padded])
    chosen_BxRxK, new_ids, fell_back_BxR = concept_sampling.complete_partials(
        sampler, before_BxLxK, np.stack([partial[i] for i in padded]), 2,
        partial_rng, temperature, max_draws=max_draws,
        next_byte_allowed=first_byte_allowed())
    fell_back.append(fell_back_BxR[:len(batch)])
    context_NxLxK = np.concatenate(
        [np.repeat(before_BxLxK, 2, axis=0),
         chosen_BxRxK.reshape(-1, 1, before_BxLxK.shape[-1])], axis=1)
    texts = [tokenizer.decode_bytes(ids) for row in new_ids for ids in row]
    ended = np.zeros(len(texts), bool)
    stream = sampler.stream(context_NxLxK, stream_rng, max_new_bytes,
                            temperature)
    for _, chunks_NxK in stream:
      if _done(texts, ended, unit, max_new_bytes):
        break
      for row in np.flatnonzero(~ended):
        ids, ended[row] = concept_sampling.chunk_tokens(
            chunks_NxK[row], task.pad_id, tokenizer.eos_id)
        texts[row] += tokenizer.decode_bytes(ids)
    for row, i in enumerate(np.repeat(batch, 2)):
      results[2 * i + row % 2] = (texts[row][:max_new_bytes], bool(ended[row]))
  if stats is not None:
    stats['partial_fallback_rate'] = float(np.mean(np.concatenate(fell_back)))
  return results


def score(continuations, documents, rng, block_bytes=DEFAULT_BLOCK_BYTES,
          num_positions=DEFAULT_NUM_POSITIONS,
          max_new_bytes=DEFAULT_MAX_NEW_BYTES, seed=0, unit='bytes') -> dict:
  """BrierLM of a sampler `continuations(contexts, rng) -> [(bytes, ended)]`
  (two per context) on `documents` (a list of bytes): the flat metrics with
  their intervals, the per-position terms (`brier_terms`) and the
  `positions_key` that pairs them with another run's."""
  if unit not in UNITS:
    raise UserError(f'n-gram unit {unit!r} is not one of {UNITS}')
  if block_bytes < 1 or num_positions < 1 or max_new_bytes < MAX_NGRAM:
    raise UserError(f'BrierLM needs --block_bytes >= 1, --num_positions >= 1 '
                    f'and --max_new_bytes >= {MAX_NGRAM}')
  chosen, key = positions(documents, block_bytes, num_positions, seed,
                          max_new_bytes, unit)
  if not chosen:
    raise UserError('no evaluation positions: the text has no word end with '
                    f'{block_bytes} bytes before it and {MAX_NGRAM} n-gram '
                    'units after it; lower --block_bytes or give more text')
  samples = continuations([context for context, _ in chosen], rng)
  first = [ngrams(*s, unit) for s in samples[0::2]]
  second = [ngrams(*s, unit) for s in samples[1::2]]
  terms_PxN = brier_terms([truth for _, truth in chosen], first, second)
  return dict(intervals.summarize(terms_PxN, seed), block_bytes=block_bytes,
              max_new_bytes=max_new_bytes, ngram_unit=unit,
              next_byte=NEXT_BYTE,
              positions_key=key, brier_terms=terms_PxN.tolist())


def evaluate_run(run, documents, seed=0, temperature=1.0, **kwargs) -> dict:
  """BrierLM of a language model run on `documents`, sampled by its task's
  `brier_continuations` (token_lm_continuations, concept_lm_continuations)."""
  sample = run.task.brier_continuations
  max_new_bytes = kwargs.get('max_new_bytes', DEFAULT_MAX_NEW_BYTES)
  unit = kwargs.get('unit', 'bytes')
  stats = {}
  continuations = lambda contexts, rng: sample(
      run, contexts, rng, max_new_bytes, temperature, unit, stats)
  metrics = score(continuations, documents, jax.random.key(seed), seed=seed,
                  **kwargs)
  return dict(metrics, **stats)
