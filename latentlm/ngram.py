"""Byte n-gram references: python -m latentlm.ngram --workdir=RUN --out=DIR.

A count-based ladder that says how trained a model is: orders 2..5 (or any
of 1..8) fit on a run's training split and scored on its held-out split by
bits per byte and by BrierLM at the same positions as latentlm.evaluate.
--config=FILE.py[:ARGS] (e.g. configs/token_lm.py) names the data instead
of a run, for a ladder with no trained run beside it.

  python -m latentlm.ngram --workdir=RUN --orders=2,3,4,5 --out=DIR \
      [--split=test] [--text=FILE] [--num_positions=N --block_bytes=B \
      --max_new_bytes=M --seed=S --ngram_unit=bytes]

writes DIR/ngram-N/reference.json and DIR/ngram-N/evaluations.jsonl (two
records in latentlm.evaluate's format: metric 'default' with bits_per_byte,
metric 'brier' with BrierLM) for each order, prints a table, and as its last
stdout line one JSON list of the per-order results.

Smoothing: interpolated Witten-Bell,

  P(w | h) = (c(h w) + T(h) P(w | h')) / (c(h) + T(h)),

h' the context h without its oldest byte, T(h) the number of distinct bytes
seen after h, c(h) = sum_w c(h w); an unseen context (c(h) = 0) takes
P(w | h'); below order 1 is the uniform distribution over 256 bytes. Why
Witten-Bell rather than interpolated Kneser-Ney: it has no discount to
estimate (KN's discounts come from counts of counts, which are fragile on the
tiny texts tests and smoke runs use), every order is a plain function of
raw counts (easy to check against a brute-force count), and it is the
smoothing of the issue's reference numbers, so a ladder here is comparable
with them.

Why numpy and not a library: neither candidate is installed here nor fits
well: nltk.lm counts and scores one n-gram at a time in Python, far too slow
for a training split of megabytes at orders up to 5, and kenlm's pip package
only queries models that its separately compiled lmplz estimates (modified
Kneser-Ney only). Here counts are packed integer keys (order <= 8
bytes in a uint64) counted with np.unique; lookups are np.searchsorted; the
only Python loops are over orders and over sampling steps of a whole batch.

Contexts never cross documents: each document is scored from its start, its
first bytes with the shorter contexts they have, and the training counts of
every order k come only from k-grams inside one document. The model has no
end of text: bits per byte counts the document's bytes only, and no sampled
continuation ends.
"""

import dataclasses
import itertools
import json
import os
import time

from absl import flags
import numpy as np

from latentlm.core import cli
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError

# brier (the training stack, JAX) and corpus (TFDS) are imported by the
# command's functions only: the model needs numpy alone, and its users and
# tests need not wait seconds for those imports.

VOCAB = 256
MAX_ORDER = 8  # a k-gram of bytes packs into a uint64 key for k <= 8
SMOOTHING = 'witten-bell'
EVALUATIONS = 'evaluations.jsonl'
REFERENCE = 'reference.json'


# ---------------------------------------------------------------- the counts
def _concatenate(documents):
  """All bytes as one uint8 array, and each byte's index in its document."""
  arrays = [np.frombuffer(bytes(d), np.uint8) for d in documents]
  lengths_D = np.array([len(a) for a in arrays], np.int64)
  data_L = np.concatenate(arrays) if arrays else np.zeros(0, np.uint8)
  starts_D = np.cumsum(lengths_D) - lengths_D
  offset_L = np.arange(len(data_L)) - np.repeat(starts_D, lengths_D)
  return data_L, offset_L


def _window_keys(data_L: np.ndarray, k: int) -> np.ndarray:
  """uint64 keys of the k bytes starting at each of the L - k + 1 starts;
  the oldest byte in the highest bits, so key >> 8 is the context's key."""
  num = max(len(data_L) - k + 1, 0)
  keys = np.zeros(num, np.uint64)
  for j in range(k):
    keys = (keys << np.uint64(8)) | data_L[j:j + num].astype(np.uint64)
  return keys


