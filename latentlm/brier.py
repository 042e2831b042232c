"""BrierLM: one likelihood-free score for token LMs and concept LMs.

Brier(P, y) = 2 P(y) - sum_x P(x)^2 (higher is better, at most 1) needs no
probabilities: with two independent samples x1, x2 of the model,

  E[1[x1 = y] + 1[x2 = y] - 1[x1 = x2]] = 2 P(y) - sum_x P(x)^2,

so the mean of that per-position term is an unbiased estimate of Brier-n.
BrierLM = 100 x the geometric mean of Brier-1..Brier-4 (CALM, Shao et al.
2025). The geometric mean of unbiased estimates is consistent, not unbiased;
its uncertainty is a percentile bootstrap over positions.

The protocol, the same for every model:
  positions:  bytes (unit 'bytes') or word starts (a non-whitespace byte
              after whitespace; unit 'words') of the held-out documents,
              drawn uniformly with a fixed seed, each with at
              least `block_bytes` bytes of its document before it and
              MAX_NGRAM complete units after it.
  context:    exactly the `block_bytes` bytes before the position (it may
              start inside a word), nothing else: no EOS or BOS in front.
  samples:    two independent continuations per position from the model's
              own sampler at temperature 1 (no top-p), as bytes.
  n-gram:     the first n units of a continuation, compared as exact byte
              strings. unit='bytes' (the default): n bytes. unit='words': n
              words, a word being optional whitespace then a run of
              non-whitespace that whitespace (or the end of the text)
              closes, so a different space or newline inside counts as a miss.

Why bytes or words, never a model's own step: a BPE token or a K-byte
concept is one model's unit and not the other's. Bytes are what both emit in
the end (a byte tokenizer's step, a sub-chunk piece of a concept), so byte
n-grams ask both for exactly the same thing; a concept LM gets no credit for
producing K bytes per step, and a token LM none for its finer steps. Words
ask the same over a longer span (Brier-4 ~25 bytes, CALM's horizon with BPE
tokens), but at CPU scale word 3- and 4-grams almost never match, Brier-4 is
~0 and so is the geometric mean: bytes are the default that still ranks
small models; use words for larger ones. Continuations stop after
`max_new_bytes`; one with fewer than n complete units is an outcome of its
own (it never matches the truth).

The concept LM continues a context whose segmentation may end in a partial
chunk (fixed K, or a word chunk with room left): its next chunk is drawn
conditioned on starting with that partial text, by the same candidate
rejection generate uses (concept_generate.complete_partial): exact when one
of its 16 candidates matches; when none does, the partial chunk is read as
a whole one, as generate does.
"""

import re

import jax
import numpy as np

from latentlm import concept_generate
from latentlm import generate
from latentlm.errors import UserError

MAX_NGRAM = 4
UNITS = ('bytes', 'words')
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
  return np.asarray(terms, np.float64).reshape(-1, MAX_NGRAM)


def brier_lm(brier_N: np.ndarray) -> np.ndarray:
  """100 x the geometric mean over the last axis; 0 if any Brier-n <= 0."""
  brier_N = np.asarray(brier_N, np.float64)
  positive = np.all(brier_N > 0, axis=-1)
  log_mean = np.mean(np.log(np.where(brier_N > 0, brier_N, 1.0)), axis=-1)
  return np.where(positive, 100 * np.exp(log_mean), 0.0)


