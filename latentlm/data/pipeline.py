"""The grain input pipeline: documents -> units -> packed rows -> batches.

Each document becomes token ids with EOS appended, then `unit_fn` turns them
into units (`[M, *unit_shape]`: tokens for a token LM, chunks of K tokens for
the concept models). Units flow across document boundaries into rows of
exactly `row_len` units, and rows into batches `{'tokens': int32[B, row_len,
*unit_shape]}`.

Order: documents are shuffled per epoch with the seed, then rows are shuffled
within windows of `ROW_SHUFFLE_WINDOW` rows, so that a batch mixes documents.

Multi-process: with at least `MIN_DOCUMENTS_PER_PROCESS` documents per process,
each process reads its own documents (`process_index::process_count`).
Otherwise (a small corpus such as the 34 training plays) every process packs
the same row stream and keeps rows `process_index::process_count`: balanced
to a row, and with `num_epochs` set every process yields the same number of
batches. With document sharding and `num_epochs` set, processes may yield
different numbers of batches.

With `num_epochs` set, the last row is padded with PAD units and PAD rows are
added until the rows fill whole batches (on every process, for row sharding),
so the split is covered exactly once and nothing is dropped; the loss should
mask `tokens == tokenizer.pad_id`.

The iterator is a grain `DatasetIterator`: `get_state()`/`set_state()` restore
it exactly. `data_config.worker_count > 0` runs the pipeline in that many grain
worker processes (`mp_prefetch`), each on its own slice of the documents:
still deterministic and exactly restorable, but a different order than with
another worker count, and `unit_fn` must be picklable.
"""

import copy
import functools
import itertools

from absl import flags
import grain
import numpy as np

from latentlm.data import corpus
from latentlm.data import tokenizers

# ~1M tokens: a window of rows spans several plays.
ROW_SHUFFLE_WINDOW = 4096
MIN_DOCUMENTS_PER_PROCESS = 100
# Documents read ahead in a background thread; a play is ~600 rows of 256.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=16)


def token_unit_fn(tokens_N: np.ndarray) -> np.ndarray:
  """A token LM's units are its tokens."""
  return tokens_N


def _document_units(document, *, tokenizer, unit_fn, unit_shape):
  # EOS leads each document, so its first token has context to be predicted
  # from and every byte of a text is scored once.
  tokens_N = np.concatenate([[tokenizer.eos_id],
                             tokenizer.encode(document['text'])])
  units = np.asarray(unit_fn(tokens_N), np.int32)
  if units.shape[1:] != unit_shape:
    raise ValueError(f'unit_fn returned units of shape {units.shape[1:]}, '
                     f'expected {unit_shape}')
  return units


class _PackIterator(grain.DatasetIterator):
  """Concatenates documents' units and cuts them into rows of `row_len`.

  Consecutive rows share `overlap` units (the last of one row starts the
  next), so that with inputs row[:-1] and targets row[1:] every unit is a
  target exactly once. Its state is the parent's state before the current
  document, the units of that document already used, the overlap carried
  into the next row, and the rows made so far: restoring re-reads one
  document instead of saving units.
  """

  def __init__(self, parent, *, row_len, pad_unit, shard, pad_multiple,
               overlap=0):
    super().__init__(parent)
    if not 0 <= overlap < row_len:
      raise ValueError(f'overlap={overlap} must be in [0, row_len={row_len})')
    self._row_len = row_len
    self._overlap = overlap
    self._carry = pad_unit[None][:0]  # The units the next row starts with.
    self._pad_unit = pad_unit
    self._shard_index, self._shard_count = shard
    self._pad_multiple = pad_multiple
    self._document_state = parent.get_state()
    self._units = None  # The current document's units, None at the end.
    self._position = 0
    self._rows = 0  # Rows made for all shards.

  def _next_document(self) -> bool:
    self._document_state = self._parent.get_state()
    self._position = 0
    try:
      self._units = next(self._parent)
    except StopIteration:
      self._units = None
    return self._units is not None

  def _next_row_parts(self) -> list[np.ndarray]:
    """Views of the units of the next row, PAD-filled at the end."""
    parts = [self._carry] if len(self._carry) else []
    missing = self._row_len - len(self._carry)
    fresh = missing
    while missing:
      if self._units is None or self._position == len(self._units):
        if not self._next_document():
          break
      take = min(missing, len(self._units) - self._position)
      parts.append(self._units[self._position:self._position + take])
      self._position += take
      missing -= take
    if missing:
      # The data ended: pad the last row, then add rows up to the multiple.
      if self._pad_multiple is None or (
          missing == fresh and self._rows % self._pad_multiple == 0):
        raise StopIteration
      if missing == fresh:  # Only whole PAD rows are left to add.
        parts = []
        missing = self._row_len
      parts.append(np.broadcast_to(self._pad_unit,
                                   (missing, *self._pad_unit.shape)))
    self._rows += 1
    if self._overlap:
      self._carry = np.concatenate(parts)[-self._overlap:]
    return parts

  def __next__(self) -> np.ndarray:
    while True:
      parts = self._next_row_parts()
      if (self._rows - 1) % self._shard_count == self._shard_index:
        return np.concatenate(parts)

  def get_state(self):
    return dict(document_state=copy.deepcopy(self._document_state),
                position=self._position, rows=self._rows,
                carry=self._carry.tolist())

  def set_state(self, state):
    self._parent.set_state(state['document_state'])
    self._next_document()
    self._position = state['position']
    self._rows = state['rows']
    self._carry = np.asarray(state['carry'], np.int32).reshape(
        -1, *self._pad_unit.shape)


