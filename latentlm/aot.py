"""Compiles the real train step for a TPU pod ahead of time, on any machine.

  pip install -e '.[tpu]'
  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/concept_lm_1b.py \\
      --topology=v5p:8x8x8 [--slices=2]

libtpu describes the pod's chips (`jax.experimental.topologies`); the
config's mesh and sharding rules lay the train state and batch over them, and
XLA compiles the step for that pod. Prints the memory per chip (arguments,
outputs, temporaries, total against the chip's HBM), FLOPs per step against
`latentlm.tasks.flops`, and the step time at the chips' peak; the last stdout line
is one JSON object. A config that does not fit fails here, not on the pod.

With several slices, the devices are slice-major and only the mesh's data
axis may cross slices (the slow network between them).
"""

import json
import os
import re
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from latentlm import tasks
from latentlm.core import cli
from latentlm.core import config_lib
from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.models import transformer
from latentlm.tasks import flops
from latentlm.training import trainer as trainer_lib

GIB = 2 ** 30
# HBM per chip, from Google's Cloud TPU pages.
TPU_HBM_BYTES = {'v4': 32 * GIB, 'v5e': 16 * GIB, 'v5p': 95 * GIB,
                 'v6e': 32 * GIB}
# Generation -> libtpu's topology prefix and chip configuration.
_LIBTPU_NAMES = {'v4': ('v4', 'megacore'), 'v5p': ('v5', 'megacore'),
                 'v5e': ('v5e', 'default'), 'v6e': ('v6e', 'default')}
_CHIPS_PER_HOST = (2, 2, 1)


def parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
  """'v5p:8x8x8' -> ('v5p', (8, 8, 8)); v4 and v5p are 3D, v5e and v6e 2D."""
  match = re.fullmatch(r'(v\w+):(\d+(?:x\d+)+)', topology)
  generation = match and match.group(1)
  if generation not in _LIBTPU_NAMES:
    raise UserError(f'--topology={topology!r} is not GENERATION:AxBxC with a '
                    f'generation in {sorted(_LIBTPU_NAMES)}, e.g. v5p:8x8x8 '
                    'or v5e:16x16')
  dims = tuple(int(d) for d in match.group(2).split('x'))
  grid_dims = 3 if _LIBTPU_NAMES[generation][1] == 'megacore' else 2
  if len(dims) != grid_dims:
    raise UserError(f'--topology={topology!r}: {generation} chips form a '
                    f'{grid_dims}D grid')
  return generation, dims


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The chips of `num_slices` slices of `topology`, slice-major."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  generation, dims = parse_topology(topology)
  prefix, chip_config = _LIBTPU_NAMES[generation]
  # Full-size rings wrap around: 3D slices in cubes of 4, 2D rows of 16.
  if len(dims) == 3:
    wrap = (all(d % 4 == 0 for d in dims),) * 3
  else:
    wrap = (*(d == 16 for d in dims), False)
  if os.environ.get('JAX_PLATFORMS') == 'cpu':
    # Off a TPU VM, libtpu warns that it finds no TPU host unless told of
    # one; any host will do, it only describes the chips compiled for here.
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5p-8')
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    # No TPU to share, so other processes may load libtpu at the same time.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    description = topologies.get_topology_desc(
        platform='tpu', topology_name=f'{prefix}:{"x".join(map(str, dims))}',
        chip_config_name=chip_config, chips_per_host_bounds=_CHIPS_PER_HOST,
        num_slices=num_slices, wrap=wrap)
  except RuntimeError as e:
    if 'not installed' in str(e):
      raise UserError('ahead-of-time TPU compilation needs libtpu: '
                      "pip install -e '.[tpu]'") from None
    raise UserError(f'--topology={topology}: {str(e).splitlines()[0]}'
                    ) from None
  return sorted(description.devices,
                key=lambda d: (getattr(d, 'slice_index', 0), d.id))


