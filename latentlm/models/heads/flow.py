"""flow: conditional flow matching, sampled with Euler, Heun or
Adams-Bashforth steps."""

import jax
import jax.numpy as jnp

from latentlm.core import config_lib
from latentlm.models.heads import base

TIME_SAMPLING = ('logit_normal', 'uniform')
SOLVERS = ('euler', 'heun', 'ab2')


class FlowHead(base.GuidedHead):
  """Conditional flow matching on the linear path (rectified flow).

  x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) and x1 the target; the network
  regresses the velocity x1 - x0. Sampling integrates it from t=0 in
  num_steps steps; temperature scales the initial noise.

  solver: 'euler' takes one velocity per step. 'heun' (second order) also
  takes the velocity at the Euler step's end and steps with the mean of the
  two, except on the last step, which stays Euler (the end point needs no
  correction), so S steps cost 2S - 1 velocities. 'ab2' (Adams-Bashforth,
  two-step; second order too) steps with 1.5 times this step's velocity less
  0.5 times the last step's, Euler on the first, so S steps cost S
  velocities, at Euler's times. On the main job, Heun with 5 steps (9
  velocities) sampled better words than Euler with 10 at four bytes per
  concept, and as good at two; Adams-Bashforth sampled as well as Heun at
  fewer velocities, so the job takes it (docs/results/main_job.md).

  time_sampling: the training t. 'logit_normal', sigmoid of N(0, 1) (SD3),
  spends the training on the middle of the path, where the velocity depends
  most on which mode x_t heads for; 'uniform' is plain rectified flow. On the
  main job, logit-normal sampled better-spelt words than uniform
  (docs/results/main_job.md).

  Classifier-free guidance as in the diffusion head: cond_dropout > 0 trains
  a null condition, and guidance_scale mixes the velocities when sampling.
  """
  num_steps: int = 10  # when sampling
  time_sampling: str = 'logit_normal'  # the distribution of training times
  solver: str = 'euler'
  loss_unit = 'squared velocity error/latent dim'

  @classmethod
  def check(cls, fields):
    config_lib.choose('head.time_sampling', fields['time_sampling'],
                      TIME_SAMPLING)
    config_lib.choose('head.solver', fields['solver'], SOLVERS)
    super().check(fields)

  def training_times(self, rng, shape):
    if self.time_sampling == 'uniform':
      return jax.random.uniform(rng, shape)
    return jax.nn.sigmoid(jax.random.normal(rng, shape))

  def velocity(self, x_NxZ, h_NxD, t_N, drop_N=None):
    return self.out(self.trunk(h_NxD, x_NxZ, t_N, drop_N))

  def loss(self, h_NxD, z_NxMxZ, rng):
    x1_NxMxZ = z_NxMxZ.astype(jnp.float32)
    t_rng, noise_rng = jax.random.split(rng)
    t_NxM = self.training_times(t_rng, x1_NxMxZ.shape[:2])
    x0_NxMxZ = jax.random.normal(noise_rng, x1_NxMxZ.shape)
    xt_NxMxZ = x0_NxMxZ + t_NxM[..., None] * (x1_NxMxZ - x0_NxMxZ)
    # A third stream only with dropout: without it, the draws stay as before.
    drop_NxM = self.dropped(jax.random.fold_in(rng, 2), x1_NxMxZ.shape[:2])
    v_NxMxZ = self.velocity(xt_NxMxZ, h_NxD[:, None], t_NxM, drop_NxM)
    return jnp.mean(jnp.square(v_NxMxZ - (x1_NxMxZ - x0_NxMxZ)), axis=(1, 2))

  def step_times(self):
    return jnp.arange(self.num_steps) * (1.0 / self.num_steps)

  def sample(self, h_NxD, rng, temperature=1.0, constants=None):
    base.check_temperature(temperature)
    x_NxZ = temperature * jax.random.normal(
        rng, (h_NxD.shape[0], self.latent_dim))
    return self.sample_from_noise(h_NxD, x_NxZ, constants)

  def sample_from_noise(self, h_NxD, x_NxZ, constants=None):
    """The ODE's end from the given start x_NxZ (the noise, already scaled
    by the temperature): deterministic, so a student head can be distilled
    onto it (latentlm/tasks/head_distill.py)."""
    S, dt = self.num_steps, 1.0 / self.num_steps
    # The steps' times are known: condition all of them at once (see Trunk).
    # Heun's second velocity of step i is at step i + 1's time, and its last
    # step is Euler's, so the same S times serve every solver.
    modulations_S = self.guided_step_modulations(h_NxD, constants)

    def velocity(mdl, i, x_NxZ):
      return mdl.guided_out_at_step(modulations_S, i, x_NxZ)

    def euler(mdl, i, x_NxZ):
      return x_NxZ + dt * velocity(mdl, i, x_NxZ)

    def heun(mdl, i, x_NxZ):
      v_NxZ = velocity(mdl, i, x_NxZ)
      end_NxZ = x_NxZ + dt * v_NxZ
      return x_NxZ + 0.5 * dt * (v_NxZ + velocity(mdl, i + 1, end_NxZ))

    def ab2(mdl, i, carry):
      x_NxZ, last_v_NxZ = carry
      v_NxZ = velocity(mdl, i + 1, x_NxZ)
      return x_NxZ + dt * (1.5 * v_NxZ - 0.5 * last_v_NxZ), v_NxZ

    if self.solver == 'euler':
      return base.loop(self, euler, x_NxZ, S)
    if self.solver == 'heun':
      return euler(self, S - 1, base.loop(self, heun, x_NxZ, S - 1))
    first_v_NxZ = velocity(self, 0, x_NxZ)
    carry = (x_NxZ + dt * first_v_NxZ, first_v_NxZ)
    return base.loop(self, ab2, carry, S - 1)[0]
