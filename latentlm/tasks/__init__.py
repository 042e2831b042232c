"""What is trained: each module defines a Task (base.py: the interface).

A new task is its module and one line in TASKS; nothing outside this
package names a task.
"""

import importlib

from latentlm.core import config_lib
from latentlm.core.errors import UserError

# config.task -> the module whose `Task` trains it, imported when first used:
# a task looks up the class of a stage it builds on (its FLOPs, tasks/flops.py)
# by name, so this registry names modules rather than importing them.
TASKS = {'token_lm': 'latentlm.tasks.token_lm',
         'autoencoder': 'latentlm.tasks.autoencoder',
         'concept_lm': 'latentlm.tasks.concept_lm',
         'head_distill': 'latentlm.tasks.head_distill'}


def task_class(config):
  """The Task class of `config.task`, or a one-line UserError."""
  if config.task not in TASKS:
    raise UserError(f'config.task={config.task!r} is not one of '
                    f'{tuple(TASKS)}{config_lib.suggest(config.task, TASKS)}')
  return importlib.import_module(TASKS[config.task]).Task


def get_task(config, **given):
  """The Task of `config` on the stages its config names, without their
  weights (a fresh stage-1 model: shapes for compiles, FLOPs, reports and
  tests); `given` (name=config) replaces the config of a stage, so that it
  needs no workdir. Training hands a task its stages' trained weights
  instead: runs.build_task."""
  cls = task_class(config)
  return cls(config, cls.stages_of(config, given))