def check_slices(mesh):
  """Fails unless each index of the data axis lies within one slice."""
  slice_of = np.vectorize(lambda d: getattr(d, 'slice_index', 0))
  for i, group in enumerate(slice_of(mesh.devices)):
    if len(np.unique(group)) > 1:
      raise UserError(f'mesh {dict(mesh.shape)}: fsdp x tensor group {i} '
                      'spans slices; make config.mesh.data a multiple of '
                      '--slices')


def given_stages(config, autoencoder_config_spec: str) -> dict:
  """The stage configs to build `config` on: the autoencoder of
  `autoencoder_config_spec` when the config names no stage-1 workdir
  (only shapes matter here), none otherwise."""
  if 'autoencoder_workdir' not in config or config.autoencoder_workdir:
    return {}
  return dict(autoencoder=config_lib.load_config_file(
      [f'--config={autoencoder_config_spec}']))


def make_task(config, autoencoder_config_spec: str):
  """The config's task with fresh weights (only shapes matter here)."""
  return tasks.get_task(config,
                        **given_stages(config, autoencoder_config_spec))


def compile_train_step(config, task, devices):
  """(compiled step, trainer) of `config` over `devices`, from shapes only."""
  mesh = sharding.make_mesh(config.mesh, devices)
  check_slices(mesh)
  trainer_lib.per_process_batch_size(config, mesh)  # divisibility, in one line
  trainer = trainer_lib.Trainer(config, task, mesh)
  shape = (config.train.batch_size, task.row_len, *task.unit_shape)
  batch = {'tokens': jax.ShapeDtypeStruct(
      shape, jnp.int32, sharding=sharding.batch_sharding(mesh, len(shape)))}
  rng = jax.ShapeDtypeStruct(trainer.rng.shape, trainer.rng.dtype,
                             sharding=sharding.replicated(mesh))
  try:
    lowered = trainer.lower_train_step(trainer.abstract_state, batch, rng)
  except ValueError as e:  # e.g. a mesh axis that does not divide an array
    raise UserError(f'config.mesh {dict(mesh.shape)} and '
                    f'config.sharding.rules do not fit this model: '
                    f'{str(e).splitlines()[0][:300]}') from None
  with trainer.context():
    return lowered.compile(), trainer


def xla_flops_per_step(config, make_task_fn, devices) -> float:
  """XLA's FLOPs of one step, over all chips.

  XLA counts a loop body once, so a scanned layer stack would count as one
  layer. The stack is compiled unrolled with 1 and 2 layers instead, and
  the per-layer difference extrapolated: the same total, for two small
  compiles rather than one of every layer.
  """
  def step_flops(num_layers):
    c = config.copy_and_resolve_references()
    c.model.update(num_layers=num_layers, scan_layers=False)
    compiled, _ = compile_train_step(c, make_task_fn(c), devices)
    return compiled.cost_analysis()['flops'] * len(devices)  # per chip
  one, two = step_flops(1), step_flops(2)
  return one + (config.model.num_layers - 1) * (two - one)


def memory_per_chip(compiled) -> dict:
  """Bytes per chip; donated arguments share memory with the outputs."""
  m = compiled.memory_analysis()
  memory = dict(arguments=m.argument_size_in_bytes,
                outputs=m.output_size_in_bytes,
                aliased=m.alias_size_in_bytes,
                temps=m.temp_size_in_bytes,
                code=m.generated_code_size_in_bytes)
  memory['total'] = (memory['arguments'] + memory['outputs'] -
                     memory['aliased'] + memory['temps'] + memory['code'])
  return memory


def model_flops_per_step(config, autoencoder_config_spec: str) -> float:
  return flops.train_flops_per_step(
      config, **given_stages(config, autoencoder_config_spec))


