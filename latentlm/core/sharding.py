"""Mesh from the config, logical-axis rules, and state/batch shardings."""

import math

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from latentlm.core.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Axis sizes for `num_devices`, resolving one -1 to the devices left."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1:
    raise UserError('config.mesh: at most one axis may be -1')
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f'config.mesh: {num_devices} devices do not divide into '
                      f'fixed axes of total size {known}')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f'config.mesh {dict(zip(MESH_AXES, sizes))} needs '
                    f'{math.prod(sizes)} devices, but {num_devices} are present')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axis types over `devices`."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  device_grid = np.asarray(devices).reshape(shape)
  return Mesh(device_grid, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_rules(rules_config) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
  """('batch=data+fsdp', 'seq=') -> (('batch', ('data', 'fsdp')), ('seq', None))."""
  rules = []
  for rule in rules_config:
    name, sep, axes = rule.partition('=')
    if not sep:
      raise UserError(f'config.sharding.rules: {rule!r} is not name=axis+axis')
    mesh_axes = tuple(a for a in axes.split('+') if a)
    unknown = set(mesh_axes) - set(MESH_AXES)
    if unknown:
      raise UserError(f'config.sharding.rules: {rule!r} names unknown mesh '
                      f'axes {sorted(unknown)}; use {MESH_AXES}')
    rules.append((name.strip(), mesh_axes or None))
  return tuple(rules)


def logical_shardings(boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of flax logically-partitioned values.

  Leaves without logical names (step counters, optimizer scalars) are
  replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)
  # optax's MaskedNode, the optimizer state of frozen params (head_distill's
  # backbone), is an empty tuple, which flax would read as a logical spec.
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(
      lambda spec: spec if is_masked(spec) else nn.logical_to_mesh_sharding(
          spec, mesh, rules),
      specs, is_leaf=lambda x: is_masked(x) or isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch arrays split their leading axis over the data-parallel axes."""
  return NamedSharding(mesh, P(('data', 'fsdp'), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def global_batch(local_batch, mesh):
  """Assembles each process's rows into one array sharded over the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          batch_sharding(mesh, x.ndim), x), local_batch)
