"""The workdir contract: config.json, checkpoints/, metrics.jsonl, events, samples.

Nothing here touches the workdir before the config has been checked against
the one already there, so a mistaken command never damages a run.
"""

import json
import math
import os
import tempfile

import ml_collections

from latentlm.core.errors import UserError

# Fields that may change between a run and its resumption: they alter how long
# or how verbosely a run goes, not what it computes.
RESUMABLE_CHANGES = (
    'train.num_steps', 'train.log_every', 'train.eval_every',
    'train.eval_batches', 'train.checkpoint_every', 'train.max_to_keep',
    'train.progress_bar', 'data.worker_count', 'data.data_dir', 'mesh.data',
    'mesh.fsdp', 'mesh.tensor')


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def write_atomic(path: str, text: str):
  """Writes via a temp file and rename, so readers never see half a file."""
  directory = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


class Workdir:
  """Paths of a run's directory and the config check that guards it."""

  def __init__(self, path: str):
    if not path:
      raise UserError('--workdir is required')
    self.path = os.path.abspath(os.path.expanduser(path))
    self.config_path = os.path.join(self.path, 'config.json')
    self.checkpoints = os.path.join(self.path, 'checkpoints')
    self.metrics_path = os.path.join(self.path, 'metrics.jsonl')
    self.samples_path = os.path.join(self.path, 'samples.txt')

  def exists(self) -> bool:
    return os.path.exists(self.config_path)

  def load_config(self) -> ml_collections.ConfigDict:
    """The resolved config of an existing run, for evaluate and generate."""
    if not self.exists():
      raise UserError(f'{self.path} is not a latentlm workdir (no config.json);'
                      ' train into it first with python -m latentlm.train')
    with open(self.config_path) as f:
      return ml_collections.ConfigDict(json.load(f))

  def check_compatible(self, config: ml_collections.ConfigDict):
    """Fails if the workdir holds a run of a different config."""
    if not self.exists():
      return
    old = _flatten(json.loads(self.load_config().to_json()))
    new = _flatten(json.loads(config.to_json()))
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
      key = changed[0]
      raise UserError(
          f'workdir {self.path} was made by a different config ({key}: '
          f'{old.get(key)!r} there, {new.get(key)!r} now'
          f'{f" and {len(changed) - 1} more" if len(changed) > 1 else ""}); '
          'use a new --workdir or the config it was made with')

  def prepare(self, config: ml_collections.ConfigDict):
    """Checks the config, then creates the workdir and writes config.json."""
    self.check_compatible(config)
    os.makedirs(self.checkpoints, exist_ok=True)
    write_atomic(self.config_path, config.to_json(indent=2) + '\n')


def load_stage_config(path: str, field: str, task: str, a_task: str,
                      hint: str) -> ml_collections.ConfigDict:
  """The config of the trained `task` run that config.<field> = `path`
  names (a stage the caller builds on), or a one-line UserError; `a_task`
  names the task in prose, `hint` says where such a run comes from."""
  if not path:
    raise UserError(f'config.{field} is required: {hint}')
  config = Workdir(path).load_config()
  if config.task != task:
    raise UserError(f'config.{field}={path!r} holds a {config.task!r} run, '
                    f'not {a_task}')
  return config


class MetricsWriter:
  """metrics.jsonl plus TensorBoard events; only the lead process writes.

  On resume, lines past the restored step are dropped, so a run killed after
  logging but before checkpointing never leaves duplicated steps.
  """

  def __init__(self, workdir: Workdir, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self._path = workdir.metrics_path
    self._tb = None
    if not enabled:
      return
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(workdir.path, flush_secs=30)

  def _truncate_after(self, step: int):
    if not os.path.exists(self._path):
      return
    kept = []
    with open(self._path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a torn last line from a killed process
        if record.get('step', math.inf) <= step:
          kept.append(json.dumps(record) + '\n')
    write_atomic(self._path, ''.join(kept))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in sorted(metrics.items())})
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in metrics.items():
      self._tb.add_scalar(name, float(value), int(step))

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: Workdir) -> list[dict]:
  if not os.path.exists(workdir.metrics_path):
    return []
  with open(workdir.metrics_path) as f:
    return [json.loads(line) for line in f if line.strip()]