def summarize(terms_PxN: np.ndarray, seed: int = 0, num_resamples: int = 1000,
              level: float = 0.95) -> dict:
  """brier_lm, brier_1..4, a bootstrap CI of brier_lm, num_positions."""
  num_positions = len(terms_PxN)
  if num_positions == 0:
    raise UserError('no evaluation positions: the text is shorter than one '
                    'block plus four n-gram units; lower --block_bytes')
  brier_N = terms_PxN.mean(0)
  rng = np.random.default_rng(seed)
  picks_RxP = rng.integers(0, num_positions, (num_resamples, num_positions))
  resampled_R = brier_lm(terms_PxN[picks_RxP].mean(1))
  tail = 100 * (1 - level) / 2
  metrics = dict(brier_lm=float(brier_lm(brier_N)))
  metrics.update({f'brier_{n + 1}': float(b) for n, b in enumerate(brier_N)})
  metrics.update(ci_low=float(np.percentile(resampled_R, tail)),
                 ci_high=float(np.percentile(resampled_R, 100 - tail)),
                 num_positions=num_positions)
  return metrics


# ------------------------------------------------------------ the positions
def positions(documents, block_bytes: int, num_positions: int, seed: int,
              max_new_bytes: int, unit: str = 'bytes'):
  """[(context bytes, truth n-grams)] at seeded positions (the protocol)."""
  candidates = []
  for d, text in enumerate(documents):
    if unit == 'bytes':
      starts = np.arange(block_bytes, len(text))
    else:
      data = np.frombuffer(text, np.uint8)
      space = np.isin(data, np.frombuffer(b' \t\n\v\f\r', np.uint8))
      starts = np.flatnonzero(~space[1:] & space[:-1]) + 1
      starts = starts[starts >= block_bytes]
    candidates += [(d, int(i)) for i in starts]
  rng = np.random.default_rng(seed)
  chosen = []
  for index in rng.permutation(len(candidates)):
    d, i = candidates[index]
    text = documents[d]
    truth = ngrams(text[i:i + max_new_bytes], i + max_new_bytes >= len(text),
                   unit)
    if isinstance(truth[-1], bytes):  # MAX_NGRAM units within reach
      chosen.append((text[i - block_bytes:i], truth))
    if len(chosen) == num_positions:
      break
  return chosen


# -------------------------------------------------- samples from the models
def _by_length(sequences):
  """{length: indices}: rows of equal length share one compiled shape."""
  groups = {}
  for i, sequence in enumerate(sequences):
    groups.setdefault(len(sequence), []).append(i)
  return groups


def _done(texts, ended, unit: str, max_new_bytes: int) -> bool:
  """Whether every row has MAX_NGRAM units, has ended, or is long enough."""
  return all(e or len(t) >= max_new_bytes or
             leading_ngram(t, MAX_NGRAM, False, unit) is not None
             for t, e in zip(texts, ended))


def token_lm_continuations(run, contexts, rng, max_new_bytes: int,
                           temperature: float = 1.0, unit: str = 'bytes'):
  """Two (bytes, ended) continuations per context, rows 2p and 2p + 1."""
  tokenizer = run.task.tokenizer
  sampler = generate.TokenSampler(run.task, run.state.params)
  encoded = [np.asarray(tokenizer.encode(c), np.int32) for c in contexts]
  results = [None] * (2 * len(contexts))
  for length, indices in _by_length(encoded).items():
    if length > sampler.window // 2:
      raise UserError(f'--block_bytes is {length} tokens but the token LM '
                      f'samples from at most {sampler.window // 2}; lower '
                      '--block_bytes')
    prompt_BxL = np.repeat(np.stack([encoded[i] for i in indices]), 2, 0)
    texts, ended = [b''] * len(prompt_BxL), np.zeros(len(prompt_BxL), bool)
    stream = sampler.stream(prompt_BxL, jax.random.fold_in(rng, length),
                            max_new_bytes, temperature, 1.0)
    for tokens_B in stream:
      for row in np.flatnonzero(~ended):
        ended[row] = tokens_B[row] == tokenizer.eos_id
        texts[row] += tokenizer.decode_bytes([int(tokens_B[row])])
      if _done(texts, ended, unit, max_new_bytes):
        break
    for row, i in enumerate(np.repeat(indices, 2)):
      results[2 * i + row % 2] = (texts[row][:max_new_bytes], bool(ended[row]))
  return results