@dataclasses.dataclass
class _Counts:
  """The k-grams of one order k and their contexts (the first k - 1 bytes).

  Contexts are sorted like their k-grams, so a context's k-grams are the
  contiguous run ngram_keys[starts[c]:starts[c] + types[c]].
  """
  ngram_keys: np.ndarray      # sorted uint64
  ngram_counts: np.ndarray    # int64, c(h w)
  context_keys: np.ndarray    # sorted uint64
  context_starts: np.ndarray  # int64, first k-gram of the context
  context_types: np.ndarray   # int64, T(h)
  context_totals: np.ndarray  # int64, c(h)

  @classmethod
  def count(cls, data_L, offset_L, k: int):
    keys = _window_keys(data_L, k)
    inside = offset_L[k - 1:] >= k - 1  # the k-gram ends in its own document
    ngram_keys, ngram_counts = np.unique(keys[inside], return_counts=True)
    context_keys, starts, types = np.unique(ngram_keys >> np.uint64(8),
                                            return_index=True,
                                            return_counts=True)
    totals = (np.add.reduceat(ngram_counts, starts) if len(starts)
              else np.zeros(0, np.int64))
    return cls(ngram_keys, ngram_counts.astype(np.int64), context_keys,
               starts.astype(np.int64), types.astype(np.int64),
               totals.astype(np.int64))

  def contexts_of(self, keys_B: np.ndarray, valid_B: np.ndarray):
    """(index into the context arrays, T(h), c(h)) of each context key;
    T and c are 0 for an unseen context and where valid_B is False."""
    if not len(self.context_keys):  # no document is k bytes long
      zeros_B = np.zeros(keys_B.shape, np.int64)
      return zeros_B, zeros_B, zeros_B
    index_B = np.minimum(np.searchsorted(self.context_keys, keys_B),
                         len(self.context_keys) - 1)
    seen_B = valid_B & (self.context_keys[index_B] == keys_B)
    return (index_B, np.where(seen_B, self.context_types[index_B], 0),
            np.where(seen_B, self.context_totals[index_B], 0))

  def ngram_counts_of(self, keys_B: np.ndarray) -> np.ndarray:
    """c(h w) of each k-gram key (0 for an unseen one)."""
    if not len(self.ngram_keys):
      return np.zeros(keys_B.shape, np.int64)
    index_B = np.minimum(np.searchsorted(self.ngram_keys, keys_B),
                         len(self.ngram_keys) - 1)
    return np.where(self.ngram_keys[index_B] == keys_B,
                    self.ngram_counts[index_B], 0)

  def followers(self, index_B: np.ndarray, types_B: np.ndarray):
    """c(h w) for all 256 w of each context (contexts_of's index and T(h)),
    as B x 256: a scatter of each context's contiguous k-grams."""
    counts_Bx256 = np.zeros((len(index_B), VOCAB), np.int64)
    if not len(self.context_keys):
      return counts_Bx256
    rows = np.repeat(np.arange(len(index_B)), types_B)
    first = np.repeat(self.context_starts[index_B] - np.cumsum(types_B)
                      + types_B, types_B)
    ngrams = first + np.arange(len(rows))
    next_bytes = (self.ngram_keys[ngrams] & np.uint64(0xFF)).astype(np.int64)
    counts_Bx256[rows, next_bytes] = self.ngram_counts[ngrams]
    return counts_Bx256


def _interpolate(lower, counts, types, totals):
  """Witten-Bell: (c(h w) + T(h) P_lower) / (c(h) + T(h)), or P_lower where
  c(h) = 0 (an unseen or too-short context)."""
  seen = totals > 0
  denominator = np.where(seen, totals + types, 1)
  return np.where(seen, (counts + types * lower) / denominator, lower)


