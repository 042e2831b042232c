"""Extending latentlm from outside the package (docs/extending.md): a head
defined and registered in this file trains as a concept LM; nothing outside
latentlm/tasks/ switches on a task's name."""

import math
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import test_concept_lm as concept_lm_test
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.models import heads
from latentlm.models.heads import base
from latentlm.tasks import flops
from latentlm.training import loop as train_loop


class GaussianHead(base.Head):
  """N(mean(h), diag(std)^2) with one learned std per latent dim: an exact
  likelihood from base.Head's trunk and output alone."""
  loss_unit = 'nats/concept'

  def setup(self):
    super().setup()  # the trunk, and `out`: the mean
    self.log_std = self.param(
        'log_std', nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                ('latent',)),
        (self.latent_dim,))

  def loss(self, h_NxD, z_NxMxZ, rng):
    del rng
    mean_Nx1xZ = self.out(self.trunk(h_NxD))[:, None]
    u_NxMxZ = (z_NxMxZ.astype(jnp.float32) - mean_Nx1xZ) * jnp.exp(
        -self.log_std)
    nll_NxM = jnp.sum(0.5 * jnp.square(u_NxMxZ) + self.log_std +
                      0.5 * math.log(2 * math.pi), axis=-1)
    return jnp.mean(nll_NxM, axis=1)

  def sample(self, h_NxD, rng, temperature=1.0):
    base.check_temperature(temperature)
    mean_NxZ = self.out(self.trunk(h_NxD))
    return mean_NxZ + temperature * jnp.exp(self.log_std) * jax.random.normal(
        rng, mean_NxZ.shape)

  @classmethod
  def loss_weights(cls, head, d_model, latent_dim, num_targets):
    """One stream on the condition, to the mean (the std is a vector)."""
    del num_targets  # the likelihood of each costs no matmul
    modulations, blocks = base.trunk_weights(head)
    return (d_model * head.hidden_dim + modulations + blocks +
            head.hidden_dim * latent_dim)


@pytest.fixture
def gaussian_head(monkeypatch):
  """'gaussian' registered for one test (other tests see the five heads)."""
  monkeypatch.setattr(heads, 'HEADS', dict(heads.HEADS))
  heads.register_head('gaussian', GaussianHead)


def test_a_head_registered_outside_the_package_trains(gaussian_head,
                                                      tmp_path_factory,
                                                      capsys):
  del gaussian_head
  path, data_dir, _ = concept_lm_test.make_stage1(tmp_path_factory)
  tmp_path = tmp_path_factory.mktemp('run')
  config = concept_lm_test._config(path, data_dir)  # pylint: disable=protected-access
  config.head = heads.default_head_config('gaussian')
  config.head.update(hidden_dim=32, num_layers=1)
  config.train.update(num_steps=2, log_every=1, eval_every=2,
                      checkpoint_every=2, eval_batches=1)
  workdir = workdir_lib.Workdir(str(tmp_path / 'run'))
  eval_metrics = train_loop.train(config, workdir.path)

  records = workdir_lib.read_metrics(workdir)
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert np.isfinite(eval_metrics['latent_l2'])
  assert records[0]['train/flops_per_step'] == flops.train_flops_per_step(
      config) > 0
  helpers.check_summary(capsys.readouterr().out, workdir.path,
                        'nats/concept')  # the head's loss unit


def test_a_head_without_a_flops_count_names_what_to_add(monkeypatch):
  monkeypatch.setattr(heads, 'HEADS', dict(heads.HEADS))

  class Uncounted(base.Head):
    """A head whose FLOPs nobody counted yet."""

  heads.register_head('uncounted', Uncounted)
  config = helpers.load_config('concept_lm', 'size=nano')
  config.head = heads.default_head_config('uncounted')
  with pytest.raises(UserError, match='define Uncounted.loss_weights'):
    flops.train_flops_per_step(config, helpers.load_config('autoencoder'))


# A comparison of a task name with a literal, or a membership test on one.
_TASK_SWITCH = re.compile(
    r"""task['"]?\)?\s*(==|!=)\s*['"]|task\s+(not\s+)?in\s+[(\[{A-Z]""")


def test_nothing_outside_tasks_switches_on_a_task_name():
  package = pathlib.Path(helpers.REPO) / 'latentlm'
  switches = [f'{path.relative_to(helpers.REPO)}:{i + 1}'
              for path in package.rglob('*.py')
              if path.parent != package / 'tasks'
              for i, line in enumerate(path.read_text().splitlines())
              if _TASK_SWITCH.search(line) or 'hasattr(' in line]
  assert not switches
