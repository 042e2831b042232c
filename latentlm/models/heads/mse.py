"""mse: regress the next vector (Base-LCM)."""

import jax.numpy as jnp

from latentlm.models.heads import base


class MSEHead(base.Head):
  """Regresses the next vector (Base-LCM): the mean of the targets.

  The loss is the squared error averaged over Z and M. `sample` returns the
  prediction: there is no distribution, so rng and temperature are unused.
  """
  loss_unit = 'squared error/latent dim'
  samples_vary = False

  @classmethod
  def loss_weights(cls, head, d_model, latent_dim, num_targets):
    """One stream on the condition, to the latent."""
    del num_targets  # the mean is scored against all of them at once
    modulations, blocks = base.trunk_weights(head)
    return (d_model * head.hidden_dim + modulations + blocks +
            head.hidden_dim * latent_dim)

  def predict(self, h_NxD):
    return self.out(self.trunk(h_NxD))

  def loss(self, h_NxD, z_NxMxZ, rng):
    del rng
    pred_Nx1xZ = self.predict(h_NxD)[:, None]
    return jnp.mean(jnp.square(z_NxMxZ.astype(jnp.float32) - pred_Nx1xZ),
                    axis=(1, 2))

  def sample(self, h_NxD, rng, temperature=1.0):
    del rng
    base.check_temperature(temperature)
    return self.predict(h_NxD)
