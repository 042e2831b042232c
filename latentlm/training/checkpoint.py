"""Orbax checkpoints of the train state together with the data iterator state."""

import sys

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from latentlm.core.errors import UserError


class Checkpointer:
  """Async, preemption-aware checkpoints of (state, data iterator).

  Orbax writes each step into a temporary directory and renames it when the
  write is complete, so a killed process never leaves a step that looks whole.
  """

  def __init__(self, directory: str, max_to_keep: int, save_every: int,
               read_only: bool = False):
    """`read_only` for readers (evaluate, generate): they may run beside a
    live trainer, so they must neither create nor clean anything."""
    # (Not orbax's own read_only option: it logs warnings on every load.)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=max(save_every, 1),
        create=not read_only, enable_async_checkpointing=not read_only,
        # A killed run leaves a partial step in a temp dir; the workdir lock
        # guarantees no live writer owns it, so the trainer may remove it.
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(directory, options=options)
    self.read_only = read_only

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """True on save-interval steps and when the job is being preempted."""
    return self.manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def save(self, step: int, state, data_iterator, force: bool = False):
    assert not self.read_only, 'a read-only Checkpointer does not save'
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator)),
        force=force)

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores into `abstract_state`'s shapes and shardings (any mesh)."""
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored.state, restored.data

  def restore_latest(self, abstract_state, data_iterator):
    """(step, state, data iterator) of the newest readable checkpoint, or None.

    When the newest fails to read but an older one reads, the newest is
    truncated or corrupted: it is reported in one line, moved aside to
    `corrupt-STEP`, and the older one is used. When none reads, nothing is
    moved: the checkpoints do not match this code or config.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        state, data = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        failed.append((step, e))
        continue
      for bad_step, error in failed:
        self._set_aside(bad_step, error)
      return step, state, data
    if failed:
      step, error = failed[0]
      first_line = (str(error).strip().splitlines() or [''])[0][:200]
      raise UserError(
          f'no checkpoint in {self.manager.directory} can be restored for '
          f'this config (step {step}: {type(error).__name__}: {first_line}); '
          'use a new --workdir')
    return None

  def _set_aside(self, step: int, error: Exception):
    directory = epath.Path(self.manager.directory)
    target = directory / f'corrupt-{step}'
    (directory / str(step)).rename(target)
    self.manager.reload()
    print(f'warning: checkpoint {step} is unreadable ({type(error).__name__});'
          f' moved it to {target}; resuming from an earlier one',
          file=sys.stderr)

  def restore_state(self, step: int, abstract_state):
    """Only the train state (evaluate, generate, stage-2 encoder loading)."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    return restored.state

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(state, shardings):
  """ShapeDtypeStructs carrying shardings: the restore target for any mesh."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)