# ----------------------------------------------------------------- the model
@dataclasses.dataclass
class ByteNgram:
  """An interpolated Witten-Bell byte n-gram model of `order` (context
  order - 1 bytes); counts[k - 1] holds the k-grams."""
  order: int
  counts: list
  num_train_bytes: int
  smoothing: str = SMOOTHING

  @classmethod
  def fit(cls, documents, order: int) -> 'ByteNgram':
    """Counts every k-gram (k <= order) inside each document of bytes."""
    check_order(order)
    data_L, offset_L = _concatenate(documents)
    if not len(data_L):
      raise UserError('the training text is empty: nothing to count')
    counts = [_Counts.count(data_L, offset_L, k) for k in range(1, order + 1)]
    return cls(order, counts, len(data_L))

  # ------------------------------------------------------------ scoring
  def log2_probs(self, documents) -> np.ndarray:
    """log2 P(byte | its context) of every byte of the documents, in order,
    each document from its start (shorter contexts there)."""
    data_L, offset_L = _concatenate(documents)
    probs_L = np.full(len(data_L), 1.0 / VOCAB)
    for k, table in enumerate(self.counts, start=1):
      if len(data_L) < k:
        break
      keys = _window_keys(data_L, k)  # the k-gram ending at byte k - 1 + i
      has_context = offset_L[k - 1:] >= k - 1
      _, types, totals = table.contexts_of(keys >> np.uint64(8), has_context)
      probs_L[k - 1:] = _interpolate(probs_L[k - 1:],
                                     table.ngram_counts_of(keys), types, totals)
    return np.log2(probs_L)

  def bits_per_byte(self, documents) -> float:
    log2_probs = self.log2_probs(documents)
    if not len(log2_probs):
      raise UserError('the evaluation text is empty: no bytes to score')
    return float(-log2_probs.mean())

  # ------------------------------------------------------- distributions
  def _window(self, contexts):
    """The last order - 1 bytes of each context, right-aligned in a
    B x (order - 1) uint8 array, and how many of them are real."""
    width = self.order - 1
    window_BxC = np.zeros((len(contexts), width), np.uint8)
    lengths_B = np.zeros(len(contexts), np.int64)
    for b, context in enumerate(contexts):
      tail = bytes(context)[max(len(context) - width, 0):]
      window_BxC[b, width - len(tail):] = np.frombuffer(tail, np.uint8)
      lengths_B[b] = len(tail)
    return window_BxC, lengths_B

  def _probs(self, window_BxC: np.ndarray, lengths_B: np.ndarray):
    width = self.order - 1
    probs_Bx256 = np.full((len(lengths_B), VOCAB), 1.0 / VOCAB)
    keys_B = np.zeros(len(lengths_B), np.uint64)
    for k, table in enumerate(self.counts, start=1):
      if k > 1:  # one byte older: it goes in above the k - 2 newer ones
        older_B = window_BxC[:, width - (k - 1)].astype(np.uint64)
        keys_B |= older_B << np.uint64(8 * (k - 2))
      index_B, types_B, totals_B = table.contexts_of(keys_B,
                                                     lengths_B >= k - 1)
      probs_Bx256 = _interpolate(probs_Bx256,
                                 table.followers(index_B, types_B),
                                 types_B[:, None], totals_B[:, None])
    return probs_Bx256

  def next_byte_probs(self, contexts) -> np.ndarray:
    """P(next byte | context) for a batch of contexts (bytes), B x 256."""
    return self._probs(*self._window(contexts))

  # ------------------------------------------------------------ sampling
  def stream(self, contexts, rng: np.random.Generator, first_allowed=None):
    """Sampled next bytes (uint8, one per context) at temperature 1, step
    after step without end; each step draws for the whole batch at once.
    `first_allowed` (256 booleans) restricts the first byte to those, drawn
    from the model's probabilities renormalised over them."""
    window_BxC, lengths_B = self._window(contexts)
    allowed_256 = first_allowed  # the first step's only
    while True:
      probs_Bx256 = self._probs(window_BxC, lengths_B)
      if allowed_256 is not None:
        probs_Bx256 = probs_Bx256 * np.asarray(allowed_256, bool)
        allowed_256 = None
      cdf_Bx256 = np.cumsum(probs_Bx256, axis=1)
      threshold_B = rng.random(len(lengths_B)) * cdf_Bx256[:, -1]
      new_B = (cdf_Bx256 <= threshold_B[:, None]).sum(1).astype(np.uint8)
      yield new_B
      if window_BxC.shape[1]:
        window_BxC = np.concatenate([window_BxC[:, 1:], new_B[:, None]], 1)
        lengths_B = np.minimum(lengths_B + 1, window_BxC.shape[1])

  def sample(self, contexts, num_bytes: int, rng: np.random.Generator):
    """One sampled continuation of num_bytes bytes per context."""
    steps = itertools.islice(self.stream(contexts, rng), num_bytes)
    return _rows(list(steps), len(contexts))


def check_order(order: int):
  """A UserError unless 1 <= order <= MAX_ORDER (the packed keys' limit)."""
  if not 1 <= order <= MAX_ORDER:
    raise UserError(f'n-gram order {order} is not in 1..{MAX_ORDER}')


def fit(documents, order: int) -> ByteNgram:
  return ByteNgram.fit(documents, order)


def numpy_rng(rng) -> np.random.Generator:
  """A numpy Generator from what brier.score passes on: a Generator, an
  int seed, None (seed 0) or a JAX key (seeded by its key data)."""
  if isinstance(rng, np.random.Generator):
    return rng
  if rng is None or isinstance(rng, (int, np.integer)):
    return np.random.default_rng(0 if rng is None else int(rng))
  import jax  # pylint: disable=g-import-not-at-top
  key_data = np.asarray(jax.random.key_data(rng)).ravel()
  return np.random.default_rng([int(x) for x in key_data])


