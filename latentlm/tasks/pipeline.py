"""The pipeline: one config of several stages, trained in order.

A pipeline config (`config.task = 'pipeline'`, configs/shakespeare.py) holds
one config per stage under `config.stages`; `training.loop.train_pipeline` trains
each into DIR/<stage>, pointing its workdir fields at the earlier stages'
directories, and `runs.load` takes DIR as its last stage. It is not a Task
(nothing trains it as one); this module is all that knows its shape.
"""

import os

from latentlm import sampling
from latentlm.core import config_lib
from latentlm.core.errors import UserError

NAME = 'pipeline'
# In order; config.stages.*. autoencoder and concept_lm are required.
# entropy, when the config has it, is the byte LM whose entropies cut stage
# 1's units (data/entropy.py); head_distill distils stage 2's flow head into
# one that samples in fewer passes, and the pipeline samples from it.
STAGES = ('entropy', 'autoencoder', 'concept_lm', 'head_distill')
_REQUIRED_STAGES = ('autoencoder', 'concept_lm')
# stage -> its config's workdir fields (dotted), each set to the earlier
# stage named, when the pipeline has that stage.
_STAGE_INPUTS = {
    'autoencoder': {'segment.entropy_workdir': 'entropy'},
    'concept_lm': {'autoencoder_workdir': 'autoencoder'},
    'head_distill': {'autoencoder_workdir': 'autoencoder',
                     'teacher_workdir': 'concept_lm'},
}


def is_pipeline(config) -> bool:
  return config.get('task') == NAME


def stage_names(config) -> tuple[str, ...]:
  """The stages of a pipeline config, in order."""
  for name in _REQUIRED_STAGES:
    if name not in config.stages:
      raise UserError(f'a pipeline config needs config.stages.{name}')
  return tuple(name for name in STAGES if name in config.stages)


def stage_path(pipeline_path: str, name: str) -> str:
  """Where a pipeline's stage `name` keeps its own workdir."""
  return os.path.join(pipeline_path, name)


def stage_config(config, name: str, pipeline_path: str):
  """Stage `name`'s config, on the earlier stages' workdirs."""
  stage = config.stages[name].copy_and_resolve_references()
  for field, earlier in _STAGE_INPUTS.get(name, {}).items():
    if earlier in config.stages:
      *parents, leaf = field.split('.')
      holder = stage
      for parent in parents:
        holder = holder[parent]
      holder[leaf] = stage_path(pipeline_path, earlier)
  return stage


def last_stage(config) -> str:
  """The stage a pipeline samples from (and that stands for it)."""
  return stage_names(config)[-1]


def samples_config(temperature: float = sampling.TEMPERATURE):
  """config.samples: what a pipeline samples when every stage has trained,
  three unconditional samples at the head's `temperature` (num_candidates=1;
  latentlm/sampling/concepts.py says what the temperature means for each
  head)."""
  return config_lib.ConfigDict(dict(
      prompt='', num_samples=3, temperature=temperature, num_candidates=1,
      max_bytes=sampling.MAX_BYTES))
