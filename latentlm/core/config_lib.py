"""Config helpers shared by configs/*.py: typed `FILE.py:a=1,b=x` arguments."""

import difflib
import importlib.util
import os
import sys
import types

import ml_collections
from ml_collections import ConfigDict

from latentlm.core.errors import UserError


def _coerce(value: str, default):
  """Parses `value` to the type of `default`."""
  if isinstance(default, bool):
    lowered = value.lower()
    if lowered in ('1', 'true', 'yes'):
      return True
    if lowered in ('0', 'false', 'no'):
      return False
    raise ValueError(f'expected a boolean, got {value!r}')
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_args(arg: str | None, **defaults) -> types.SimpleNamespace:
  """Parses 'a=1,b=x' into a namespace typed like `defaults`.

  Unknown names fail with a message that suggests the nearest known one.
  """
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    name, sep, value = item.partition('=')
    name = name.strip()
    if not sep:
      raise UserError(f'config argument {item!r} is not of the form name=value')
    if name not in defaults:
      raise UserError(f'unknown config argument {name!r}{suggest(name, defaults)}')
    try:
      values[name] = _coerce(value.strip(), defaults[name])
    except ValueError as e:
      raise UserError(f'config argument {name}: {e}') from None
  return types.SimpleNamespace(**values)


def suggest(name: str, candidates) -> str:
  """'; did you mean X?' for the closest candidate, or ''."""
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
  return f'; did you mean {close[0]!r}?' if close else ''


def flat_keys(config: ml_collections.ConfigDict, prefix: str = ''):
  """All dotted leaf keys of a config."""
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from flat_keys(value, path + '.')
    else:
      yield path


def choose(name: str, value: str, options) -> str:
  """Checks that `value` is one of `options`, with a one-line error if not."""
  if value not in options:
    raise UserError(f'{name}={value!r} is not one of {sorted(options)}'
                    f'{suggest(value, options)}')
  return value


def base_config() -> ml_collections.ConfigDict:
  """Fields every task shares; configs/*.py fill in `task` and `model`."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = ''
  c.model = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = 'shakespeare'  # 'shakespeare', 'files', or a TFDS catalog name
  c.data.files = ''  # glob of UTF-8 text files, with name='files'
  c.data.text_key = 'text'  # feature holding the text in TFDS catalog datasets
  c.data.data_dir = ''  # TFDS data dir; '' = ~/.cache/latentlm/tfds
  c.data.tokenizer = 'bytes'
  c.data.seq_len = 256  # model positions per example (tokens or concepts)
  c.data.worker_count = 0  # grain worker processes; 0 = in-process
  c.data.eval_split = 'validation'

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.batch_size = 32
  c.train.grad_accum_steps = 1
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500
  c.train.max_to_keep = 3
  c.train.progress_bar = True
  # A non-finite loss or gradient stops the run; with True, such updates are
  # skipped instead (counted in train/skipped_updates).
  c.train.skip_nonfinite_updates = False

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 0  # cosine length; 0 = train.num_steps
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0

  # Mesh axis sizes; -1 takes the devices the other axes leave.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis name -> mesh axes, as 'name=axis+axis' strings (first match
  # wins); '' leaves a name unsharded. Data, so a fork changes strategy here.
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = (
      'batch=data+fsdp', 'embed=fsdp', 'mlp=tensor', 'heads=tensor',
      'kv_heads=tensor', 'vocab=tensor', 'latent=', 'layers=', 'seq=',
      'act_embed=', 'head_dim=', 'chunk=')
  return c


def load_config_file(argv) -> ml_collections.ConfigDict | None:
  """The config named by --config=FILE[:ARGS] in argv, without overrides."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')),
              None)
  if spec is None:
    return None
  path, _, arg = spec.partition(':')
  return load_module(path).get_config(arg or None)


def load_module(path: str) -> types.ModuleType:
  """The Python file at `path` imported as a fresh module (not in
  sys.modules, so configs with the same file name never collide).

  A file inside a package (configs/, with its __init__.py) imports its
  siblings by name (`from configs.paper import study`): the folder that
  holds the package goes on sys.path, so that any working directory works.
  """
  root = _package_root(path)
  if root is not None and not any(
      os.path.abspath(p or os.curdir) == root for p in sys.path):
    sys.path.append(root)
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f'_latentlm_{name}',
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _package_root(path: str) -> str | None:
  """The folder above the outermost package holding `path`, else None."""
  folder, root = os.path.dirname(os.path.abspath(path)), None
  while os.path.exists(os.path.join(folder, '__init__.py')):
    folder = root = os.path.dirname(folder)
  return root


POSITIVE_FIELDS = (
    'train.num_steps', 'train.batch_size', 'train.grad_accum_steps',
    'train.log_every', 'train.eval_every', 'train.eval_batches',
    'train.checkpoint_every', 'train.max_to_keep', 'data.seq_len')


def check_positive(config: ml_collections.ConfigDict):
  """Counts and lengths must be positive: a one-line error, not a crash."""
  for path in POSITIVE_FIELDS:
    node = config
    for key in path.split('.'):
      node = node[key]
    if node <= 0:
      raise UserError(f'config.{path}={node} must be positive')
