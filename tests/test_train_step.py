"""The sharded train step equals the single-device one."""

import chex
import jax
import numpy as np
import pytest

import helpers
from latentlm import tasks
from latentlm.core import sharding
from latentlm.training import trainer as trainer_lib

NUM_STEPS = 20


def _losses(config, devices, batches):
  task = tasks.get_task(config)
  trainer = trainer_lib.Trainer(config, task,
                          sharding.make_mesh(config.mesh, devices))
  state = trainer.init_state()
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['loss']))
  return np.asarray(losses), jax.device_get(state.params)


@pytest.mark.parametrize('mesh', [dict(data=2, fsdp=4, tensor=1),
                                  dict(data=2, fsdp=2, tensor=2)])
def test_sharded_equals_single_device(tmp_path, mesh):
  config = helpers.tiny_token_lm(str(tmp_path))
  rng = np.random.default_rng(0)
  batches = [{'tokens': rng.integers(0, 256, (8, 33), dtype=np.int32)}
             for _ in range(NUM_STEPS)]
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  single_losses, single_params = _losses(config, jax.devices()[:1], batches)
  config.mesh.update(mesh)
  sharded_losses, sharded_params = _losses(config, jax.devices(), batches)
  assert single_losses[-1] < single_losses[0]  # it trains
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  chex.assert_trees_all_close(sharded_params, single_params, rtol=1e-4,
                              atol=1e-6)


def test_gradient_accumulation_matches_full_batch(tmp_path):
  config = helpers.tiny_token_lm(str(tmp_path))
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  rng = np.random.default_rng(1)
  batches = [{'tokens': rng.integers(0, 256, (8, 33), dtype=np.int32)}
             for _ in range(3)]
  full_losses, full_params = _losses(config, jax.devices()[:1], batches)
  config.train.grad_accum_steps = 4
  accum_losses, accum_params = _losses(config, jax.devices()[:1], batches)
  np.testing.assert_allclose(accum_losses, full_losses, rtol=1e-5)
  chex.assert_trees_all_close(accum_params, full_params, rtol=1e-4, atol=1e-6)