def continuations(model: ByteNgram, max_new_bytes: int,
                  unit: str = 'bytes'):
  """brier.score's sampler: two independent continuations per context (rows
  2p and 2p + 1), never ended (the model has no EOS), their first byte
  whitespace (the protocol's condition). Like the project's LM
  samplers, it stops once every row holds the MAX_NGRAM units BrierLM
  compares (what follows them is never read), or after max_new_bytes."""
  from latentlm.metrics import brier  # pylint: disable=g-import-not-at-top
  def complete(texts) -> bool:
    return all(brier.leading_ngram(t, brier.MAX_NGRAM, False, unit)
               is not None for t in texts)
  def sample(contexts, rng):
    doubled = [c for c in contexts for _ in range(2)]
    columns = []
    for new_B in model.stream(doubled, numpy_rng(rng),
                              brier.first_byte_allowed()):
      columns.append(new_B)
      if len(columns) >= max_new_bytes or complete(_rows(columns)):
        break
    return [(text, False) for text in _rows(columns, len(doubled))]
  return sample


def _rows(columns, num_rows: int = 0) -> list[bytes]:
  """The bytes of each row of a list of per-step uint8 columns."""
  if not columns:
    return [b''] * num_rows
  return [row.tobytes() for row in np.stack(columns, 1)]


# --------------------------------------------------------------- the command
def brier_defaults() -> dict:
  """brier.py's protocol defaults, the same as latentlm.evaluate's."""
  from latentlm.metrics import brier  # pylint: disable=g-import-not-at-top
  return dict(block_bytes=brier.DEFAULT_BLOCK_BYTES,
              num_positions=brier.DEFAULT_NUM_POSITIONS,
              max_new_bytes=brier.DEFAULT_MAX_NEW_BYTES)


def _documents(data_config, split: str, text_path: str | None):
  from latentlm.data import corpus  # pylint: disable=g-import-not-at-top
  if text_path is not None:
    return [corpus.read_text_to_score(text_path)]
  return [t if isinstance(t, bytes) else t.encode('utf-8')
          for t in corpus.split_texts(data_config, split)]


def parse_orders(text: str) -> list[int]:
  try:
    orders = [int(o) for o in text.split(',') if o.strip()]
  except ValueError:
    raise UserError(f'--orders={text!r} is not a comma-separated list of '
                    'integers, e.g. 2,3,4,5') from None
  if not orders:
    raise UserError('--orders is empty; e.g. --orders=2,3,4,5')
  for order in orders:
    check_order(order)
  return list(dict.fromkeys(orders))


def _jsonable(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f'{type(value).__name__} is not JSON serializable')


def _dumps(record) -> str:
  return json.dumps(record, default=_jsonable)


