"""Surviving failures: preemption signals, non-finite losses, concurrent runs."""

import fcntl
import math
import os
import signal

from latentlm.core.errors import UserError


class StopSignal:
  """Turns SIGTERM (a preempted VM, `kill`) into a request to stop cleanly.

  The train loop checks `requested` after each step, saves a checkpoint at
  that step and exits 0; rerunning the command resumes from it.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.requested = False
    self._previous = {}
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(logged: dict, first_step: int, last_checkpoint, config):
  """Stops the run when the loss or gradient went non-finite.

  With `train.skip_nonfinite_updates` the step already skipped such updates
  (counted in train/skipped_updates), so there is nothing to stop.
  """
  if config.train.skip_nonfinite_updates:
    return
  values = (logged.get('train/loss', 0.0), logged.get('train/grad_norm', 0.0))
  if all(math.isfinite(v) for v in values):
    return
  where = (f'the last good checkpoint is step {last_checkpoint}'
           if last_checkpoint is not None else 'there is no checkpoint yet')
  raise UserError(
      f'non-finite loss or gradient at or after step {first_step}; {where}. '
      'Lower optimizer.learning_rate, or set '
      'train.skip_nonfinite_updates=True to skip such updates')


class WorkdirLock:
  """An exclusive lock on a workdir for the life of this process.

  flock locks die with their process, so a crashed run's lock never blocks
  a restart.
  """

  def __init__(self, path: str, enabled: bool = True):
    """`enabled` is False on all but the lead process of a multi-host run."""
    self._file = None
    if not enabled:
      return
    os.makedirs(path, exist_ok=True)
    self._file = open(os.path.join(path, '.lock'), 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'workdir {path} is being trained by {holder}; wait for '
                      'it to finish or use another --workdir') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'process {os.getpid()}\n')
    self._file.flush()

  def release(self):
    if self._file is not None and not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
