"""Train throughput and MFU; generation speed of concept vs token LMs.

  python -m latentlm.bench train --config=configs/token_lm.py:size=small [--steps=N]
  python -m latentlm.bench generate --config=configs/shakespeare.py

`generate` (bench_generate) times KV-cached sampling of the concept LM and of
the token LM with the same backbone, on the same text, the parts of one
concept step (backbone, head, decoder) and the ratio a free head would
reach (`headless_ratio`); it prints one JSON object.

Measures (a) the peak: a jitted float32 matmul on CPU, the chip table on TPU;
(b) the real train step of the config on the default devices: median step
time, tokens/s, model FLOPs (latentlm.tasks.flops) and MFU; (c) the data pipeline:
batches/s of the real train iterator, against what the step consumes. Prints
a short table, then, as the last stdout line, one JSON object.
"""

import itertools
import json
import os
import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from latentlm import sampling
from latentlm import tasks
from latentlm.core import cli
from latentlm.core import config_lib
from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.data import corpus
from latentlm.models import transformer
from latentlm.sampling import concepts as concept_sampling
from latentlm.sampling import tokens as token_sampling
from latentlm.tasks import concept_lm
from latentlm.tasks import flops
from latentlm.tasks import pipeline
from latentlm.training import trainer as trainer_lib

WARMUP_STEPS = 2
MATMUL_SIZES = (1024, 2048)  # the best rate counts; larger adds little on CPU
MATMUL_REPEATS = 7  # to choose the size
MATMULS_PER_STEP = 3  # timed after each train step: both see the same load


def best_matmul():
  """(run, flops, rate): flops.timed_matmul of the size with the best rate."""
  return max((flops.timed_matmul(n, MATMUL_REPEATS) for n in MATMUL_SIZES),
             key=lambda timed: timed[2])


def xla_flops_per_step(config, mesh, batch) -> float:
  """XLA's cost_analysis of the train step, over all devices.

  XLA counts a while loop's body once, so a scanned layer stack would count
  one layer: the step is lowered with layers unrolled, and analysed before
  SPMD partitioning so that the count is global. No compile is needed.
  """
  unrolled = config.copy_and_resolve_references()
  if 'scan_layers' in unrolled.model:  # the autoencoder has no layer scan
    unrolled.model.scan_layers = False
  trainer = trainer_lib.Trainer(unrolled, tasks.get_task(unrolled), mesh)
  lowered = trainer.lower_train_step(trainer.abstract_state, batch)
  return float(lowered.cost_analysis()['flops'])


def time_train_steps(trainer, batch, num_steps: int, between=None):
  """Compiles and times the trainer's jitted step.

  Returns the compile seconds, the seconds of each timed step, and those of
  each call of `between`, run MATMULS_PER_STEP times after each step.
  """
  start = time.perf_counter()
  step = trainer.lower_train_step(trainer.abstract_state, batch).compile()
  compile_s = time.perf_counter() - start
  state = trainer.init_state()
  for _ in range(WARMUP_STEPS):
    state, _ = step(state, batch, trainer.rng)
  jax.block_until_ready(state)

  def run_step():
    nonlocal state
    state, _ = step(state, batch, trainer.rng)
    jax.block_until_ready(state)

  step_times, between_times = [], []
  for _ in range(num_steps):
    step_times.append(flops.seconds(run_step))
    if between is not None:
      between_times += [flops.seconds(between) for _ in range(MATMULS_PER_STEP)]
  return compile_s, step_times, between_times


def time_data(iterator, num_batches: int) -> float:
  """Seconds per batch pulled, after one warm-up batch (it fills buffers)."""
  next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return (time.perf_counter() - start) / num_batches


