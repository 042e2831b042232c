"""latentlm.aot: the train step compiled for TPU pods on a CPU machine.

Without libtpu (CI installs only `.[test]`) the argument checks and the
FLOPs extrapolation run on the CPU test devices, and the `tpu` tests skip;
with the [tpu] extra, XLA compiles a small version of the 1B config for a
v5p:2x2x1 and for two v5e:2x2 slices (a minute each), and the 1B itself for
its pods, v5p:8x8x8 and two v5e:16x16 slices (marked slow too: about half
an hour on 2 cores; figures in launch/README.md).
"""

import importlib.util

import jax
import numpy as np
import pytest

import helpers
from latentlm import aot
from latentlm import tasks
from latentlm.core.errors import UserError

HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU,
                                  reason="needs libtpu: pip install -e '.[tpu]'")


@pytest.mark.parametrize('topology, parsed', [
    ('v5p:8x8x8', ('v5p', (8, 8, 8))), ('v5e:16x16', ('v5e', (16, 16))),
    ('v4:2x2x1', ('v4', (2, 2, 1))), ('v6e:8x16', ('v6e', (8, 16)))])
def test_parse_topology(topology, parsed):
  assert aot.parse_topology(topology) == parsed


@pytest.mark.parametrize('topology, message', [
    ('v5p-1024', 'is not GENERATION:AxBxC'), ('v7:2x2', 'is not GENERATION'),
    ('v5e:4x4x4', 'v5e chips form a 2D grid'),
    ('v5p:8x8', 'v5p chips form a 3D grid')])
def test_bad_topology_is_a_one_line_error(topology, message):
  with pytest.raises(UserError, match=message):
    aot.parse_topology(topology)


def _nano_token_lm(**mesh):
  config = helpers.load_config('token_lm', 'size=nano')
  config.model.update(num_layers=3, max_len=16)
  config.data.seq_len = 16
  config.train.batch_size = 8
  config.mesh.update(mesh)
  return config


def test_flops_of_two_small_compiles_extrapolate_to_the_unrolled_count():
  # The same code path on the 8 CPU test devices instead of a pod's chips.
  config = _nano_token_lm(data=2, fsdp=4)
  extrapolated = aot.xla_flops_per_step(config, tasks.get_task, jax.devices())
  unrolled = config.copy_and_resolve_references()
  unrolled.model.scan_layers = False
  compiled, _ = aot.compile_train_step(unrolled, tasks.get_task(unrolled),
                                       jax.devices())
  np.testing.assert_allclose(
      extrapolated, compiled.cost_analysis()['flops'] * 8, rtol=1e-6)
  memory = aot.memory_per_chip(compiled)
  assert memory['total'] == (memory['arguments'] + memory['outputs'] -
                             memory['aliased'] + memory['temps'] +
                             memory['code'])
  assert memory['aliased'] > 0  # the state is donated


def test_a_mesh_that_does_not_divide_the_model_is_a_one_line_error():
  config = _nano_token_lm(data=1, tensor=8)  # 2 heads over 8 devices
  with pytest.raises(UserError, match='do not fit this model') as error:
    aot.compile_train_step(config, tasks.get_task(config), jax.devices())
  assert '\n' not in str(error.value)


@pytest.mark.skipif(HAS_LIBTPU, reason='libtpu is installed')
def test_without_libtpu_says_how_to_get_it():
  with pytest.raises(UserError, match=r"pip install -e '\.\[tpu\]'"):
    aot.topology_devices('v5p:2x2x1')


@pytest.mark.tpu
@needs_libtpu
def test_multislice_devices_are_slice_major_and_the_mesh_checked():
  devices = aot.topology_devices('v5e:4x4', num_slices=2)
  assert [d.slice_index for d in devices] == [0] * 16 + [1] * 16
  result = helpers.run_module(  # fsdp groups across the two slices
      'aot', '--config=configs/concept_lm_1b.py', '--config.mesh.data=1',
      '--config.mesh.fsdp=-1', '--topology=v5e:4x4', '--slices=2')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: mesh {'data': 1, 'fsdp': 32, 'tensor': 1}: fsdp x tensor "
      'group 0 spans slices; make config.mesh.data a multiple of --slices')


# The 1B config's structure (concept LM, energy head, bf16, scanned layers,
# remat, data x fsdp mesh) with a small backbone, so that it compiles in
# about a minute; the 1B itself on 512 chips is the last test.
SMALL_1B = ('--config=configs/concept_lm_1b.py', '--config.mesh.fsdp=4',
            '--config.model.num_layers=2', '--config.model.d_model=512',
            '--config.model.num_heads=4', '--config.model.num_kv_heads=4',
            '--config.model.mlp_dim=2048', '--config.data.seq_len=256',
            '--config.model.max_len=256', '--config.train.batch_size=16',
            '--config.head.hidden_dim=256')


def _check_report(result, chips, mesh, hbm_gib, max_flops_ratio):
  assert result.returncode == 0, result.stderr[-3000:]
  report = helpers.last_json_line(result.stdout)
  assert report['chips'] == chips
  assert report['mesh'] == mesh
  assert report['hbm_per_chip'] == hbm_gib * 2 ** 30
  memory = report['memory_per_chip']
  assert 0 < memory['total'] < report['hbm_per_chip']
  assert memory['arguments'] > 0 and memory['temps'] > 0
  # fsdp (4 or 128) shards the 12 bytes per param of params and Adam moments.
  assert memory['arguments'] < 12 * report['num_params'] / 2
  # XLA counts more than the model: the optimizer, elementwise ops, remat.
  assert 1 <= report['xla_over_model_flops'] < max_flops_ratio
  assert report['step_time_at_peak_s'] == pytest.approx(
      report['model_flops_per_step'] / report['peak_flops_per_s'])


@pytest.mark.tpu
@needs_libtpu
@pytest.mark.parametrize('topology, slices, chips, hbm_gib', [
    ('v5p:2x2x1', 1, 4, 95), ('v5e:2x2', 2, 8, 16)])
def test_small_concept_lm_compiles_fits_and_counts_its_flops(
    topology, slices, chips, hbm_gib):
  result = helpers.run_module('aot', *SMALL_1B, f'--topology={topology}',
                              f'--slices={slices}', timeout=900)
  # At d_model 512 elementwise work and the head weigh more than at 2048:
  # XLA/model was 1.109 on two v5e:2x2 slices, 1.052 for the 1B on its pods.
  _check_report(result, chips, dict(data=slices, fsdp=4, tensor=1), hbm_gib,
                max_flops_ratio=1.15)


# The 1B itself on its two target pods: about 12 and 17 CPU-minutes of
# compiling on a 2-core VM (launch/README.md, "Pod figures"); only these:
# pytest -m 'tpu and slow' tests/test_aot.py
@pytest.mark.tpu
@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize('topology, slices, hbm_gib', [
    ('v5p:8x8x8', 1, 95), ('v5e:16x16', 2, 16)])
def test_1b_concept_lm_fits_its_pods(topology, slices, hbm_gib):
  result = helpers.run_module('aot', '--config=configs/concept_lm_1b.py',
                              f'--topology={topology}', f'--slices={slices}',
                              timeout=7200)
  _check_report(result, 512, dict(data=4, fsdp=128, tensor=1), hbm_gib,
                max_flops_ratio=1.1)  # the 10%
