"""Entropy units (as in the Byte Latent Transformer): a unit starts where a
small byte LM finds the next byte hard to predict.

A unit starts at byte t when the entropy of the byte LM's prediction of
x_t from the bytes before it is above a threshold, or when the unit would
otherwise grow past K bytes, or where a spaced word starts (segment.py:
whitespace after a non-whitespace byte, and EOS edges, so EOS is a unit of
its own and no unit spans two documents). The first byte always starts a
unit: nothing predicts it.

So entropy units are spaced words that the byte LM splits further where it
finds a byte hard to predict (inside a long or rare word, before a name),
and a unit never spans a word end. That keeps units meaning-shaped, and it
makes every word end a unit boundary, as for spaced words and BPE pieces:
BrierLM's contexts, cut at word ends, end in a whole unit. Without it, the
byte LM rarely cuts before the predictable space after a word, and the
protocol would have to complete the whole last word by rejection, which
at CPU scale often finds no match (docs/results/units.md).

Every boundary is decided by the bytes up to it (the entropy of x_t from
the bytes before it; whether x_t is whitespace after a word), so whether a
text's last unit goes on depends only on the text and the byte after it.
A sampler ends a unit at its decoded length, and BrierLM's protocol
(latentlm/metrics/brier.py) completes a last unit only where the byte LM
says the unit goes on and no whitespace follows.

The threshold sets the mean unit length. `threshold_for_length` finds the
threshold that gives a target mean on a sample of text, by bisection: the
mean length only grows as the threshold rises.

The byte LM sees at most its window W of bytes: a text longer than W is
scored in windows W/2 apart, each byte from the window that gives it the
most context (at least W/2 bytes, or all there are), so that entropies do
not depend on where a document happens to be cut.
"""

import jax
import jax.numpy as jnp
import numpy as np

from latentlm.core.errors import UserError
from latentlm.data import segment

BITS = 1 / np.log(2)


def unit_starts(entropies_N: np.ndarray, threshold: float, K: int,
                forced_N: np.ndarray) -> np.ndarray:
  """Start positions of the units: entropy above `threshold`, a unit
  reaching K bytes, or `forced_N`. A walk over the bytes, since the K cap
  depends on where the last unit started."""
  n = len(entropies_N)
  if n == 0:
    return np.zeros(0, np.int64)
  starts_N = (np.asarray(entropies_N) > threshold) | np.asarray(forced_N)
  starts_N[0] = True
  marked = np.flatnonzero(starts_N).tolist() + [n]
  starts = []
  for begin, end in zip(marked[:-1], marked[1:]):
    # From a marked start, cuts every K bytes until the next marked one.
    starts.extend(range(begin, end, K))
  return np.asarray(starts, np.int64)


def segment_by_entropy(tokens_N: np.ndarray, entropies_N: np.ndarray,
                       threshold: float, K: int, pad_id: int,
                       eos_id: int) -> np.ndarray:
  """int32 [M, K] pad-filled units of `tokens_N`; join(units) == tokens."""
  tokens_N = np.asarray(tokens_N).astype(np.int32, copy=False)
  if len(entropies_N) != len(tokens_N):
    raise ValueError(f'{len(entropies_N)} entropies for {len(tokens_N)} '
                     'tokens')
  forced_N = segment.spaced_word_starts(tokens_N, eos_id)
  starts_M = unit_starts(entropies_N, threshold, K, forced_N)
  return segment.gather(tokens_N, starts_M, K, pad_id)


def mean_unit_length(entropies, tokens, threshold: float, K: int,
                     eos_id: int) -> float:
  """Mean bytes per unit over documents (lists of arrays)."""
  num_units = sum(len(unit_starts(h, threshold, K,
                                  segment.spaced_word_starts(t, eos_id)))
                  for h, t in zip(entropies, tokens))
  return sum(len(t) for t in tokens) / max(num_units, 1)


def threshold_for_length(entropies, tokens, target: float, K: int,
                         eos_id: int, iterations: int = 40) -> float:
  """The threshold (bits) whose mean unit length on the documents is
  closest to `target` bytes (1 <= target <= K). Units never span a word
  end, so no threshold makes them longer than the spaced words (cut at K)
  are on average: a target above that gets the spaced words."""
  if not 1 <= target <= K:
    raise UserError(f'a mean of {target} bytes per unit is not between 1 '
                    f'and K={K}')
  finite = np.concatenate([h[np.isfinite(h)] for h in entropies] + [[0.0]])
  low, high = float(finite.min()) - 1.0, float(finite.max()) + 1.0
  for _ in range(iterations):
    middle = (low + high) / 2
    if mean_unit_length(entropies, tokens, middle, K, eos_id) < target:
      low = middle
    else:
      high = middle
  candidates = (low, high)
  lengths = [mean_unit_length(entropies, tokens, t, K, eos_id)
             for t in candidates]
  return candidates[int(np.argmin([abs(l - target) for l in lengths]))]


# Windows scored per call, at most: a long text is read in batches of this
# many, a short one (a BrierLM context is one window) in the smallest power
# of two that holds its windows, so few shapes compile and a short text does
# not pay for WINDOW_BATCH windows.
WINDOW_BATCH = 64


