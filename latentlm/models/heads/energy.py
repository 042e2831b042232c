"""energy: CALM's one-step generator, trained with the energy score."""

import jax
import jax.numpy as jnp

from latentlm.core.errors import UserError
from latentlm.models.heads import base


def _distances(a_NxAxZ, b_NxBxZ):
  """Euclidean distances N x A x B, with a zero (not NaN) gradient at 0."""
  sq_NxAxB = jnp.sum(
      jnp.square(a_NxAxZ[:, :, None] - b_NxBxZ[:, None]), axis=-1)
  nonzero = sq_NxAxB > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq_NxAxB, 1.0)), 0.0)


def energy_score(x_NxSxZ, y_NxMxZ):
  """Energy score (alpha=1) of S >= 2 model samples against M targets.

  mean_{s,m} ||x_s - y_m|| - 1/2 mean_{s != s'} ||x_s - x_s'||: the pairwise
  term averages over distinct pairs, so it is unbiased. Strictly proper:
  minimised in expectation only by the targets' distribution.
  """
  num_samples = x_NxSxZ.shape[1]
  fit_N = jnp.mean(_distances(x_NxSxZ, y_NxMxZ), axis=(1, 2))
  # The diagonal is exactly zero, so summing all pairs sums distinct ones.
  spread_N = jnp.sum(_distances(x_NxSxZ, x_NxSxZ), axis=(1, 2)) / (
      num_samples * (num_samples - 1))
  return fit_N - 0.5 * spread_N


class EnergyHead(base.Head):
  """CALM's energy head: a generator maps (h, noise) to a sample in one step.

  Noise is uniform in [-1/2, 1/2]^noise_dim as in CALM. Temperature scales the
  noise: a heuristic, since nothing trains the generator to map smaller noise
  to a sharper distribution; 0 gives one deterministic vector per h.
  """
  num_samples: int = 8  # CALM: 8 model samples a position, for the pairs
  noise_dim: int = 64
  trunk_input = None  # noise
  loss_unit = 'energy score/concept'

  @classmethod
  def check(cls, fields):
    if fields['num_samples'] < 2:
      raise UserError('head.num_samples must be >= 2 for the energy score')

  @classmethod
  def loss_weights(cls, head, d_model, latent_dim, num_targets):
    """One condition, num_samples streams from noise."""
    del num_targets  # the score compares samples and targets without matmuls
    H = head.hidden_dim
    modulations, blocks = base.trunk_weights(head)
    stream = head.noise_dim * H + blocks + H * latent_dim
    return d_model * H + modulations + head.num_samples * stream

  def sample_many(self, h_NxD, rng, num_samples, temperature=1.0):
    """num_samples independent samples per position: N x S x Z."""
    noise_NxSxE = temperature * jax.random.uniform(
        rng, (h_NxD.shape[0], num_samples, self.noise_dim),
        minval=-0.5, maxval=0.5)
    return self.out(self.trunk(h_NxD[:, None], noise_NxSxE))

  def loss(self, h_NxD, z_NxMxZ, rng):
    x_NxSxZ = self.sample_many(h_NxD, rng, self.num_samples)
    return energy_score(x_NxSxZ, z_NxMxZ.astype(jnp.float32))

  def sample(self, h_NxD, rng, temperature=1.0):
    base.check_temperature(temperature)
    return self.sample_many(h_NxD, rng, 1, temperature)[:, 0]
