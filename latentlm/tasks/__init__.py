"""What is trained: each module defines a Task (see token_lm.py for the API)."""

import importlib

from latentlm import config_lib
from latentlm.errors import UserError

TASKS = ('token_lm', 'autoencoder', 'concept_lm', 'head_distill')
# Tasks whose runs are concept LMs: evaluate, generate, BrierLM take them.
CONCEPT_LM_TASKS = ('concept_lm', 'head_distill')


def get_task(config):
  """The Task for `config.task`, imported by name (no registry)."""
  if config.task not in TASKS:
    raise UserError(f'config.task={config.task!r} is not one of {TASKS}'
                    f'{config_lib.suggest(config.task, TASKS)}')
  module = importlib.import_module(f'latentlm.tasks.{config.task}')
  return module.Task(config)
