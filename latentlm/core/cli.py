"""Command-line entry: flag parsing and one-line errors instead of tracebacks."""

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from latentlm.core import config_lib
from latentlm.core.errors import UserError


def define_config_flag():
  """--config=FILE.py[:ARGS] with --config.a.b=VALUE overrides."""
  config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/token_lm.py:size=tiny.',
      lock_config=True)


def fail(message: str, code: int = 2):
  """Ends the program with one line on stderr."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _config_error(error: Exception, argv) -> str:
  """One line for a failure to load the config file or apply an override."""
  if isinstance(error, OSError):
    path = next((a.split('=', 1)[1].split(':')[0] for a in argv
                 if a.startswith('--config=')), '')
    return f'cannot load config file {path!r}: no such file (e.g. configs/token_lm.py)'
  if isinstance(error, (AttributeError, KeyError)):
    config = config_lib.load_config_file(argv)
    known = list(config_lib.flat_keys(config)) if config is not None else []
    for arg in argv:
      key = arg[len('--config.'):].partition('=')[0]
      if arg.startswith('--config.') and key not in known:
        return f'unknown config key {key!r}{config_lib.suggest(key, known)}'
  text = str(error)
  return text.splitlines()[0] if text else type(error).__name__


def load_config(argv):
  """Parses the flags and loads the config, or fails in one line."""
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      flags.FLAGS.config.keys()  # config_flags loads lazily: fail here, not later
  except UserError as e:
    fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e.__context__
    if isinstance(cause, UserError):
      fail(str(cause))
    if isinstance(cause, (AttributeError, KeyError, OSError)):
      fail(_config_error(cause, argv))
    fail(_config_error(e, argv))
  return remaining


def _quiet_logs():
  # absl and orbax log at INFO by default; users need the progress bar, not that.
  logging.getLogger('absl').setLevel(logging.WARNING)
  for name in ('orbax', 'jax', 'grain', 'tensorflow_datasets'):
    logging.getLogger(name).setLevel(logging.WARNING)


def run(main):
  """Parses flags, runs `main(argv)`, and turns UserErrors into one line."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = load_config(list(sys.argv))
  _quiet_logs()
  try:
    main(argv)
  except UserError as e:
    fail(str(e))
  except KeyboardInterrupt:
    fail('interrupted', code=130)
