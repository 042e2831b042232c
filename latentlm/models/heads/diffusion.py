"""diffusion: x0-prediction, DDIM sampling, classifier-free guidance."""

import jax
import jax.numpy as jnp

from latentlm.core.errors import UserError
from latentlm.models.heads import base


def cosine_alpha_bar(t):
  """Signal fraction alpha_bar(t), t in [0, 1] (Nichol & Dhariwal 2021)."""
  offset = 0.008
  f = lambda u: jnp.cos((u + offset) / (1 + offset) * jnp.pi / 2) ** 2
  return jnp.clip(f(t) / f(0.0), 0.0, 1.0)


class DiffusionHead(base.GuidedHead):
  """x0-prediction diffusion (LCM, MAR) with DDIM sampling and CFG.

  Trains on num_steps discrete timesteps of a cosine schedule, dropping h to a
  learned null condition with probability cond_dropout. Samples with
  sample_steps deterministic DDIM steps (eta=0), mixing the x0 predictions as
  uncond + guidance_scale * (cond - uncond); temperature scales the initial
  noise.
  """
  num_steps: int = 1000
  sample_steps: int = 40  # LCM samples with 40 DDIM steps and guidance 3
  cond_dropout: float = 0.1
  loss_unit = 'squared x0 error/latent dim'

  @classmethod
  def check(cls, fields):
    if not 1 <= fields['sample_steps'] <= fields['num_steps']:
      raise UserError('head.sample_steps must be in [1, head.num_steps]')
    super().check(fields)

  def denoise(self, x_NxZ, h_NxD, t_N, drop_N):
    return self.out(self.trunk(h_NxD, x_NxZ, t_N, drop_N))

  def loss(self, h_NxD, z_NxMxZ, rng):
    x0_NxMxZ = z_NxMxZ.astype(jnp.float32)
    t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
    shape_NxM = x0_NxMxZ.shape[:2]
    t_NxM = jax.random.randint(
        t_rng, shape_NxM, 1, self.num_steps + 1) / self.num_steps
    alpha_bar_NxMx1 = cosine_alpha_bar(t_NxM)[..., None]
    noise_NxMxZ = jax.random.normal(noise_rng, x0_NxMxZ.shape)
    xt_NxMxZ = (jnp.sqrt(alpha_bar_NxMx1) * x0_NxMxZ +
                jnp.sqrt(1 - alpha_bar_NxMx1) * noise_NxMxZ)
    drop_NxM = self.dropped(drop_rng, shape_NxM)
    pred_NxMxZ = self.denoise(xt_NxMxZ, h_NxD[:, None], t_NxM, drop_NxM)
    return jnp.mean(jnp.square(pred_NxMxZ - x0_NxMxZ), axis=(1, 2))

  def step_times(self):
    return 1.0 - jnp.arange(self.sample_steps) / self.sample_steps

  def sample(self, h_NxD, rng, temperature=1.0, constants=None):
    base.check_temperature(temperature)
    x_NxZ = temperature * jax.random.normal(
        rng, (h_NxD.shape[0], self.latent_dim))
    # The steps' times are known: condition all of them at once (see Trunk).
    modulations_S = self.guided_step_modulations(h_NxD, constants)

    def ddim(mdl, i, x_NxZ):
      t = 1.0 - i / self.sample_steps
      t_next = 1.0 - (i + 1) / self.sample_steps
      x0_NxZ = mdl.guided_out_at_step(modulations_S, i, x_NxZ)
      alpha_bar, alpha_bar_next = cosine_alpha_bar(t), cosine_alpha_bar(t_next)
      eps_NxZ = (x_NxZ - jnp.sqrt(alpha_bar) * x0_NxZ) / jnp.sqrt(1 - alpha_bar)
      return jnp.sqrt(alpha_bar_next) * x0_NxZ + jnp.sqrt(
          1 - alpha_bar_next) * eps_NxZ
    return base.loop(self, ddim, x_NxZ, self.sample_steps)