def bench_train(config, num_steps: int, data_batches: int) -> dict:
  """Runs (a) peak, (b) train step, (c) data; returns the JSON fields."""
  if num_steps < 1 or data_batches < 1:
    raise UserError('--steps and --data_batches must be at least 1')
  task = tasks.get_task(config)
  mesh = sharding.make_mesh(config.mesh)
  devices = list(mesh.devices.flat)
  batch_size = trainer_lib.per_process_batch_size(config, mesh)
  tokens_per_step = task.tokens_per_step()

  # (a) peak: the chip table, or on CPU the best matmul, which already uses
  # every core (so it is measured once, not per device).
  chip_peak = flops.device_peak_flops(devices[0])
  if chip_peak is None:
    matmul, matmul_flops, _ = best_matmul()
    peak_source = 'float32 matmul'
  else:
    matmul, peak_source = None, 'bf16 chip table'

  # (b) the train step, on one real batch kept on the devices. On CPU the
  # matmul runs between steps, so that other work on the host slows both.
  data = trainer_lib.make_data(config, task, 'train', batch_size,
                               seed=config.seed)
  batch = sharding.global_batch(next(data), mesh)
  trainer = trainer_lib.Trainer(config, task, mesh)
  compile_s, step_times, matmul_times = time_train_steps(
      trainer, batch, num_steps, between=matmul)
  step_time_s = float(np.median(step_times))
  if chip_peak is None:
    peak = matmul_flops / float(np.median(matmul_times))
  else:
    peak = chip_peak * len(devices)
  model_flops = flops.train_flops_per_step(config)

  # (c) the data pipeline; processes pull their shares of a batch in parallel.
  data_tokens_per_s = tokens_per_step / time_data(data, data_batches)
  tokens_per_s = tokens_per_step / step_time_s
  return dict(
      mfu=flops.mfu(model_flops, step_time_s, peak),
      tokens_per_s=tokens_per_s,
      step_time_s=step_time_s,
      model_flops_per_step=model_flops,
      xla_flops_per_step=xla_flops_per_step(config, mesh, batch),
      peak_flops_per_s=peak,
      peak_source=peak_source,
      data_tokens_per_s=data_tokens_per_s,
      data_ratio=data_tokens_per_s / tokens_per_s,
      num_params=transformer.param_count(trainer.abstract_state.params),
      devices=f'{len(devices)} x {devices[0].device_kind}',
      batch_size=config.train.batch_size,
      seq_len=config.data.seq_len,
      compile_s=compile_s,
      # CPU numbers move with what else runs on the host.
      load_avg_1m=os.getloadavg()[0],
      jax_version=jax.__version__)


def print_table(result: dict):
  rows = [
      ('config', result['config']),
      ('devices', result['devices']),
      ('params', f"{result['num_params'] / 1e6:.1f}M"),
      ('batch x seq', f"{result['batch_size']} x {result['seq_len']}"),
      ('compile', f"{result['compile_s']:.1f} s"),
      ('step time', f"{result['step_time_s'] * 1e3:.1f} ms"),
      ('tokens/s', f"{result['tokens_per_s']:,.0f}"),
      ('model FLOPs/step', f"{result['model_flops_per_step']:.4g}"),
      ('XLA FLOPs/step', f"{result['xla_flops_per_step']:.4g}"),
      ('peak FLOP/s', f"{result['peak_flops_per_s']:.4g} "
                      f"({result['peak_source']})"),
      ('MFU', f"{result['mfu']:.3f}"),
      ('host load (1 min)', f"{result['load_avg_1m']:.1f}"),
      ('data tokens/s', f"{result['data_tokens_per_s']:,.0f} "
                        f"({result['data_ratio']:.1f}x the step's need)"),
  ]
  width = max(len(name) for name, _ in rows)
  for name, value in rows:
    print(f'{name:<{width}}  {value}')


# ============================================================================
# generate: bytes/s of a concept LM and of the token LM of the same backbone
# ============================================================================
# Steps per stream: GENERATE_WINDOWS times the larger window of the two
# models, so that each pays for its window refills (a prefill of the last
# half window, every half window) close to their steady share: 1024 steps
# charge the token LM's 256-token window 6 of its 7.9 refills and the
# concept LM's 64-concept one 30 of 31. Far fewer steps would charge the
# concept LM's short window its refills while the token LM's long one had
# none.
GENERATE_WINDOWS = 4
GENERATE_STEPS = None  # if set, the steps per stream (tests)
GENERATE_TURN = 32  # steps a stream runs in its turn
GENERATE_REPEATS = 5  # timed passes, after one untimed pass


def _quietest_steps_per_s(make_streams, num_steps: int) -> list[float]:
  """Steps/s of each stream in the quietest of GENERATE_REPEATS passes.

  In a pass every stream runs num_steps steps, the streams taking turns of
  GENERATE_TURN steps, so that a burst of other work on the host slows each
  of them alike; the pass that took the least time in all is the one least
  disturbed, and all rates come from it. (Each stream's best whole run
  could time one model in a quiet spell and the other in a busy one.) An
  untimed pass first compiles every shape (prefill, step, refill).
  """
  passes = []
  for timed in [False] + [True] * GENERATE_REPEATS:
    streams = [make_stream(num_steps) for make_stream in make_streams]
    seconds = [0.0] * len(streams)
    for _ in range(0, num_steps, GENERATE_TURN):
      for i, stream in enumerate(streams):
        start = time.perf_counter()
        for _ in itertools.islice(stream, GENERATE_TURN):
          pass
        seconds[i] += time.perf_counter() - start
    if timed:
      passes.append(seconds)
  return [num_steps / seconds for seconds in min(passes, key=sum)]


