"""Trains any task: python -m latentlm.train --config=configs/F.py --workdir=DIR.

One linear loop: config -> mesh -> data -> init -> restore -> loop -> save.
Restarting on the same workdir resumes from its latest checkpoint with the
same data order, so the continued run's losses equal an uninterrupted run's.
"""

import contextlib
import functools
import json
import os
import signal
import sys
import time

from absl import flags
import flax.linen as nn
import jax
import numpy as np

from latentlm import checkpoint
from latentlm import cli
from latentlm import config_lib
from latentlm import distributed
from latentlm import flops
from latentlm import reliability
from latentlm import run_summary
from latentlm import sharding
from latentlm import step as step_lib
from latentlm import workdir as workdir_lib
from latentlm.data import pipeline as data_pipeline
from latentlm.errors import UserError
from latentlm.tasks import pipeline


def global_batch(local_batch, mesh):
  """Assembles each process's rows into one array sharded over the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding.batch_sharding(mesh, x.ndim), x), local_batch)


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
                       global_batch(batch, self.mesh), self.rng)

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
            global_batch(batch, self.mesh), self.rng))
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


# ============================================================================
# main
# ============================================================================
def train(config, workdir_path: str, summary: bool = True) -> dict:
  """Trains `config` in `workdir_path`; returns the last eval metrics.
  A finished run prints its summary (run_summary) unless `summary` is
  False (a pipeline's stage: the pipeline prints one for all)."""
  from latentlm import runs  # pylint: disable=g-import-not-at-top
  # --- config -----------------------------------------------------------
  config_lib.check_positive(config)
  workdir = workdir_lib.Workdir(workdir_path)
  workdir.check_compatible(config)
  task = runs.build_task(config)  # on the trained stages it builds on

  # --- mesh -------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  batch_size = per_process_batch_size(config, mesh)

  # --- data -------------------------------------------------------------
  train_data = make_data(config, task, 'train', batch_size, seed=config.seed)
  make_eval_data = functools.partial(
      make_data, config, task, config.data.eval_split, batch_size,
      seed=config.seed, shuffle=False, num_epochs=1)

  # --- init (eval_shape -> shardings -> jit) -----------------------------
  trainer = Trainer(config, task, mesh)
  # Only now, every check above having passed, is the workdir touched.
  lock = reliability.WorkdirLock(workdir.path,  # one live trainer per workdir
                                 enabled=jax.process_index() == 0)
  workdir.prepare(config)
  ckpt = checkpoint.Checkpointer(workdir.checkpoints,
                                 config.train.max_to_keep,
                                 config.train.checkpoint_every)

  # --- restore ------------------------------------------------------------
  restored = ckpt.restore_latest(trainer.abstract_state, train_data)
  if restored is None:
    state, start_step = trainer.init_state(), 0
  else:
    start_step, state, train_data = restored
  is_lead = jax.process_index() == 0
  writer = workdir_lib.MetricsWriter(workdir, start_step, enabled=is_lead)

  # --- loop -------------------------------------------------------------
  num_steps = config.train.num_steps
  tokens_per_step = task.tokens_per_step()
  model_flops_per_step = flops.train_flops_per_step(config)
  # The stages this run builds on (a concept LM's stage 1), counted in its
  # all-in FLOPs: what an equal-FLOPs comparison charges it.
  upstream_flops = flops.upstream_flops(config)
  # Measured on every process, so that none reaches the first collective
  # later than the others; process 0 logs it.
  peak = peak_flops_per_s(list(mesh.devices.flat))
  progress = _progress_bar(config, start_step, num_steps, is_lead)
  # SIGTERM: save this step, exit cleanly. With several processes JAX's
  # preemption service hears it instead, and ckpt.reached_preemption names
  # one step for all: a local flag would stop one process and leave the
  # others waiting for it in their next collective.
  stop = reliability.StopSignal(
      signals=(signal.SIGTERM,) if jax.process_count() == 1 else ())
  eval_metrics, train_metrics = {}, []
  last_time, last_step, step = time.perf_counter(), start_step, start_step
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = trainer.train_step(state, next(train_data))
      train_metrics.append(metrics)
      if len(train_metrics) >= 2:
        # At most two steps in flight: enough to overlap the host's work with
        # the device's, and a SIGTERM is answered within two steps, not after
        # up to log_every queued ones.
        jax.block_until_ready(train_metrics[-2])
      is_save_step = ckpt.should_save(step) or step == num_steps
      if step % config.train.log_every == 0 or is_save_step:
        logged = {f'train/{k}': float(np.mean(v)) for k, v in
                  jax.device_get(_stack(train_metrics)).items()}
        # Before anything is saved: a non-finite state never reaches a checkpoint.
        reliability.check_finite(logged, step - len(train_metrics) + 1,
                                 ckpt.latest_step(), config)
        now = time.perf_counter()
        logged['train/tokens_per_s'] = (
            tokens_per_step * (step - last_step) / (now - last_time))
        logged['train/mfu'] = flops.mfu(  # model FLOPs (latentlm.flops)
            model_flops_per_step, (now - last_time) / (step - last_step), peak)
        logged['train/flops_per_step'] = model_flops_per_step
        # flops.all_in_flops(config, step), without rereading stage configs.
        logged['train/flops_all_in'] = (upstream_flops +
                                        step * model_flops_per_step)
        last_time, last_step, train_metrics = now, step, []
        writer.write(step, logged)
        progress.set_postfix(loss=f"{logged['train/loss']:.4f}",
                             tok_s=f"{logged['train/tokens_per_s']:.0f}")
      if step == num_steps:
        # e.g. the autoencoder's latent statistics, saved with the last step
        state = task.finalize(trainer, state, functools.partial(
            make_data, config, task, 'train', batch_size, seed=config.seed + 1))
      if step % config.train.eval_every == 0 or step == num_steps:
        eval_metrics = trainer.evaluate(state, make_eval_data(),
                                        config.train.eval_batches)
        writer.write(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
      progress.update(1)
      stopping = stop.requested or ckpt.reached_preemption(step)
      if is_save_step or stopping:
        ckpt.save(step, state, train_data, force=True)
      if stopping:
        break
  finally:  # also on errors: pending async saves finish, the lock is freed
    progress.close()
    ckpt.close()
    writer.close()
    stop.restore()
    lock.release()

  # --- final save -------------------------------------------------------
  if step < num_steps:
    print(f'stopped at step {step} by a signal; checkpoint saved, rerun the '
          'same command to resume', file=sys.stderr)
  else:
    write_samples(config, task, trainer, state, workdir)
    if summary and is_lead:
      print(run_summary.run_summary(config, workdir.path, eval_metrics),
            flush=True)
  return eval_metrics


def write_samples(config, task, trainer, state, workdir, num_samples=3):
  """A few generations into samples.txt, so every run shows its output.

  Every process samples, in lockstep: the params may span all of them.
  """
  from latentlm import generate  # pylint: disable=g-import-not-at-top
  from latentlm import runs  # pylint: disable=g-import-not-at-top
  run = runs.Run(config=config, task=task, trainer=trainer, state=state,
                 step=int(state.step))
  texts = task.generate_texts(run, generate.DEFAULT_PROMPT, num_samples,
                              jax.random.key(config.seed))
  body = '\n\n'.join(f'--- sample {i} (step {run.step})\n{t}'
                      for i, t in enumerate(texts))
  if jax.process_index() == 0:
    workdir_lib.write_atomic(workdir.samples_path, body + '\n')
  return texts


# ============================================================================
# the pipeline of stages
# ============================================================================
def _finished_eval(config, workdir) -> dict | None:
  """The final eval metrics of a finished run in `workdir`, else None."""
  if not os.path.exists(workdir.samples_path):  # written last by train()
    return None
  for record in workdir_lib.read_metrics(workdir):
    if record['step'] == config.train.num_steps and any(
        k.startswith('eval/') for k in record):
      return {k[len('eval/'):]: v for k, v in record.items()
              if k.startswith('eval/')}
  return None


def train_pipeline(config, workdir_path: str) -> dict:
  """Trains config.stages.autoencoder into DIR/autoencoder, then
  config.stages.concept_lm on it into DIR/concept_lm, then (when the config
  has it) config.stages.head_distill from that into DIR/head_distill; prints
  every stage's eval metrics and samples of the last. A finished stage is
  skipped, so rerunning the command resumes the stage it was in.
  """
  from latentlm import concept_generate  # pylint: disable=g-import-not-at-top
  from latentlm import runs  # pylint: disable=g-import-not-at-top
  stages = pipeline.stage_names(config)
  for name in stages:
    config_lib.check_positive(config.stages[name])
  workdir = workdir_lib.Workdir(workdir_path)
  workdir.check_compatible(config)
  os.makedirs(workdir.path, exist_ok=True)
  workdir_lib.write_atomic(workdir.config_path, config.to_json(indent=2) + '\n')
  start = time.perf_counter()
  summary, stage_metrics = {}, {}
  for i, name in enumerate(stages):
    stage_config = pipeline.stage_config(config, name, workdir.path)
    stage_workdir = workdir_lib.Workdir(pipeline.stage_path(workdir.path,
                                                            name))
    eval_metrics = _finished_eval(stage_config, stage_workdir)
    if eval_metrics is None:
      print(f'stage {i + 1}/{len(stages)}: {name} -> '
            f'{stage_workdir.path}', flush=True)
      eval_metrics = train(stage_config, stage_workdir.path, summary=False)
    else:
      print(f'stage {i + 1}/{len(stages)}: {name} already trained '
            f'in {stage_workdir.path}', flush=True)
    stage_metrics[name] = eval_metrics
    summary.update({f'{name}/{k}': v for k, v in eval_metrics.items()})

  run = runs.load(stage_workdir.path)
  samples = config.samples
  texts = run.task.generate_texts(
      run, samples.prompt, samples.num_samples, jax.random.key(config.seed),
      temperature=samples.temperature, max_bytes=samples.max_bytes,
      num_candidates=samples.num_candidates)
  for i, text in enumerate(texts):
    print(f'--- sample {i}\n{samples.prompt}{text}\n', flush=True)
  vocabulary = concept_generate.training_vocabulary(run.config.data)
  summary['word_vocabulary_fraction'] = concept_generate.vocabulary_fraction(
      texts, vocabulary)
  summary['minutes'] = (time.perf_counter() - start) / 60
  print(run_summary.pipeline_summary(config, workdir.path, stage_metrics),
        flush=True)
  print(json.dumps(summary), flush=True)  # the last line: one JSON object
  return summary


def _stack(metrics_list):
  return {k: np.stack([np.asarray(m[k]) for m in metrics_list])
          for k in metrics_list[0]}


def _progress_bar(config, start_step, num_steps, enabled):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=num_steps, initial=start_step, unit='step',
                   disable=not (enabled and config.train.progress_bar),
                   dynamic_ncols=True, desc=config.task)


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  cli.define_config_flag()
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
  distributed.define_flags()


def main(argv):
  del argv
  distributed.initialize_from_flags()  # before anything touches a device
  if pipeline.is_pipeline(flags.FLAGS.config):
    train_pipeline(flags.FLAGS.config, flags.FLAGS.workdir)
  else:
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
