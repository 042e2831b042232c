"""The train loop: config -> mesh -> data -> init -> restore -> loop -> save,
and the pipeline of stages (the main job).

Restarting on the same workdir resumes from its latest checkpoint with the
same data order, so the continued run's losses equal an uninterrupted run's.
"""

import functools
import json
import os
import signal
import sys
import time

import jax
import numpy as np
import tqdm

from latentlm import sampling
from latentlm.core import config_lib
from latentlm.core import reliability
from latentlm.core import sharding
from latentlm.core import workdir as workdir_lib
from latentlm.sampling import concepts as concept_sampling
from latentlm.tasks import flops
from latentlm.tasks import pipeline
from latentlm.training import checkpoint
from latentlm.training import run_summary
from latentlm.training import runs
from latentlm.training.trainer import make_data
from latentlm.training.trainer import peak_flops_per_s
from latentlm.training.trainer import per_process_batch_size
from latentlm.training.trainer import Trainer


def train(config, workdir_path: str, summary: bool = True) -> dict:
  """Trains `config` in `workdir_path`; returns the last eval metrics.
  A finished run prints its summary (run_summary) unless `summary` is
  False (a pipeline's stage: the pipeline prints one for all)."""
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
        logged['train/mfu'] = flops.mfu(  # model FLOPs (latentlm.tasks.flops)
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
  run = runs.Run(config=config, task=task, trainer=trainer, state=state,
                 step=int(state.step))
  texts = task.generate_texts(run, sampling.PROMPT, num_samples,
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
  vocabulary = concept_sampling.training_vocabulary(run.config.data)
  summary['word_vocabulary_fraction'] = concept_sampling.vocabulary_fraction(
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
  return tqdm.tqdm(total=num_steps, initial=start_step, unit='step',
                   disable=not (enabled and config.train.progress_bar),
                   dynamic_ncols=True, desc=config.task)