class _WindowShuffleIterator(grain.DatasetIterator):
  """The parent's elements in windows of `window_size`, each permuted.

  grain's WindowShuffleIterDataset does the same with one `index_shuffle` per
  element, which is slow (docs/results/throughput.md); this draws one numpy
  permutation per window. Its state is the parent's state at the window
  start, the window index, and how many of the window's elements were taken:
  restoring re-reads one window.
  """

  def __init__(self, parent, *, window_size, seed):
    super().__init__(parent)
    self._window_size = window_size
    self._seed = seed
    self._start_state = parent.get_state()
    self._index = 0
    self._window = []
    self._taken = 0

  def _fill(self):
    self._start_state = self._parent.get_state()
    window = list(itertools.islice(self._parent, self._window_size))
    rng = np.random.default_rng((self._seed, self._index))
    self._window = [window[i] for i in rng.permutation(len(window))]
    self._taken = 0

  def __next__(self):
    if self._taken == len(self._window):
      if self._window:
        self._index += 1
      self._fill()
      if not self._window:
        raise StopIteration
    self._taken += 1
    return self._window[self._taken - 1]

  def get_state(self):
    return dict(start_state=copy.deepcopy(self._start_state),
                index=self._index, taken=self._taken)

  def set_state(self, state):
    self._parent.set_state(state['start_state'])
    self._index = state['index']
    self._fill()
    self._taken = state['taken']


class _IterDataset(grain.IterDataset):
  """An IterDataset whose iterator is `iterator_cls(parent iterator, **kw)`."""

  def __init__(self, parent, iterator_cls, **kwargs):
    super().__init__(parent)
    self._iterator_cls = iterator_cls
    self._kwargs = kwargs

  def __iter__(self):
    return self._iterator_cls(self._parent.__iter__(), **self._kwargs)


def _as_batch(tokens):
  return {'tokens': tokens}


def make_iterator(data_config, *, split: str, unit_fn, unit_shape=(),
                  row_len: int, batch_size: int, seed: int,
                  shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1,
                  source=None, row_overlap: int = 0):
  """A checkpointable iterator of {'tokens': int32[batch_size, row_len,
  *unit_shape]} batches of this process's share of `split`.

  `num_epochs=None` repeats forever; see the module doc for order, sharding
  and padding. `source` (a sequence of {'text': bytes} documents) replaces
  the corpus split, e.g. for scoring one text file. Consecutive rows share
  `row_overlap` units, so next-unit prediction scores every unit once.
  """
  tokenizer = tokenizers.get_tokenizer(data_config)
  if source is None:
    source = corpus.load_split(data_config, split)
  unit_shape = tuple(unit_shape)
  document_seed, row_seed = np.random.SeedSequence(seed).generate_state(2)

  documents = grain.MapDataset.source(source)
  shard_documents = len(source) >= MIN_DOCUMENTS_PER_PROCESS * process_count
  if shard_documents:
    documents = documents[process_index::process_count]
  if shuffle:
    documents = documents.shuffle(seed=int(document_seed))
  units = documents.repeat(num_epochs).map(functools.partial(
      _document_units, tokenizer=tokenizer, unit_fn=unit_fn,
      unit_shape=unit_shape))

  row_shard = (0, 1) if shard_documents else (process_index, process_count)
  rows = _IterDataset(
      units.to_iter_dataset(_READ_OPTIONS), _PackIterator, row_len=row_len,
      pad_unit=np.full(unit_shape, tokenizer.pad_id, np.int32),
      shard=row_shard, overlap=row_overlap,
      pad_multiple=None if num_epochs is None else batch_size * row_shard[1])
  if shuffle:
    rows = _IterDataset(rows, _WindowShuffleIterator,
                        window_size=ROW_SHUFFLE_WINDOW, seed=int(row_seed))
  batches = rows.batch(batch_size, drop_remainder=True).map(_as_batch)
  if data_config.worker_count:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags.
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=data_config.worker_count))
  return iter(batches)
