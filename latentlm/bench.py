"""Train throughput and MFU, in one process.

  python -m latentlm.bench train --config=configs/token_lm.py:size=small [--steps=N]

Measures (a) the peak: a jitted float32 matmul on CPU, the chip table on TPU;
(b) the real train step of the config on the default devices: median step
time, tokens/s, model FLOPs (latentlm.flops) and MFU; (c) the data pipeline:
batches/s of the real train iterator, against what the step consumes. Prints
a short table, then, as the last stdout line, one JSON object.
"""

import json
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from latentlm import cli
from latentlm import flops
from latentlm import sharding
from latentlm import tasks
from latentlm import train
from latentlm.errors import UserError
from latentlm.models import transformer

# --config is defined by latentlm.train, imported above.
flags.DEFINE_integer('steps', 10, 'Timed train steps, after compile and 2 '
                     'warm-up steps.')
flags.DEFINE_integer('data_batches', 50, 'Batches pulled from the train '
                     'iterator to time the data pipeline.')

WARMUP_STEPS = 2
MATMUL_SIZES = (1024, 2048)  # the best rate counts; larger adds little on CPU
MATMUL_REPEATS = 7


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_flops_per_s() -> float:
  """The best median float32 N x N matmul rate of the default device."""
  best = 0.0
  for n in MATMUL_SIZES:
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b_NxN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a_NxN, b_NxN).block_until_ready()  # compile and warm up
    seconds = _median_seconds(
        lambda: matmul(a_NxN, b_NxN).block_until_ready(), MATMUL_REPEATS)
    best = max(best, 2 * n ** 3 / seconds)
  return best


def peak_flops_per_s(devices) -> tuple[float, str]:
  """Peak FLOP/s of `devices` together, and where the number comes from.

  On CPU the matmul already uses every core of the host, so it is measured
  once, not per (simulated) device.
  """
  chip_peak = flops.device_peak_flops(devices[0])
  if chip_peak is not None:
    return chip_peak * len(devices), f'{devices[0].device_kind} bf16 table'
  return matmul_flops_per_s(), 'float32 matmul'


def xla_flops_per_step(config, mesh, batch) -> float:
  """XLA's cost_analysis of the train step, over all devices.

  XLA counts a while loop's body once, so a scanned layer stack would count
  one layer: the step is lowered with layers unrolled, and analysed before
  SPMD partitioning so that the count is global. No compile is needed.
  """
  unrolled = config.copy_and_resolve_references()
  unrolled.model.scan_layers = False
  trainer = train.Trainer(unrolled, tasks.get_task(unrolled), mesh)
  with trainer.context():
    lowered = trainer._train_step.lower(  # pylint: disable=protected-access
        trainer.abstract_state, batch, trainer.rng)
  return float(lowered.cost_analysis()['flops'])


def time_train_steps(trainer, batch, num_steps: int) -> tuple[float, float]:
  """(compile seconds, median step seconds) of the trainer's jitted step."""
  start = time.perf_counter()
  with trainer.context():
    step = trainer._train_step.lower(  # pylint: disable=protected-access
        trainer.abstract_state, batch, trainer.rng).compile()
  compile_s = time.perf_counter() - start
  state = trainer.init_state()
  for _ in range(WARMUP_STEPS):
    state, _ = step(state, batch, trainer.rng)
  jax.block_until_ready(state)

  step_times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, _ = step(state, batch, trainer.rng)
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - start)
  return compile_s, float(np.median(step_times))


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
  batch_size = train.per_process_batch_size(config, mesh)
  tokens_per_step = task.tokens_per_step()

  # (a) peak, before anything else runs in this process.
  peak, peak_source = peak_flops_per_s(devices)

  # (b) the train step, on one real batch kept on the devices.
  data = train.make_data(config, task, 'train', batch_size, seed=config.seed)
  batch = train.global_batch(next(data), mesh)
  trainer = train.Trainer(config, task, mesh)
  compile_s, step_time_s = time_train_steps(trainer, batch, num_steps)
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
      ('data tokens/s', f"{result['data_tokens_per_s']:,.0f} "
                        f"({result['data_ratio']:.1f}x the step's need)"),
  ]
  width = max(len(name) for name, _ in rows)
  for name, value in rows:
    print(f'{name:<{width}}  {value}')


def main(argv):
  command = argv[1:]
  if command == ['generate']:
    raise UserError('bench generate is not implemented yet')
  if command != ['train']:
    raise UserError(f'usage: python -m latentlm.bench train|generate '
                    f'--config=FILE.py[:ARGS]; got {" ".join(command)!r}')
  if flags.FLAGS.config is None:
    raise UserError('--config is required, e.g. '
                    '--config=configs/token_lm.py:size=small')
  result = dict(config=flags.FLAGS['config'].config_filename,
                **bench_train(flags.FLAGS.config, flags.FLAGS.steps,
                              flags.FLAGS.data_batches))
  print_table(result)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.run(main)
