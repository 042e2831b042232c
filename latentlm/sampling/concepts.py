"""Text from a concept LM: prompt -> chunks -> sampled vectors -> decoded text.

Each step feeds the last chunk to the autoregressor (KV-cached), samples the
next normalised latent from the head, de-normalises it and decodes it to K
tokens (argmax, pads dropped). That decoded chunk is the next step's input in
both input kinds ('latent' re-encodes it to its posterior mean), so the model
always reads what a real chunk of text would give it.

Temperature (>= 0). With `num_candidates` = C > 1 it means the same for
every head, CALM's likelihood-free temperature: each step draws C vectors
from the head at its own temperature 1, decodes them, and picks a decoded
chunk with probability proportional to (its count among the C)^(1/T). T = 1
is exact sampling from the model; as T -> 0 the most frequent chunk wins
(ties at random): the batch approximation of p(chunk)^(1/T), which needs no
likelihood, so it also serves the energy and flow heads. It sharpens only a
model whose draws repeat: on the CPU-scale Shakespeare models almost every
draw decodes to a different chunk, so the default is C = 1, where the
temperature goes to the head itself:
  mse:       ignored: the head regresses one vector and has no distribution.
  energy:    scales the generator's input noise; 0 maps zero noise to one
             vector. A heuristic: smaller noise tends to sharpen the samples.
  flow:      scales the initial Gaussian noise of the ODE integration.
  diffusion: scales the initial noise of DDIM (deterministic steps after it).
  gmm:       divides the mixture logits and multiplies the stds; 0 takes the
             most likely component's mean.

The prompt: a new document starts after an EOS chunk, then the prompt's
chunks. Its last chunk may be cut short (the word or chunk may go on), so the
model conditions on the whole chunks before it and draws next chunks until
one decodes to text that starts with that partial chunk (rejection
sampling, exact: complete_partials); only the rest of its text is new. After
MAX_COMPLETION_DRAWS misses the partial chunk is read as a whole chunk and
generation goes on after it.

Generation stops at a chunk that decodes to EOS (its text before EOS kept) or
to nothing at all, after `max_bytes`, or (optional, like LCM) at a concept
with cosine similarity >= 0.9 to the previous one.
"""

import codecs
import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np

from latentlm import sampling
from latentlm.core.errors import UserError
from latentlm.data import corpus
from latentlm.models import transformer

# Draws per context before a partial last chunk falls back to being read as
# whole: generous, so that only a model that almost never writes the text
# the context ends in falls back (and then BrierLM counts it).
MAX_COMPLETION_DRAWS = 4096
COMPLETION_ROWS = 1024  # rows of one completion draw (contexts x draws)
DEFAULT_CANDIDATES = 1  # draws per step for the likelihood-free temperature
REPEAT_COSINE = 0.9


def choose_by_frequency(chunks_BxCxK, rng, temperature):
  """Index per row of the candidate to keep: a decoded chunk that occurs
  n times among the C is chosen with probability proportional to n^(1/T).

  Each candidate is drawn with weight n^(1/T - 1), so its n copies together
  weigh n^(1/T). T = 0 keeps a most frequent chunk.
  """
  same_BxCxC = jnp.all(chunks_BxCxK[:, :, None] == chunks_BxCxK[:, None], -1)
  count_BxC = same_BxCxC.sum(-1).astype(jnp.float32)
  inverse = jnp.where(temperature > 0, 1.0 / jnp.maximum(temperature, 1e-6),
                      1e6)
  return jax.random.categorical(rng, (inverse - 1.0) * jnp.log(count_BxC))


def on_leaves(fn, trees_def):
  """fn(*trees, *args) as a function of the trees' leaves in one list.

  A jitted call flattens its pytree arguments anew each time, and nested
  param dicts are slow to flatten: at batch 1 on CPU that is a visible share
  of a generation step (docs/results/generation_speed.md). A sampler
  flattens them once and passes the list.
  """
  return lambda leaves, *args: fn(*jax.tree.unflatten(trees_def, leaves),
                                  *args)


