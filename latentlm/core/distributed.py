"""Multi-host runs: joining JAX's distributed runtime, and lockstep loops.

Every host runs the same command. On a multi-host TPU slice or a multi-slice
job, `jax.distributed.initialize()` finds its peers by itself: --distributed
or LATENTLM_DISTRIBUTED=1 (which launch/tpu.py sets) asks for it, and TPU
worker variables in the environment imply it. Elsewhere, e.g. two processes
on one CPU machine, the coordinator, process count and id come from flags or
from LATENTLM_COORDINATOR, LATENTLM_NUM_PROCESSES and LATENTLM_PROCESS_ID:

  LATENTLM_COORDINATOR=127.0.0.1:1234 LATENTLM_NUM_PROCESSES=2 \\
  LATENTLM_PROCESS_ID=0 python -m latentlm.train --config=... --workdir=DIR &
  (the same with LATENTLM_PROCESS_ID=1)

CPU processes exchange collectives through gloo, which gives up on a peer
after 30 s: `barrier` lines processes up for longer waits (compiles).
"""

import itertools
import os

from absl import flags
import jax
from jax.experimental import multihost_utils
import numpy as np

from latentlm.core.errors import UserError

ENV_COORDINATOR = 'LATENTLM_COORDINATOR'
ENV_NUM_PROCESSES = 'LATENTLM_NUM_PROCESSES'
ENV_PROCESS_ID = 'LATENTLM_PROCESS_ID'
ENV_DISTRIBUTED = 'LATENTLM_DISTRIBUTED'


def define_flags():
  """Flags of the commands that train (they override the environment)."""
  flags.DEFINE_bool('distributed', False, 'Join the distributed runtime with '
                    f'automatic discovery (TPU pods, multi-slice); also '
                    f'${ENV_DISTRIBUTED}=1.')
  flags.DEFINE_string('coordinator', None, f'host:port of process 0; default '
                      f'${ENV_COORDINATOR}.')
  flags.DEFINE_integer('num_processes', None, f'Processes in the run; default '
                       f'${ENV_NUM_PROCESSES}.')
  flags.DEFINE_integer('process_id', None, f'This process, 0-based; default '
                       f'${ENV_PROCESS_ID}.')


def _int_setting(value, env_name: str, flag_name: str) -> int | None:
  if value is None:
    value = os.environ.get(env_name) or None
  try:
    return None if value is None else int(value)
  except ValueError:
    raise UserError(f'{env_name} (or --{flag_name}) must be an integer, got '
                    f'{value!r}') from None


def on_multihost_tpu() -> bool:
  """Whether the TPU runtime's environment names several hosts or slices."""
  hostnames = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  slices = os.environ.get('MEGASCALE_NUM_SLICES', '1')
  return ',' in hostnames or slices not in ('', '1')


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
  """Joins the distributed runtime if this is a multi-process run.

  Call before anything touches a device. Returns whether it joined; a
  single-process run (no coordinator, not a multi-host TPU) does nothing.
  """
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
  num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES,
                               'num_processes')
  process_id = _int_setting(process_id, ENV_PROCESS_ID, 'process_id')
  if coordinator:
    if num_processes is None or process_id is None:
      raise UserError(f'a coordinator ({coordinator}) needs the process count '
                      f'and id too: set ${ENV_NUM_PROCESSES} and '
                      f'${ENV_PROCESS_ID} (or --num_processes, --process_id)')
    if not 0 <= process_id < num_processes:
      raise UserError(f'process id {process_id} is not in [0, '
                      f'{num_processes})')
    # Only the CPU backend reads this; TPU and GPU have their own collectives.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True
  if auto or os.environ.get(ENV_DISTRIBUTED) == '1' or on_multihost_tpu():
    jax.distributed.initialize()
    return True
  return False


def initialize_from_flags() -> bool:
  f = flags.FLAGS
  return initialize(f.coordinator, f.num_processes, f.process_id,
                    auto=f.distributed)


_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: int = 3600):
  """Returns once every process has called barrier(name) as often.

  Waits through the distributed runtime's coordination service, not through
  a device collective: one process may compile a step minutes after another
  (the persistent cache, host load), longer than gloo waits in a collective.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  jax_distributed.global_state.client.wait_at_barrier(
      f'latentlm/{name}/{next(_barrier_ids)}', timeout_in_ms=timeout_s * 1000)


def lockstep(iterator, max_items: int, pad_like):
  """Up to `max_items` items of `iterator`, as many on every process.

  Each item feeds a collective step, so a process that stopped early would
  leave the others waiting forever. A process whose iterator ends before
  the others' yields `pad_like(its last item)` until every process is done.
  """
  last = None
  for _ in range(max_items):
    item = next(iterator, None)
    any_left = item is not None
    if jax.process_count() > 1:
      any_left = bool(np.any(multihost_utils.process_allgather(
          np.int32(any_left))))
    if not any_left:
      return
    if item is None:
      if last is None:
        raise UserError(f'process {jax.process_index()} has no data while '
                        'others have some; use fewer processes')
      item = pad_like(last)
    last = item
    yield item