def concept_lm_continuations(run, contexts, rng, max_new_bytes: int,
                             temperature: float = 1.0, unit: str = 'bytes'):
  """Two (bytes, ended) continuations per context, rows 2p and 2p + 1."""
  task = run.task
  tokenizer = task.tokenizer
  sampler = concept_generate.ConceptSampler(task, run.state.params,
                                            run.state.frozen)
  chunks = [np.asarray(task.unit_fn(tokenizer.encode(c)), np.int32)
            for c in contexts]
  results = [None] * (2 * len(contexts))
  for length, indices in _by_length(chunks).items():
    if length > sampler.window // 2:
      raise UserError(f'--block_bytes is {length} chunks but the concept LM '
                      f'samples from at most {sampler.window // 2}; lower '
                      '--block_bytes')
    partial_rng, stream_rng = jax.random.split(jax.random.fold_in(rng, length))
    contexts_BxLxK, texts = [], []
    for i in indices:  # the partial last chunk, completed per position
      chosen_2xK, new_ids = concept_generate.complete_partial(
          sampler, chunks[i][:-1], chunks[i][-1], 2,
          jax.random.fold_in(partial_rng, i), temperature)
      contexts_BxLxK += [np.concatenate([chunks[i][:-1], c[None]])
                         for c in chosen_2xK]
      texts += [tokenizer.decode_bytes(ids) for ids in new_ids]
    ended = np.zeros(len(texts), bool)
    stream = sampler.stream(np.stack(contexts_BxLxK), stream_rng,
                            max_new_bytes, temperature)
    for _, chunks_BxK in stream:
      if _done(texts, ended, unit, max_new_bytes):
        break
      for row in np.flatnonzero(~ended):
        ids, ended[row] = concept_generate.chunk_tokens(
            chunks_BxK[row], task.pad_id, tokenizer.eos_id)
        texts[row] += tokenizer.decode_bytes(ids)
    for row, i in enumerate(np.repeat(indices, 2)):
      results[2 * i + row % 2] = (texts[row][:max_new_bytes], bool(ended[row]))
  return results


CONTINUATIONS = dict(token_lm=token_lm_continuations,
                     concept_lm=concept_lm_continuations,
                     head_distill=concept_lm_continuations)


def score(continuations, documents, rng, block_bytes=128, num_positions=256,
          max_new_bytes=64, seed=0, unit='bytes') -> dict:
  """BrierLM of a sampler `continuations(contexts, rng) -> [(bytes, ended)]`
  (two per context) on `documents` (a list of bytes)."""
  if unit not in UNITS:
    raise UserError(f'n-gram unit {unit!r} is not one of {UNITS}')
  chosen = positions(documents, block_bytes, num_positions, seed,
                     max_new_bytes, unit)
  samples = continuations([context for context, _ in chosen], rng)
  first = [ngrams(*s, unit) for s in samples[0::2]]
  second = [ngrams(*s, unit) for s in samples[1::2]]
  terms = brier_terms([truth for _, truth in chosen], first, second)
  return dict(summarize(terms, seed), block_bytes=block_bytes,
              max_new_bytes=max_new_bytes, ngram_unit=unit)


def evaluate_run(run, documents, seed=0, temperature=1.0, **kwargs) -> dict:
  """BrierLM of a token LM or concept LM run on `documents`."""
  if run.config.task not in CONTINUATIONS:
    raise UserError(f'BrierLM needs a token_lm or concept_lm run, not '
                    f'{run.config.task!r}')
  sample = CONTINUATIONS[run.config.task]
  max_new_bytes = kwargs.get('max_new_bytes', 64)
  unit = kwargs.get('unit', 'bytes')
  continuations = lambda contexts, rng: sample(run, contexts, rng,
                                               max_new_bytes, temperature,
                                               unit)
  return score(continuations, documents, jax.random.key(seed), seed=seed,
               **kwargs)