def _median_ms(fn, repeats: int) -> float:
  """Median wall time of fn() in ms, after one untimed call (compile)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def concept_step_parts_ms(sampler, rng, repeats=50) -> dict:
  """Where a batch-1 generation step's time goes: the backbone on one chunk
  (KV cache), the head's sample, the stage-1 decoder, each jitted alone.
  The real step fuses them into one program, whose time is not their sum."""
  task, params = sampler.task, sampler.params
  cache = transformer.init_cache(task.model_config, 1,
                                 task.model_config.max_len)
  chunk_1x1xK = np.full((1, 1, task.chunk_len), task.pad_id, np.int32)
  head = jax.jit(lambda params, h_1xD, rng: sampler.model.apply(
      {'params': params}, h_1xD, rng, 1.0, sampler.constants,
      method='sample'))
  decoder = jax.jit(task.decode)
  h_1xD, _ = sampler.feed(chunk_1x1xK, cache)
  z_1xZ = head(params, h_1xD, rng)
  return dict(
      backbone=_median_ms(lambda: sampler.feed(chunk_1x1xK, cache), repeats),
      head=_median_ms(lambda: head(params, h_1xD, rng), repeats),
      decoder=_median_ms(lambda: decoder(sampler.frozen, z_1xZ), repeats))


def headless_sampler(task, params, frozen):
  """A ConceptSampler whose head is free: z is h's mean, broadcast to Z dims
  (so the whole backbone still runs). Its speed is the most any head can
  reach on this backbone and decoder."""
  sampler = concept_sampling.ConceptSampler(task, params, frozen)
  forward = sampler.feed_fn

  def step(weights, chunks_BxK, cache, rng, i, temperature):
    del rng, i, temperature
    h_BxD, cache = forward(weights, chunks_BxK[:, None], cache)
    _, frozen, _ = jax.tree.unflatten(sampler.weights_def, weights)
    z_BxZ = jnp.broadcast_to(h_BxD.mean(-1, keepdims=True),
                             (h_BxD.shape[0], task.latent_dim))
    return z_BxZ, task.decode(frozen, z_BxZ), cache

  sampler.step_fn = jax.jit(step, donate_argnums=2)  # as the real step
  return sampler


def mean_bytes_per_unit(config, task) -> float:
  """Text bytes per unit (a token, a concept) over the eval split."""
  tokenizer = task.tokenizer
  byte_lengths = np.asarray(tokenizer.token_byte_lengths())
  num_bytes = num_units = 0
  for document in corpus.load_split(config.data, config.data.eval_split):
    tokens = np.append(tokenizer.encode(document['text']), tokenizer.eos_id)
    num_bytes += int(byte_lengths[tokens].sum())
    num_units += len(task.unit_fn(tokens))
  return num_bytes / num_units


def _token_baseline_config(concept_config, config_dir: str):
  """configs/token_lm.py with the concept LM's backbone and corpus, at its
  own context."""
  config = config_lib.load_config_file(
      [f'--config={os.path.join(config_dir, "token_lm.py")}'])
  # The same text, so that bytes per token and per concept are comparable.
  config.data.update({k: v for k, v in concept_config.data.items()
                      if k != 'seq_len'})
  config.model.update({k: v for k, v in concept_config.model.items()
                       if k != 'input'})
  config.model.max_len = config.data.seq_len
  return config


def bench_generate(config, config_dir: str) -> dict:
  """Batch-1 KV-cached sampling of both models with untrained weights.

  Each model runs the same number of steps (see GENERATE_WINDOWS) whatever
  it emits (no stop at EOS), so speed does not depend on weights; bytes/s
  multiply steps/s by the mean bytes of a unit of the eval split (a concept
  of the stage-1 segmentation, a token). Both samplers decode as they do by
  default (on CPU with the layer scan unrolled: transformer.unrolled_layers).
  Target: ratio >= 0.8 * bytes_per_concept / bytes_per_token.
  """
  concept_config, given = config, {}
  if pipeline.is_pipeline(config):  # no trained stage 1 needed
    # The model the pipeline samples from: its last stage's (a distilled
    # head's, when it has one; its config is a concept LM's).
    concept_config = config.stages[pipeline.last_stage(config)]
    given = dict(autoencoder=config.stages.autoencoder)
  if not issubclass(tasks.task_class(concept_config), concept_lm.Task):
    raise UserError('bench generate needs a concept LM or pipeline config, '
                    f'not task {config.task!r}')
  # A distilled head's config samples like the concept LM it describes;
  # only shapes matter here, not the stage-1 weights.
  task = concept_lm.Task(concept_config,
                         concept_lm.Task.stages_of(concept_config, given))
  token_config = _token_baseline_config(concept_config, config_dir)
  token_task = tasks.get_task(token_config)
  rng = jax.random.key(config.seed)
  params, frozen = nn.meta.unbox(jax.jit(task.init)(rng))
  token_params, _ = nn.meta.unbox(jax.jit(token_task.init)(rng))

  concept_sampler = concept_sampling.ConceptSampler(task, params, frozen)
  context_LxK, _ = concept_sampling.prompt_chunks(task, '')
  token_sampler = token_sampling.TokenSampler(token_task, token_params)
  prompt_1x1 = np.full((1, 1), token_task.tokenizer.eos_id, np.int32)
  headless = headless_sampler(task, params, frozen)
  num_steps = GENERATE_STEPS or GENERATE_WINDOWS * max(concept_sampler.window,
                                                       token_sampler.window)

  def concept_stream(sampler):
    return lambda steps: sampler.stream(context_LxK[None], rng, steps,
                                        sampling.TEMPERATURE)
  concept_steps_per_s, headless_steps_per_s, token_steps_per_s = (
      _quietest_steps_per_s(
          [concept_stream(concept_sampler), concept_stream(headless),
           lambda steps: token_sampler.stream(
               prompt_1x1, rng, steps, temperature=sampling.TEMPERATURE,
               top_p=sampling.TOP_P)],
          num_steps))

  bytes_per_concept = mean_bytes_per_unit(concept_config, task)
  bytes_per_token = mean_bytes_per_unit(token_config, token_task)
  concept_bytes_per_s = concept_steps_per_s * bytes_per_concept
  token_bytes_per_s = token_steps_per_s * bytes_per_token
  return dict(
      concept_bytes_per_s=concept_bytes_per_s,
      token_bytes_per_s=token_bytes_per_s,
      ratio=concept_bytes_per_s / token_bytes_per_s,
      target_ratio=0.8 * bytes_per_concept / bytes_per_token,
      # The ratio if the head cost nothing: the ceiling of this backbone.
      headless_ratio=(headless_steps_per_s * bytes_per_concept /
                      token_bytes_per_s),
      bytes_per_concept=bytes_per_concept,
      bytes_per_token=bytes_per_token,
      concept_steps_per_s=concept_steps_per_s,
      token_steps_per_s=token_steps_per_s,
      concept_step_parts_ms=concept_step_parts_ms(concept_sampler, rng),
      concept_params=transformer.param_count(params),
      token_params=transformer.param_count(token_params),
      steps=num_steps,
      load_avg_1m=os.getloadavg()[0],
      devices=f'1 x {jax.devices()[0].device_kind}')


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  cli.define_config_flag()
  flags.DEFINE_integer('steps', 10, 'Timed train steps, after compile and 2 '
                       'warm-up steps.')
  # Past the documents read ahead, so that reading and tokenizing count.
  flags.DEFINE_integer('data_batches', 500, 'Batches pulled from the train '
                       'iterator to time the data pipeline.')


def main(argv):
  command = argv[1:]
  if command not in (['train'], ['generate']):
    raise UserError(f'usage: python -m latentlm.bench train|generate '
                    f'--config=FILE.py[:ARGS]; got {" ".join(command)!r}')
  if flags.FLAGS.config is None:
    raise UserError('--config is required, e.g. '
                    '--config=configs/token_lm.py:size=small')
  config_path = flags.FLAGS['config'].config_filename
  if command == ['generate']:
    result = dict(config=config_path, **bench_generate(
        flags.FLAGS.config, os.path.dirname(config_path)))
    print(json.dumps(result), flush=True)
    return
  result = dict(config=config_path,
                **bench_train(flags.FLAGS.config, flags.FLAGS.steps,
                              flags.FLAGS.data_batches))
  print_table(result)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