def _fixed_batches(windows_BxW: np.ndarray):
  """Batches of the windows, each padded with zero windows (dropped from
  the output by the caller's slicing) to a power of two <= WINDOW_BATCH."""
  size = min(WINDOW_BATCH, 1 << (len(windows_BxW) - 1).bit_length())
  for begin in range(0, len(windows_BxW), size):
    batch_BxW = windows_BxW[begin:begin + size]
    yield np.pad(batch_BxW, ((0, size - len(batch_BxW)), (0, 0)))


class EntropyModel:
  """Next-byte entropies (bits) of a byte LM: `model`, a flax module
  mapping tokens_BxW to (logits_BxWxV, cache), with `params`, read in
  windows of `window` bytes."""

  def __init__(self, model, params, window: int):
    self.window = window

    def entropies(params, tokens_BxW):
      logits_BxWxV, _ = model.apply({'params': params}, tokens_BxW)
      log_p = jax.nn.log_softmax(logits_BxWxV.astype(jnp.float32), axis=-1)
      return -(jnp.exp(log_p) * log_p).sum(-1) * BITS

    self._entropies = jax.jit(entropies)
    self.params = params

  def __call__(self, tokens_N: np.ndarray) -> np.ndarray:
    """float32 [N]: entry t is the entropy of the prediction of x_t from
    the bytes before it (in one window); +inf at t = 0."""
    tokens_N = np.asarray(tokens_N, np.int32)
    n, W = len(tokens_N), self.window
    out_N = np.full(n, np.inf, np.float32)
    if n < 2:
      return out_N
    half = max(W // 2, 1)
    # Windows start at 0, half, 2 half, ...; window s predicts bytes
    # s + 1 .. s + W - 1 and keeps those from s + half on, which have at
    # least half a window of context (the first window keeps all).
    starts = list(range(0, max(n - W, 0) + half, half)) or [0]
    padded_N = np.concatenate([tokens_N, np.zeros(W, np.int32)])
    windows_BxW = np.stack([padded_N[s:s + W] for s in starts])
    h_BxW = np.concatenate([
        np.asarray(self._entropies(self.params, batch_BxW))
        for batch_BxW in _fixed_batches(windows_BxW)])
    for i, s in enumerate(starts):
      first = 1 if i == 0 else half
      end = min(s + W, n)
      # Logit j of window s predicts byte s + j + 1.
      out_N[s + first:end] = h_BxW[i, first - 1:end - s - 1]
    return out_N


# The text the threshold is set on: the first bytes of the entropy model's
# training split, enough for a mean over tens of thousands of units.
CALIBRATION_BYTES = 1 << 18


class EntropyUnits:
  """A unit_fn (data/pipeline.py): the entropy units of a token sequence,
  under the byte LM `model` (its window `window`) with `weights`, at the
  threshold whose mean unit length on CALIBRATION_BYTES of the byte LM's
  training split (`data_config`) is `mean_bytes`.

  Picklable (a module, configs, host arrays); the model is compiled, and
  the threshold found, on first use in each process, the same everywhere.
  """

  def __init__(self, model, window: int, weights, data_config, *, K: int,
               mean_bytes: float, pad_id: int, eos_id: int):
    self.module, self.window, self.weights = model, window, weights
    self.data_config = data_config
    self.K, self.mean_bytes = K, mean_bytes
    self.pad_id, self.eos_id = pad_id, eos_id
    self._model = self._threshold = None

  def __getstate__(self):
    return dict(self.__dict__, _model=None)

  def model(self) -> EntropyModel:
    if self._model is None:
      if self.weights is None:
        raise UserError('entropy units need the trained entropy model, and '
                        'this task was built from configs alone: load the '
                        'run (latentlm.training.runs.load)')
      self._model = EntropyModel(self.module, self.weights['params'],
                                 self.window)
    return self._model

  def threshold(self) -> float:
    """Bits of next-byte entropy above which a unit starts."""
    if self._threshold is None:
      from latentlm.data import corpus  # pylint: disable=g-import-not-at-top
      from latentlm.data import tokenizers  # pylint: disable=g-import-not-at-top
      tokenizer = tokenizers.get_tokenizer(self.data_config)
      tokens, budget = [], CALIBRATION_BYTES
      for text in corpus.split_texts(self.data_config, 'train'):
        if budget <= 0:
          break
        text = text if isinstance(text, bytes) else text.encode('utf-8')
        ids = np.concatenate([[self.eos_id], tokenizer.encode(text)])
        tokens.append(ids[:budget].astype(np.int32))
        budget -= len(tokens[-1])
      entropies = [self.model()(t) for t in tokens]
      self._threshold = threshold_for_length(entropies, tokens,
                                             self.mean_bytes, self.K,
                                             self.eos_id)
    return self._threshold

  def __call__(self, tokens_N: np.ndarray) -> np.ndarray:
    tokens_N = np.asarray(tokens_N, np.int32)
    return segment_by_entropy(tokens_N, self.model()(tokens_N),
                              self.threshold(), self.K, self.pad_id,
                              self.eos_id)

  def starts_unit_after(self, tokens_N: np.ndarray) -> bool:
    """Whether the byte after the text `tokens_N` starts a unit whatever it
    is: the byte LM finds it hard to predict, or the text ends in EOS.
    Decided by the text alone; the caller adds the K cap (it needs the last
    unit's length) and whitespace after a word (it needs the next byte)."""
    tokens_N = np.asarray(tokens_N, np.int32)
    if not len(tokens_N) or tokens_N[-1] == self.eos_id:
      return True
    next_entropy = self.model()(np.append(tokens_N, 0))[-1]
    return bool(next_entropy > self.threshold())