def write_reference(directory: str, reference: dict, records: list[dict]):
  """reference.json, then the records appended to evaluations.jsonl, each
  written atomically. A directory that holds another model is refused."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, REFERENCE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for key in ('family', 'order', 'smoothing', 'data'):
      if old.get(key) != reference[key]:
        raise UserError(f'{directory} holds a reference with {key}='
                        f'{old.get(key)!r}, not {reference[key]!r}; use '
                        'another --out')
  workdir_lib.write_atomic(path, json.dumps(reference, indent=2) + '\n')
  evaluations = os.path.join(directory, EVALUATIONS)
  previous = ''
  if os.path.exists(evaluations):
    with open(evaluations) as f:
      previous = f.read()
  workdir_lib.write_atomic(
      evaluations, previous + ''.join(_dumps(r) + '\n' for r in records))


def evaluate_order(train_documents, eval_documents, order: int, data: str,
                   brier_kwargs: dict) -> tuple[ByteNgram, dict, dict]:
  """Fits one order; its 'default' and 'brier' records and timings."""
  import jax  # pylint: disable=g-import-not-at-top
  from latentlm.metrics import brier  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  model = fit(train_documents, order)
  fit_s = time.perf_counter() - start
  start = time.perf_counter()
  default = dict(bits_per_byte=model.bits_per_byte(eval_documents),
                 num_bytes=int(sum(len(d) for d in eval_documents)),
                 step=0, data=data, metric='default')
  bits_s = time.perf_counter() - start
  start = time.perf_counter()
  sampler = continuations(model, brier_kwargs['max_new_bytes'],
                          brier_kwargs['unit'])
  metrics = brier.score(sampler, eval_documents,
                        jax.random.key(brier_kwargs['seed']), **brier_kwargs)
  brier_s = time.perf_counter() - start
  brier_record = dict(metrics, step=0, data=data, metric='brier')
  timings = dict(fit_s=fit_s, bits_s=bits_s, brier_s=brier_s)
  return model, dict(default=default, brier=brier_record), timings


def _scalars(record: dict) -> dict:
  return {k: v for k, v in record.items()
          if isinstance(v, (int, float, str, bool)) and k != 'metric'}


def define_flags():
  """Flags of this command, defined only when it runs as the program. The
  BrierLM ones default to brier.py's protocol (read when the command runs,
  so a mistake in the other flags fails before the training stack loads)."""
  flags.DEFINE_string('workdir', None, 'A run: its config.json names the '
                      'data; the n-grams fit on its training split.')
  cli.define_config_flag()  # or a config's data, without a run
  flags.DEFINE_string('orders', '2,3,4,5', 'Comma-separated n-gram orders '
                      f'(1..{MAX_ORDER}).')
  flags.DEFINE_string('out', None, 'Writes OUT/ngram-N/ per order.')
  flags.DEFINE_string('split', None, "Split scored (default: the config's "
                      'eval split).')
  flags.DEFINE_string('text', None, 'Score this text file instead of a '
                      'split (invalid UTF-8 is read as bytes).')
  flags.DEFINE_integer('num_positions', None, 'BrierLM positions (default: '
                       "brier.py's).")
  flags.DEFINE_integer('block_bytes', None, 'BrierLM context bytes before '
                       "each position (default: brier.py's).")
  flags.DEFINE_integer('max_new_bytes', None, 'BrierLM: bytes sampled per '
                       "continuation (default: brier.py's).")
  flags.DEFINE_integer('seed', 0, 'BrierLM positions and samples.')
  flags.DEFINE_enum('ngram_unit', 'bytes', ['bytes', 'words'], 'BrierLM '
                    'n-grams of bytes or of words (see latentlm/metrics/brier.py).')


def _print_table(rows):
  print(f'{"family":>10s} {"bits/byte":>10s} {"brier_lm":>9s} '
        f'{"brier_1":>8s} {"brier_2":>8s} {"fit_s":>7s} {"eval_s":>7s}')
  for r in rows:
    print(f'{r["family"]:>10s} {r["bits_per_byte"]:10.4f} '
          f'{r.get("brier_lm", float("nan")):9.3f} '
          f'{r.get("brier_1", float("nan")):8.4f} '
          f'{r.get("brier_2", float("nan")):8.4f} {r["fit_s"]:7.2f} '
          f'{r["bits_s"] + r["brier_s"]:7.2f}')


def main(argv):
  del argv
  f = flags.FLAGS
  orders = parse_orders(f.orders)
  if not f.out:
    raise UserError('--out is required: the directory for ngram-N/')
  if f.text is not None:  # fail on a missing or empty file first
    from latentlm.data import corpus  # pylint: disable=g-import-not-at-top
    corpus.read_text_to_score(f.text, warn=False)
  if (f.workdir is None) == (f.config is None):
    raise UserError('give the data by --workdir=RUN (a run) or by '
                    '--config=FILE.py (e.g. configs/token_lm.py), not both')
  if f.workdir is not None:
    config = workdir_lib.Workdir(f.workdir).load_config()
  else:
    config = f.config
    if 'data' not in config:  # a pipeline: its stages share one corpus
      config = config.stages[next(iter(config.stages))]
  split = f.split or config.data.eval_split
  train_documents = _documents(config.data, 'train', None)
  eval_documents = _documents(config.data, split, f.text)
  if not sum(len(d) for d in eval_documents):
    raise UserError(f'{f.text or split!r} is empty: no bytes to score')
  data = f.text or f'{config.data.name}:{split}'
  brier_kwargs = {name: default if f[name].value is None else f[name].value
                  for name, default in brier_defaults().items()}
  brier_kwargs.update(seed=f.seed, unit=f.ngram_unit)
  rows = []
  for order in orders:
    model, records, timings = evaluate_order(train_documents, eval_documents,
                                             order, data, brier_kwargs)
    family = f'ngram-{order}'
    reference = dict(family=family, order=order, smoothing=model.smoothing,
                     data=f'{config.data.name}:train',
                     train_bytes=model.num_train_bytes)
    write_reference(os.path.join(f.out, family), reference,
                    [records['default'], records['brier']])
    rows.append(dict(family=family, order=order, **timings)
                | _scalars(records['brier']) | _scalars(records['default']))
  _print_table(rows)
  print(_dumps(rows))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