@functools.cache
def _sample_constants_fn(model):
  """Jitted: params -> the head's sample_constants."""
  return jax.jit(lambda params: model.apply({'params': params},
                                            method='sample_constants'))


@functools.cache
def _compiled(task, model, weights_def, num_candidates=1):
  """The jitted calls of `model` (task.model or its unrolled_layers
  version), shared by the samplers of `task`; they take (params, frozen, the
  head's sample constants) as the list of their leaves (see on_leaves). The
  step donates its cache: updated in place, not copied a step."""

  def forward(params, frozen, chunks_BxLxK, cache):
    inputs = task.model_inputs(frozen, chunks_BxLxK)
    h_BxLxD, cache = model.apply({'params': params}, inputs, cache=cache)
    return h_BxLxD[:, -1], cache

  def feed(params, frozen, constants, chunks_BxLxK, cache):
    del constants  # the head's: feeding the backbone needs none
    return forward(params, frozen, chunks_BxLxK, cache)

  def step(params, frozen, constants, chunks_BxK, cache, rng, i,
           temperature):
    """Feeds one chunk per row; samples and decodes the next one with
    fold_in(rng, i) (folded here: one dispatch a step, not two)."""
    rng = jax.random.fold_in(rng, i)
    h_BxD, cache = forward(params, frozen, chunks_BxK[:, None], cache)
    if num_candidates == 1:
      z_BxZ = model.apply({'params': params}, h_BxD, rng, temperature,
                          constants, method='sample')
      return z_BxZ, task.decode(frozen, z_BxZ), cache
    sample_rng, choose_rng = jax.random.split(rng)
    B, C = h_BxD.shape[0], num_candidates
    z_NxZ = model.apply({'params': params}, jnp.repeat(h_BxD, C, axis=0),
                        sample_rng, 1.0, constants, method='sample')
    chunks_BxCxK = task.decode(frozen, z_NxZ).reshape(B, C, -1)
    index_B = choose_by_frequency(chunks_BxCxK, choose_rng, temperature)
    rows_B = jnp.arange(B)
    return (z_NxZ.reshape(B, C, -1)[rows_B, index_B],
            chunks_BxCxK[rows_B, index_B], cache)

  return (jax.jit(on_leaves(feed, weights_def)),
          jax.jit(on_leaves(step, weights_def), donate_argnums=2))


