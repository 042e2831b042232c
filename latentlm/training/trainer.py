"""The jitted steps of one task on one mesh (Trainer), the task's data, and
the peak FLOP/s that MFU is measured against."""

import contextlib
import functools

import flax.linen as nn
import jax
import numpy as np

from latentlm.core import distributed
from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.data import pipeline as data_pipeline
from latentlm.tasks import flops
from latentlm.training import checkpoint
from latentlm.training import step as step_lib


def per_process_batch_size(config, mesh) -> int:
  batch_size = config.train.batch_size
  if batch_size % sharding.data_parallel_size(mesh):
    raise UserError(
        f'config.train.batch_size={batch_size} must be divisible by the '
        f'data-parallel devices ({sharding.data_parallel_size(mesh)})')
  if batch_size % jax.process_count():
    raise UserError(f'config.train.batch_size={batch_size} must be '
                        f'divisible by the {jax.process_count()} processes')
  return batch_size // jax.process_count()


def make_data(config, task, split, batch_size, *, seed, shuffle=True,
              num_epochs=None, source=None):
  """The task's batches of `split` (or of `source`, a list of documents)."""
  return data_pipeline.make_iterator(
      config.data, split=split, source=source, unit_fn=task.unit_fn,
      unit_shape=task.unit_shape, row_len=task.row_len,
      row_overlap=task.row_overlap, batch_size=batch_size,
      seed=seed, shuffle=shuffle, num_epochs=num_epochs,
      process_index=jax.process_index(), process_count=jax.process_count())


class Trainer:
  """The jitted steps of one task on one mesh, with the state's shardings."""

  def __init__(self, config, task, mesh):
    self.config, self.task, self.mesh = config, task, mesh
    self.rules = sharding.logical_rules(config.sharding.rules)
    self.optimizer = step_lib.make_optimizer(
        config.optimizer, config.train.num_steps, task.trainable)
    self.rng = jax.random.key(config.seed)

    def init_fn(rng):
      params, frozen = task.init(rng)
      return step_lib.init_state(params, frozen, self.optimizer)

    with self.context():
      boxed = jax.eval_shape(init_fn, self.rng)
      self.state_shardings = sharding.logical_shardings(boxed, mesh, self.rules)
      self._init = jax.jit(init_fn, out_shardings=self.state_shardings)
    self.abstract_state = checkpoint.abstract_with_shardings(
        nn.meta.unbox(boxed), nn.meta.unbox(self.state_shardings))
    self.state_shardings = nn.meta.unbox(self.state_shardings)
    replicated = sharding.replicated(mesh)
    self._train_step = jax.jit(
        functools.partial(step_lib.train_step, loss_fn=task.loss,
                          optimizer=self.optimizer,
                          grad_accum_steps=config.train.grad_accum_steps,
                          skip_nonfinite=config.train.skip_nonfinite_updates),
        in_shardings=(self.state_shardings, None, replicated),
        out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    self._eval_step = jax.jit(
        functools.partial(step_lib.eval_step, loss_fn=task.loss),
        in_shardings=(self.state_shardings, None, replicated),
        out_shardings=replicated)
    self._compiled = {}  # (name, argument shapes) -> compiled step

  @contextlib.contextmanager
  def context(self):
    """Mesh and logical-axis rules, needed while tracing the model."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def _run(self, name, jitted, *args):
    """jitted(*args). With several processes, each step is compiled first
    and run only once every process has compiled it (distributed.barrier)."""
    if jax.process_count() == 1:
      return jitted(*args)
    leaves, treedef = jax.tree.flatten(args)
    key = (name, treedef, tuple((x.shape, x.dtype) for x in leaves))
    if key not in self._compiled:
      self._compiled[key] = jitted.lower(*args).compile()
      distributed.barrier(f'compiled {name}')
    return self._compiled[key](*args)

  def init_state(self):
    with self.context():
      return nn.meta.unbox(self._init(self.rng))

  def train_step(self, state, batch):
    with self.context():
      return self._run('train_step', self._train_step, state,
                       sharding.global_batch(batch, self.mesh), self.rng)

  def lower_train_step(self, state, batch, rng=None):
    """The train step lowered for these arguments (arrays or
    jax.ShapeDtypeStructs; rng defaults to the trainer's): for XLA's cost
    analysis and ahead-of-time compiles (bench, aot)."""
    with self.context():
      return self._train_step.lower(state, batch,
                                    self.rng if rng is None else rng)

  def lockstep_batches(self, iterator, max_batches: int = 10**9):
    """Up to `max_batches` of `iterator`, as many on every process: one that
    runs out early feeds all-PAD batches, which every metric weighs as 0."""
    pad_id = self.task.tokenizer.pad_id
    pad_like = lambda batch: jax.tree.map(
        lambda x: np.full_like(x, pad_id), batch)
    return distributed.lockstep(iter(iterator), max_batches, pad_like)

  def evaluate(self, state, iterator, max_batches: int) -> dict:
    """Metric means over up to `max_batches`, weighted by targets per batch."""
    totals, weight = {}, 0.0
    with self.context():
      for batch in self.lockstep_batches(iterator, max_batches):
        metrics = jax.device_get(self._run(
            'eval_step', self._eval_step, state,
            sharding.global_batch(batch, self.mesh), self.rng))
        w = float(metrics.get('num_bytes', 1.0))
        for name, value in metrics.items():
          totals[name] = totals.get(name, 0.0) + float(value) * w
        weight += w
    means = {k: v / max(weight, 1e-9) for k, v in totals.items()}
    means['num_bytes'] = weight
    return means


def peak_flops_per_s(devices) -> float:
  """The peak FLOP/s that MFU is measured against: on TPU the chips' bf16
  table, elsewhere one float32 matmul timed here (it uses every core of the
  host, so it counts once per process, not per device)."""
  chip_peak = flops.device_peak_flops(devices[0])
  if chip_peak is not None:
    return chip_peak * len(devices)
  # Small and few: timed once at start; the rate is near that of larger ones.
  _, _, rate = flops.timed_matmul(1024, repeats=3)
  return rate * jax.process_count()
