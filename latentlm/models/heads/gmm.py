"""gmm: a mixture of diagonal Gaussians with an exact likelihood (GIVT)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentlm.models.heads import base


class GMMHead(base.Head):
  """Mixture of diagonal Gaussians (GIVT) with an exact likelihood in nats.

  The output kernels start at zero (GIVT), so every position starts from the
  same mixture; the means' biases start random, as identical components would
  receive identical gradients and never separate. Temperature T divides the
  mixture logits and multiplies the stds; T=0 returns the most likely
  component's mean.
  """
  num_components: int = 8
  min_std: float = 1e-3
  loss_unit = 'nats/concept'

  @classmethod
  def loss_weights(cls, head, d_model, latent_dim, num_targets):
    """One stream on the condition, to each component's weight, means and
    stds."""
    del num_targets  # the likelihood of each costs no matmul
    modulations, blocks = base.trunk_weights(head)
    outputs = head.num_components * (1 + 2 * latent_dim)
    return d_model * head.hidden_dim + modulations + blocks + (
        head.hidden_dim * outputs)

  def setup(self):
    k, z = self.num_components, self.latent_dim
    zeros = nn.initializers.zeros_init()
    self.trunk = base.Trunk(self.hidden_dim, self.num_layers)
    self.logits_out = base.dense(k, 'mlp', None, zeros)
    self.mean_out = base.dense(k * z, 'mlp', 'latent', zeros,
                           nn.initializers.normal(1.0))
    self.std_out = base.dense(k * z, 'mlp', 'latent', zeros)

  def mixture(self, h_NxD):
    """(log weights N x K, means N x K x Z, stds N x K x Z)."""
    y_NxH = self.trunk(h_NxD)
    shape_NxKxZ = (h_NxD.shape[0], self.num_components, self.latent_dim)
    log_weights_NxK = jax.nn.log_softmax(self.logits_out(y_NxH))
    mean_NxKxZ = self.mean_out(y_NxH).reshape(shape_NxKxZ)
    std_NxKxZ = self.min_std + jax.nn.softplus(
        self.std_out(y_NxH).reshape(shape_NxKxZ))
    return log_weights_NxK, mean_NxKxZ, std_NxKxZ

  def _log_probs(self, h_NxD, z_NxMxZ):
    log_weights_NxK, mean_NxKxZ, std_NxKxZ = self.mixture(h_NxD)
    u_NxMxKxZ = (z_NxMxZ.astype(jnp.float32)[:, :, None] -
                 mean_NxKxZ[:, None]) / std_NxKxZ[:, None]
    log_normal_NxMxK = -jnp.sum(
        0.5 * jnp.square(u_NxMxKxZ) + jnp.log(std_NxKxZ[:, None]) +
        0.5 * math.log(2 * math.pi), axis=-1)
    return jax.nn.logsumexp(log_weights_NxK[:, None] + log_normal_NxMxK, -1)

  def log_prob(self, h_NxD, z_NxZ):
    """log p(z | h) in nats: N."""
    return self._log_probs(h_NxD, z_NxZ[:, None])[:, 0]

  def loss(self, h_NxD, z_NxMxZ, rng):
    del rng
    return -jnp.mean(self._log_probs(h_NxD, z_NxMxZ), axis=1)

  def sample(self, h_NxD, rng, temperature=1.0):
    base.check_temperature(temperature)
    log_weights_NxK, mean_NxKxZ, std_NxKxZ = self.mixture(h_NxD)
    component_rng, noise_rng = jax.random.split(rng)
    greedy = temperature == 0
    k_N = jnp.where(
        greedy, jnp.argmax(log_weights_NxK, axis=-1),
        jax.random.categorical(
            component_rng,
            log_weights_NxK / jnp.where(greedy, 1.0, temperature)))
    pick = lambda a_NxKxZ: jnp.take_along_axis(
        a_NxKxZ, k_N[:, None, None], axis=1)[:, 0]
    noise_NxZ = jax.random.normal(noise_rng, (k_N.shape[0], self.latent_dim))
    return pick(mean_NxKxZ) + temperature * pick(std_NxKxZ) * noise_NxZ