class ConceptSampler:
  """KV-cached next-concept sampling from a concept LM task's model.

  `num_candidates` > 1 samples with CALM's likelihood-free temperature (see
  the module docstring); 1 passes the temperature to the head.
  `unroll_layers` (default: on CPU) decodes with the layer scan unrolled
  (transformer.unrolled_layers): the same samples, faster there.
  """

  def __init__(self, task, params, frozen, num_candidates=1,
               unroll_layers=None):
    if num_candidates < 1:
      raise UserError(f'num_candidates={num_candidates} must be at least 1')
    self.model, params = transformer.for_decoding(task.model, params,
                                                  unroll_layers)
    self.task, self.params, self.frozen = task, params, frozen
    self.window = task.model_config.max_len
    # Computed once here rather than in every step (see the heads'
    # sample_constants).
    self.constants = _sample_constants_fn(self.model)(params)
    self.weights, self.weights_def = jax.tree.flatten(
        (params, frozen, self.constants))
    # Jitted, public so that a benchmark can swap the step (bench.py).
    # feed_fn(weights, chunks_BxLxK, cache) -> (h_BxD, cache);
    # step_fn(weights, chunks_BxK, cache, rng, i, temperature)
    #   -> (z_BxZ, chunks_BxK, cache): its chunks are the next step's input;
    #   the cache passed in is donated (deleted).
    self.feed_fn, self.step_fn = _compiled(task, self.model,
                                           self.weights_def, num_candidates)

  def feed(self, chunks_BxLxK, cache):
    """(h after the last chunk B x D, the cache with the chunks in it)."""
    return self.feed_fn(self.weights, jnp.asarray(chunks_BxLxK), cache)

  def _prefill(self, chunks_BxLxK):
    cache = transformer.init_cache(self.task.model_config,
                                   chunks_BxLxK.shape[0], self.window)
    if chunks_BxLxK.shape[1] == 0:
      return cache
    return self.feed(chunks_BxLxK, cache)[1]

  def next_chunks(self, context_BxLxK: np.ndarray, draws: int, rng,
                  temperature: float):
    """(z_BxDxZ, chunks_BxDxK): `draws` draws of the chunk after each
    context, the first step of `stream` on `draws` copies of it, with each
    context prefilled once and its cache shared rather than recomputed per
    draw."""
    history_BxLxK = np.asarray(context_BxLxK)[:, -(self.window // 2):]
    B = history_BxLxK.shape[0]
    cache = self._prefill(history_BxLxK[:, :-1])
    cache = cache.replace(k=jnp.repeat(cache.k, draws, axis=1),
                          v=jnp.repeat(cache.v, draws, axis=1))
    pending_NxK = np.repeat(history_BxLxK[:, -1], draws, axis=0)
    z_NxZ, chunks_NxK, _ = self.step_fn(
        self.weights, pending_NxK, cache, rng, 0, temperature)
    return (np.asarray(z_NxZ).reshape(B, draws, -1),
            np.asarray(chunks_NxK).reshape(B, draws, -1))

  def stream(self, context_BxLxK: np.ndarray, rng, max_new: int,
             temperature: float):
    """Yields (z_BxZ, chunks_BxK) of each next concept, max_new times.

    Step i samples with fold_in(rng, i). When the window is full, the cache
    is refilled from the last half of the window. Step i + 1 is dispatched
    before step i's outputs are read: its input, step i's chunks, stays on
    the device, so the host's share of a step (the dispatch, the caller's
    work) overlaps the device's (docs/results/generation_speed.md).
    """
    history_BxLxK = np.asarray(context_BxLxK)[:, -(self.window // 2):]
    cache = self._prefill(history_BxLxK[:, :-1])
    cached = history_BxLxK.shape[1] - 1  # counted here: no device sync a step
    pending_BxK = history_BxLxK[:, -1]
    # Joined only at a refill: a join a step would copy the whole history.
    history = [history_BxLxK]
    unread = None  # the last step's (z, chunks), still on the device

    def read(step_outputs):
      z_BxZ, chunks_BxK = (np.asarray(x) for x in step_outputs)
      history.append(chunks_BxK[:, None])
      return z_BxZ, chunks_BxK

    for i in range(max_new):
      if cached >= self.window:
        if unread is not None:  # the refill needs every chunk on the host
          yield read(unread)
          unread = None
        recent_BxLxK = np.concatenate(history, axis=1)[:, -(self.window // 2):]
        history[:] = [recent_BxLxK]
        cache = self._prefill(recent_BxLxK[:, :-1])
        cached = recent_BxLxK.shape[1] - 1
      # The last step's chunks, on the device (NumPy ones, after the
      # prefill or a refill, go with the call: jnp.asarray first would cost
      # a dispatch of its own).
      z_BxZ, chunks_BxK, cache = self.step_fn(
          self.weights, pending_BxK, cache, rng, i, temperature)
      cached += 1
      if unread is not None:
        yield read(unread)
      unread = z_BxZ, chunks_BxK
      pending_BxK = chunks_BxK
    if unread is not None:
      yield read(unread)


def chunk_tokens(chunk_K: np.ndarray, pad_id: int, eos_id: int):
  """(text token ids of a decoded chunk, whether it ends the text).

  Pads are dropped wherever they are; EOS and what follows it are cut.
  """
  ids = [int(t) for t in chunk_K if t != pad_id]
  if eos_id in ids:
    return ids[:ids.index(eos_id)], True
  return ids, not ids


def prompt_chunks(task, prompt: str):
  """(context chunks L x K: EOS chunk + whole prompt chunks, partial chunk
  K or None)."""
  tokenizer = task.tokenizer
  eos_K = np.full(task.chunk_len, task.pad_id, np.int32)
  eos_K[0] = tokenizer.eos_id
  chunks_MxK = np.asarray(task.unit_fn(tokenizer.encode(prompt)), np.int32)
  if not len(chunks_MxK):
    return eos_K[None], None
  return np.concatenate([eos_K[None], chunks_MxK[:-1]]), chunks_MxK[-1]


def power_of_two_at_least(n: int) -> int:
  """A batch size that bounds the shapes a sampler compiles for."""
  return 1 << max(n - 1, 0).bit_length()


def _starts_with_allowed_byte(tokenizer, ids, allowed_256) -> bool:
  first = tokenizer.decode_bytes(ids[:1])
  return bool(first) and bool(allowed_256[first[0]])


def complete_partials(sampler, context_BxLxK, partial_BxK, num_rows: int,
                      rng, temperature, max_draws: int = MAX_COMPLETION_DRAWS,
                      whole_B=None, next_byte_allowed=None):
  """Completes each context's partial last chunk, num_rows times.

  The text so far ends in `partial_BxK[b]` (a chunk with room left; all
  pads for none): the model's next chunk must start with its text, and with
  `next_byte_allowed` (256 booleans) also go on with a byte it allows right
  after it (BrierLM's next-byte condition, as the token and n-gram
  samplers' `first_allowed`).
  Rejection sampling draws next chunks after the whole chunks
  `context_BxLxK[b]` until num_rows of them qualify; the first matches of
  i.i.d. draws are i.i.d. draws of p(chunk | it qualifies), so the
  completion is exact. (A draw that ends exactly at the partial text does
  not qualify with `next_byte_allowed`: exact for fixed chunks, which are
  full, and for units that close at word ends, whose contexts end whole.)
  A context whose matches are still missing after `max_draws` draws falls
  back for the rows left, and says so (the caller counts it): to a draw
  that starts with the partial text without an allowed byte after it, or,
  failing that, to reading the partial chunk as whole (no new text).

  Returns (chosen_BxRxK, new_ids [B][R] token ids after the partial text,
  fell_back_BxR). Without `next_byte_allowed`, a whole last chunk draws
  nothing: one of K tokens, or one `whole_B` marks (a unit whose end the
  segmentation has decided, autoencoder.Task.ends_unit).
  """
  task = sampler.task
  tokenizer = task.tokenizer
  pad_id, eos_id = task.pad_id, tokenizer.eos_id
  B = len(partial_BxK)
  partials = [chunk_tokens(p_K, pad_id, eos_id)[0] for p_K in partial_BxK]
  chosen = [[p_K] * num_rows for p_K in partial_BxK]
  new_ids = [[[] for _ in range(num_rows)] for _ in range(B)]
  fallback = [None] * B  # (chunk, new ids) of a draw without an allowed byte
  # A whole chunk does not grow: the chunk after it is unconstrained.
  if whole_B is None:
    whole_B = [len(ids) == len(p_K) for ids, p_K in zip(partials, partial_BxK)]
  filled_B = np.where(np.asarray(whole_B, bool) & (next_byte_allowed is None),
                      num_rows, 0)
  drawn_B = np.zeros(B, np.int64)
  for round_index in itertools.count():
    open_O = np.flatnonzero((filled_B < num_rows) & (drawn_B < max_draws))
    if not len(open_O):
      break
    # Powers of two bound the shapes a sampler compiles for.
    bucket = power_of_two_at_least(len(open_O))
    rows = np.concatenate([open_O, np.repeat(open_O[-1:], bucket - len(open_O))])
    draws = max(1, COMPLETION_ROWS // bucket)
    _, candidates_BxDxK = sampler.next_chunks(
        np.asarray(context_BxLxK)[rows], draws,
        jax.random.fold_in(rng, round_index), temperature)
    for b, candidates_DxK in zip(open_O, candidates_BxDxK):
      drawn_B[b] += draws
      for chunk_K in candidates_DxK:
        ids, ended = chunk_tokens(chunk_K, pad_id, eos_id)
        if ended or ids[:len(partials[b])] != partials[b]:
          continue
        rest = ids[len(partials[b]):]
        if next_byte_allowed is not None and not _starts_with_allowed_byte(
            tokenizer, rest, next_byte_allowed):
          if fallback[b] is None and rest:
            fallback[b] = chunk_K, rest
          continue
        chosen[b][filled_B[b]] = chunk_K
        new_ids[b][filled_B[b]] = rest
        filled_B[b] += 1
        if filled_B[b] == num_rows:
          break
  fell_back_BxR = np.arange(num_rows)[None] >= filled_B[:, None]
  for b, r in zip(*np.nonzero(fell_back_BxR)):
    if fallback[b] is not None:
      chosen[b][r], new_ids[b][r] = fallback[b]
  return np.asarray(chosen), new_ids, fell_back_BxR


def concept_lm_texts(run, prompt: str, num_samples: int, rng,
                     temperature=sampling.TEMPERATURE,
                     max_bytes=sampling.MAX_BYTES,
                     on_text=None, stop_on_repeat=False,
                     num_candidates=DEFAULT_CANDIDATES) -> list[str]:
  """Samples continuations of `prompt`; `on_text` receives sample 0's pieces."""
  if temperature < 0:
    raise UserError(f'temperature={temperature} must be >= 0')
  task = run.task
  tokenizer = task.tokenizer
  sampler = ConceptSampler(task, run.state.params, run.state.frozen,
                           num_candidates)
  context_LxK, partial_K = prompt_chunks(task, prompt)
  outputs = [[] for _ in range(num_samples)]
  decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')

  def emit(row, ids):
    outputs[row].extend(ids)
    if row == 0 and on_text is not None and ids:
      on_text(decoder.decode(tokenizer.decode_bytes(ids)))

  context_BxLxK = np.broadcast_to(context_LxK, (num_samples,
                                                *context_LxK.shape))
  partial_rng, rng = jax.random.split(rng)
  if partial_K is not None:
    chosen_1xRxK, new_ids, _ = complete_partials(
        sampler, context_LxK[None], partial_K[None], num_samples,
        partial_rng, temperature)
    for row, ids in enumerate(new_ids[0]):
      emit(row, ids)
    context_BxLxK = np.concatenate([context_BxLxK, chosen_1xRxK[0][:, None]],
                                   1)

  done = np.zeros(num_samples, bool)
  previous_BxZ = None
  for z_BxZ, chunks_BxK in sampler.stream(context_BxLxK, rng, max_bytes,
                                          temperature):
    if stop_on_repeat and previous_BxZ is not None:
      cosine_B = np.sum(z_BxZ * previous_BxZ, -1) / np.maximum(
          np.linalg.norm(z_BxZ, axis=-1) *
          np.linalg.norm(previous_BxZ, axis=-1), 1e-9)
      done |= cosine_B >= REPEAT_COSINE
    previous_BxZ = z_BxZ
    for row in np.flatnonzero(~done):
      ids, ended = chunk_tokens(chunks_BxK[row], task.pad_id,
                                tokenizer.eos_id)
      emit(row, ids)
      done[row] = ended or len(outputs[row]) >= max_bytes
    if done.all():
      break
  return [tokenizer.decode(ids) for ids in outputs]


# ------------------------------------------------- a quick check of samples
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
  """Lower-cased words: letters, with inner apostrophes (o'er, follow'd)."""
  return _WORD.findall(text.lower())


def training_vocabulary(data_config) -> set[str]:
  """Every word of the training split of the corpus."""
  vocabulary = set()
  for document in corpus.load_split(data_config, 'train'):
    text = document['text']
    if isinstance(text, bytes):
      text = text.decode('utf-8', errors='replace')
    vocabulary.update(words(text))
  return vocabulary


def vocabulary_fraction(texts, vocabulary: set[str]) -> float:
  """The fraction of the words of `texts` that occur in `vocabulary`."""
  all_words = [w for text in texts for w in words(text)]
  return sum(w in vocabulary for w in all_words) / max(len(all_words), 1)