def analyse(config, topology: str, num_slices: int,
            autoencoder_config_spec: str) -> dict:
  """Compiles `config` for the pod; returns the JSON fields."""
  generation, _ = parse_topology(topology)
  # First: a config that latentlm.tasks.flops cannot count fails before compiling.
  model_flops = model_flops_per_step(config, autoencoder_config_spec)
  devices = topology_devices(topology, num_slices)
  make_task_fn = lambda c: make_task(c, autoencoder_config_spec)
  start = time.perf_counter()
  compiled, trainer = compile_train_step(config, make_task_fn(config), devices)
  compile_s = time.perf_counter() - start
  memory = memory_per_chip(compiled)
  hbm = TPU_HBM_BYTES[generation]
  xla_flops = xla_flops_per_step(config, make_task_fn, devices)
  peak = flops.TPU_PEAK_FLOPS[generation] * len(devices)
  return dict(
      topology=topology, slices=num_slices, chips=len(devices),
      device_kind=devices[0].device_kind,
      mesh=dict(trainer.mesh.shape),
      num_params=transformer.param_count(trainer.abstract_state.params),
      memory_per_chip=memory,
      hbm_per_chip=hbm,
      memory_fraction=memory['total'] / hbm,
      fits=memory['total'] <= hbm,
      xla_flops_per_step=xla_flops,
      model_flops_per_step=model_flops,
      xla_over_model_flops=xla_flops / model_flops,
      peak_flops_per_s=peak,
      # The step can go no faster than its model FLOPs at the chips' peak.
      step_time_at_peak_s=model_flops / peak,
      compile_s=compile_s)


def print_report(result: dict):
  m, gib = result['memory_per_chip'], lambda b: f'{b / GIB:.2f} GiB'
  mesh = ' x '.join(f'{k}={v}' for k, v in result['mesh'].items())
  rows = [
      ('config', result['config']),
      ('pod', f"{result['slices']} x {result['topology']}: "
              f"{result['chips']} x {result['device_kind']}"),
      ('mesh', mesh),
      ('params', f"{result['num_params'] / 1e9:.3f}B"),
      ('memory per chip', f"{gib(m['arguments'])} arguments + "
                          f"{gib(m['outputs'] - m['aliased'])} new outputs + "
                          f"{gib(m['temps'])} temps + {gib(m['code'])} code"),
      ('total per chip', f"{gib(m['total'])} of {gib(result['hbm_per_chip'])}"
                         f" HBM ({100 * result['memory_fraction']:.1f}%)"),
      ('XLA FLOPs/step', f"{result['xla_flops_per_step']:.4g}"),
      ('model FLOPs/step', f"{result['model_flops_per_step']:.4g} (XLA/model "
                           f"{result['xla_over_model_flops']:.3f})"),
      ('step time at peak', f"{result['step_time_at_peak_s'] * 1e3:.1f} ms"),
      ('compile', f"{result['compile_s']:.0f} s"),
  ]
  width = max(len(name) for name, _ in rows)
  for name, value in rows:
    print(f'{name:<{width}}  {value}')


def define_flags():
  cli.define_config_flag()
  flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5p:8x8x8, v5e:16x16.')
  flags.DEFINE_integer('slices', 1, 'Slices of --topology (multi-slice).')
  flags.DEFINE_string('autoencoder', 'configs/autoencoder.py', 'Stage-1 '
                      'config for a concept LM without autoencoder_workdir.')


def main(argv):
  del argv
  f = flags.FLAGS
  if f.config is None or not f.topology:
    raise UserError('usage: python -m latentlm.aot --config=FILE.py[:ARGS] '
                    '--topology=v5p:8x8x8 [--slices=N]')
  if f.slices < 1:
    raise UserError(f'--slices={f.slices} must be at least 1')
  result = dict(config=f['config'].config_filename,
                **analyse(f.config, f.topology, f.slices, f.autoencoder))
  print_report(result)
  print(json.dumps(result), flush=True)
  if not result['fits']:
    raise UserError(f"the step needs {result['memory_per_chip']['total'] / GIB:.1f}"
                    f" GiB per chip, more than the chip's "
                    f"{result['hbm_per_chip'] / GIB:.0f} GiB")


if __name__ == '__main__':
  define_flags()
  cli.run(main)
