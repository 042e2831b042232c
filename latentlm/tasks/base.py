"""The Task interface: what every task defines, and the hooks the tools call.

A task is what a run trains (latentlm/tasks/<name>.py, a class `Task`
registered in tasks/__init__.py). It is the one extension point of
training: train, evaluate, generate, BrierLM, FLOPs, report and the run
summary reach a task only through the members below, never by its name.

Required (a subclass that lacks one fails when it is called):
  unit_fn, unit_shape, row_len, row_overlap, tokenizer   set in __init__:
      what a unit of a row is, for the data pipeline (see token_lm.py)
  init(rng) -> (params, frozen)       boxed (logically partitioned) params
  loss(params, frozen, batch, rng, train) -> (loss, metrics)   metrics
      include `num_bytes`, the weight of a batch in evaluation
  tokens_per_step()                   model positions a step trains
  train_flops_per_step(config, stages)   model FLOPs of one step, from the
      configs alone (latentlm.tasks.flops: counts exist before anything trains)

Optional, each with a default that says what it means to leave it out:
  stages_of(config, given)            the runs the task builds on
  upstream_flops(config, stages)      their all-in training FLOPs
  stages_outside_checkpoint(config, stages)   stages loading the run loads
  trainable(params)                   which params the optimizer changes
  finalize(trainer, state, make_train_data)   runs at the last step
  evaluation_metrics(run, batches)    latentlm.evaluate's metrics
  generate_texts(run, prompt, num_samples, rng, **sampling)   text
  continues_prompt                    generate prints the prompt first
  brier_continuations(run, contexts, rng, ...)   samples for BrierLM
  describe(config)                    one line that tells variants apart
  metric_units(config)                units of the final eval metrics
  next_commands(config, workdir)      what to run after training

A task is built from its config and the stages it is handed (their configs
and, for training, their weights: `Stage`). It loads nothing itself:
`tasks.get_task` reads only the configs of the stages a config names, and
`runs.build_task` hands it their trained weights.
"""

import shlex
from typing import Any, NamedTuple

import ml_collections

from latentlm.core.errors import UserError


class Stage(NamedTuple):
  """A run a task builds on (a concept LM's autoencoder, a teacher)."""
  config: ml_collections.ConfigDict
  path: str = ''  # its workdir; '' when the config was given without one
  # dict(params=..., frozen=...) as host arrays; None: fresh weights of the
  # config's shapes (compiles, FLOPs, benchmarks, tests).
  weights: Any = None


class Unit(NamedTuple):
  """How the run summary prints a metric: scale * value, then `text`."""
  text: str
  scale: float = 1.0


PERCENT = 100.0


def command(*words: str) -> str:
  """A shell command line, each word quoted where the shell needs it."""
  return ' '.join(shlex.quote(word) for word in words)


class Task:
  """The base of every task: the interface above, with its defaults."""

  # Whether `generate` prints the prompt before the sampled text (False: the
  # text replaces the prompt, as an autoencoder's round trip does).
  continues_prompt = True

  def __init__(self, config, stages=None):
    self.config = config
    self.stages = dict(stages or {})

  # --- required -----------------------------------------------------------
  def init(self, rng):
    raise NotImplementedError(f'{type(self).__module__}.Task.init')

  def loss(self, params, frozen, batch, rng, train):
    raise NotImplementedError(f'{type(self).__module__}.Task.loss')

  def tokens_per_step(self) -> int:
    raise NotImplementedError(f'{type(self).__module__}.Task.tokens_per_step')

  @classmethod
  def train_flops_per_step(cls, config, stages) -> float:
    """Model FLOPs of one optimizer step of `config` on `stages` (name ->
    config), every device together (latentlm.tasks.flops says what counts)."""
    del stages
    raise UserError('latentlm.tasks.flops has no count for task '
                    f'{config.task!r}: '
                    f'define Task.train_flops_per_step in {cls.__module__}')

  # --- the runs a task builds on -----------------------------------------
  @classmethod
  def stages_of(cls, config, given=None) -> dict[str, Stage]:
    """The runs `config` builds on, name -> Stage without weights: their
    configs are read from the workdirs the config names, except those in
    `given` (name -> config). None by default."""
    del config, given
    return {}

  @classmethod
  def stages_outside_checkpoint(cls, config, stages) -> tuple[str, ...]:
    """Stages (of `stages`, name -> Stage) whose weights the run needs but
    its checkpoint does not hold, so that loading the run loads theirs
    (runs.load). None by default: a concept LM keeps its stage 1 in its
    frozen params."""
    del config, stages
    return ()

  @classmethod
  def upstream_flops(cls, config, stages) -> float:
    """All-in training FLOPs of `stages` (name -> config): what an
    equal-FLOPs comparison charges this run before its first step."""
    del config, stages
    return 0.0

  # --- training -----------------------------------------------------------
  # trainable(params) -> bools in a tree like params (or a prefix of it):
  # the False subtrees never change and keep no optimizer state. None (no
  # such method): everything trains, with the plain optimizer.
  trainable = None

  def finalize(self, trainer, state, make_train_data):
    """The state saved at the last step (e.g. with statistics it needs)."""
    del trainer, make_train_data
    return state

  # --- the tools ----------------------------------------------------------
  def evaluation_metrics(self, run, batches) -> dict:
    """latentlm.evaluate's metrics of `run` over `batches`."""
    del run, batches
    raise UserError(f'evaluation of task {self.config.task!r} is not '
                    'available yet')

  def generate_texts(self, run, prompt: str, num_samples: int, rng,
                     **sampling) -> list[str]:
    """`num_samples` texts after `prompt`; `sampling` holds generate's
    options (temperature, top_p, max_bytes, num_candidates, on_text), each
    task taking those it has."""
    del run, prompt, num_samples, rng, sampling
    raise UserError(f'generation for task {self.config.task!r} is not '
                    'available')

  def brier_continuations(self, run, contexts, rng, max_new_bytes: int,
                          temperature: float, unit: str, stats: dict):
    """Two sampled continuations per context, [(bytes, ended)], for
    BrierLM (latentlm/metrics/brier.py); language models only."""
    del run, contexts, rng, max_new_bytes, temperature, unit, stats
    raise UserError(f'BrierLM scores language models, not a '
                    f'{self.config.task!r} run: give the workdir of a '
                    'language model')

  # --- what a run says about itself ---------------------------------------
  @classmethod
  def describe(cls, config) -> str:
    """The fields that tell variants apart, in one line (report's table)."""
    return config.task

  @classmethod
  def metric_units(cls, config) -> dict[str, Unit]:
    """The final eval metrics the run summary shows, in this order, with
    their units; metrics not named here are left out of it."""
    del config
    return {}

  @classmethod
  def next_commands(cls, config, workdir_path: str) -> list[str]:
    """Commands to run on the finished run in `workdir_path`."""
    del config
    return [command('python', '-m', 'latentlm.generate',
                    f'--workdir={workdir_path}'),
            command('python', '-m', 'latentlm.evaluate',
                    f'--workdir={workdir_path}')]
