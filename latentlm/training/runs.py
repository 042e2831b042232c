"""Loading a trained run from its workdir, for evaluate, generate and stage 2;
building a task on the trained runs it builds on."""

import dataclasses
from typing import Any

import jax
import ml_collections

from latentlm import tasks
from latentlm.core import sharding
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.tasks import pipeline
from latentlm.training import checkpoint
from latentlm.training import trainer as trainer_lib


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  task: Any
  trainer: Any  # trainer_lib.Trainer: the jitted steps on this process's mesh
  state: Any  # step.TrainState at the latest checkpoint
  step: int


def load(workdir_path: str, devices=None) -> Run:
  """Restores the latest checkpoint of a workdir onto `devices` (default: one
  of this process's, which every process of a multi-host run can address).

  A run saved on any mesh restores here: the restore target carries this
  mesh's shardings. Its task is built on the configs of the runs it builds
  on, not their weights: the checkpoint holds its frozen params. A
  pipeline's workdir (the main job's) stands for its last stage, so
  evaluate and generate take the directory the job printed.
  """
  workdir = workdir_lib.Workdir(workdir_path)
  config = workdir.load_config()
  if pipeline.is_pipeline(config):
    stage = pipeline.last_stage(config)
    stage_path = pipeline.stage_path(workdir.path, stage)
    if not workdir_lib.Workdir(stage_path).exists():
      raise UserError(f'{workdir.path} is a pipeline whose {stage} stage has '
                      'not started; rerun python -m latentlm.train on it')
    return load(stage_path, devices)
  devices = devices or jax.local_devices()[:1]
  with config.unlocked():
    config.mesh = ml_collections.ConfigDict(
        dict(data=len(devices), fsdp=1, tensor=1))
  try:
    task = _restored_task(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    trainer = trainer_lib.Trainer(config, task, mesh)
  except (AttributeError, KeyError) as e:  # a field this version reads
    raise UserError(f'{workdir.config_path} lacks a field this latentlm '
                    f'needs ({str(e).splitlines()[0][:200]}): it was written '
                    'by an older version; retrain in a new --workdir') from None
  ckpt = checkpoint.Checkpointer(workdir.checkpoints, max_to_keep=1000,
                                 save_every=1, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    raise UserError(f'{workdir.path} has no checkpoint yet; train first')
  state = ckpt.restore_state(step, trainer.abstract_state)
  ckpt.close()
  return Run(config=config, task=task, trainer=trainer, state=state, step=step)


def stage_weights(workdir_path: str) -> dict:
  """The trained params and frozen params of a workdir, as host arrays."""
  state = load(workdir_path).state
  return jax.device_get(dict(params=state.params, frozen=state.frozen))


def _restored_task(config):
  """The Task of a run being restored: its checkpoint holds its own
  weights; the stages it needs and does not hold are loaded here."""
  cls = tasks.task_class(config)
  stages = cls.stages_of(config)
  outside = cls.stages_outside_checkpoint(config, stages)
  return cls(config, {
      name: stage._replace(weights=stage_weights(stage.path))
      if name in outside else stage for name, stage in stages.items()})


def build_task(config):
  """The Task of `config`, handed the trained weights of the runs it builds
  on (a concept LM's autoencoder, a distilled head's teacher): what
  training starts from."""
  cls = tasks.task_class(config)
  stages = {name: stage._replace(weights=stage_weights(stage.path))
            for name, stage in cls.stages_of(config).items()}
  return cls(config, stages)
