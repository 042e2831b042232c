"""Generative heads: p(z_next | h) for a latent z of size Z, given a hidden h.

Every head is a Linen module used through `module.apply(..., method=...)`:

  loss(h_NxD, z_NxMxZ, rng) -> loss_N   float32 per-position loss against
                                         M >= 1 target samples (heads that
                                         score one target average over M)
  sample(h_NxD, rng, temperature) -> z_NxZ

Initialise with `method='loss'`: it creates every parameter `sample` uses.

Temperature: >= 0, where 0 is the deterministic limit (energy, flow and
diffusion start from zero noise; gmm takes its most likely component's mean).
A negative Python or NumPy temperature raises ValueError in every head, mse
included (which ignores the value), so a caller's bug does not depend on the
head; a traced temperature is not checked.

Heads compute in float32 whatever the backbone's dtype: they are small, and
their losses and likelihoods need the precision. Params carry logical axis
names: 'embed' for h's dim, 'mlp' for hidden dims (each kernel shards one dim,
Megatron style, so the residual stream stays whole), 'latent' for Z dims.
"""

import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from latentlm import config_lib
from latentlm.errors import UserError

_SHARED = dict(hidden_dim=256, num_layers=3)
_DEFAULTS = {
    'mse': {},
    # CALM: 8 model samples per position for the pairwise term.
    'energy': dict(num_samples=8, noise_dim=64),
    'flow': dict(num_steps=10),  # Euler steps when sampling
    # LCM samples with 40 DDIM steps and guidance 3; 1 is plain conditional.
    'diffusion': dict(num_steps=1000, sample_steps=40, guidance_scale=1.0,
                      cond_dropout=0.1),
    'gmm': dict(num_components=8, min_std=1e-3),
}


def _dense(features, in_axis, out_axis, kernel_init=None, bias_init=None,
           name=None):
  kernel_init = kernel_init or nn.initializers.lecun_normal()
  bias_init = bias_init or nn.initializers.zeros_init()
  return nn.Dense(
      features, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init,
                                               (in_axis, out_axis)),
      bias_init=nn.with_logical_partitioning(bias_init, (out_axis,)))


def _modulation(c_NxH, num, name):
  """`num` zero-initialised (N x H) modulations computed from the condition."""
  hidden_dim = c_NxH.shape[-1]
  m = _dense(num * hidden_dim, 'mlp', None, nn.initializers.zeros_init(),
             name=name)(nn.silu(c_NxH))
  return jnp.split(m, num, axis=-1)


def _norm(x_NxH):
  return nn.LayerNorm(use_scale=False, use_bias=False)(x_NxH)


def _time_features(t_N, dim):
  """Sinusoidal features of t in [0, 1], as in DiT's timestep embedding."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
  angles_NxF = 1000.0 * t_N[..., None] * freqs
  return jnp.concatenate([jnp.cos(angles_NxF), jnp.sin(angles_NxF)], axis=-1)


class _Block(nn.Module):
  """Residual MLP block with adaLN-Zero conditioning (DiT, MAR's MLP head).

  Modulating every block lets h and the time reach the whole depth, where a
  concatenation at the input would have to survive it; the zero-initialised
  gate makes each block start as the identity.
  """
  hidden_dim: int

  @nn.compact
  def __call__(self, x_NxH, c_NxH):
    shift, scale, gate = _modulation(c_NxH, 3, 'modulation')
    y_NxH = _norm(x_NxH) * (1 + scale) + shift
    y_NxH = nn.silu(_dense(self.hidden_dim, None, 'mlp', name='up')(y_NxH))
    y_NxH = _dense(self.hidden_dim, 'mlp', None, name='down')(y_NxH)
    return x_NxH + gate * y_NxH


class _Trunk(nn.Module):
  """Residual MLP over an input x (noise, a noisy latent) conditioned on h.

  Leading dims of h, x, t and drop broadcast (h is N x 1 x D against N x M x Z
  targets). Without x the stream starts from the condition itself.
  """
  hidden_dim: int
  num_layers: int
  input_axis: str | None = 'latent'

  @nn.compact
  def __call__(self, h_NxD, x_NxI=None, t_N=None, drop_N=None):
    h_NxD = h_NxD.astype(jnp.float32)
    c_NxH = _dense(self.hidden_dim, 'embed', 'mlp', name='cond')(h_NxD)
    if drop_N is not None:
      # Classifier-free guidance: a learned "no condition" stands in for h.
      null_H = self.param(
          'null_cond',
          nn.with_logical_partitioning(nn.initializers.normal(1.0), ('mlp',)),
          (self.hidden_dim,))
      c_NxH = jnp.where(jnp.asarray(drop_N)[..., None], null_H, c_NxH)
    if t_N is not None:
      c_NxH = c_NxH + _dense(self.hidden_dim, None, 'mlp', name='time')(
          _time_features(t_N, self.hidden_dim))
    if x_NxI is None:
      x_NxH = c_NxH
    else:
      x_NxH = _dense(self.hidden_dim, self.input_axis, 'mlp', name='input')(
          x_NxI.astype(jnp.float32))
    for i in range(self.num_layers):
      x_NxH = _Block(self.hidden_dim, name=f'block_{i}')(x_NxH, c_NxH)
    shift, scale = _modulation(c_NxH, 2, 'final_modulation')
    return _norm(x_NxH) * (1 + scale) + shift


def _check_temperature(temperature):
  if isinstance(temperature, numbers.Real) and temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')


def _loop(module, step_fn, x, num_steps):
  """x = step_fn(module, i, x) for i < num_steps, as one lifted while loop.

  One traced step, so compile time does not grow with the number of steps.
  """
  def body(mdl, carry):
    i, x = carry
    return i + 1, step_fn(mdl, i, x)
  carry = (jnp.asarray(0, jnp.int32), x)
  return nn.while_loop(lambda mdl, c: c[0] < num_steps, body, module, carry)[1]


class _Head(nn.Module):
  """Fields every head has; the default network is a trunk and a Z output."""
  latent_dim: int
  hidden_dim: int
  num_layers: int
  trunk_input = 'latent'  # logical name of the trunk's input x dim

  def setup(self):
    self.trunk = _Trunk(self.hidden_dim, self.num_layers, self.trunk_input)
    self.out = _dense(self.latent_dim, 'mlp', 'latent')


class MSEHead(_Head):
  """Regresses the next vector (Base-LCM): the mean of the targets.

  The loss is the squared error averaged over Z and M. `sample` returns the
  prediction: there is no distribution, so rng and temperature are unused.
  """

  def predict(self, h_NxD):
    return self.out(self.trunk(h_NxD))

  def loss(self, h_NxD, z_NxMxZ, rng):
    del rng
    pred_Nx1xZ = self.predict(h_NxD)[:, None]
    return jnp.mean(jnp.square(z_NxMxZ.astype(jnp.float32) - pred_Nx1xZ),
                    axis=(1, 2))

  def sample(self, h_NxD, rng, temperature=1.0):
    del rng
    _check_temperature(temperature)
    return self.predict(h_NxD)


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


class EnergyHead(_Head):
  """CALM's energy head: a generator maps (h, noise) to a sample in one step.

  Noise is uniform in [-1/2, 1/2]^noise_dim as in CALM. Temperature scales the
  noise: a heuristic, since nothing trains the generator to map smaller noise
  to a sharper distribution; 0 gives one deterministic vector per h.
  """
  num_samples: int = 8
  noise_dim: int = 64
  trunk_input = None  # noise

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
    _check_temperature(temperature)
    return self.sample_many(h_NxD, rng, 1, temperature)[:, 0]


class FlowHead(_Head):
  """Conditional flow matching on the linear path (rectified flow).

  x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) and x1 the target; the network
  regresses the velocity x1 - x0. Sampling integrates it with num_steps Euler
  steps from t=0; temperature scales the initial noise.
  """
  num_steps: int = 10

  def velocity(self, x_NxZ, h_NxD, t_N):
    return self.out(self.trunk(h_NxD, x_NxZ, t_N))

  def loss(self, h_NxD, z_NxMxZ, rng):
    x1_NxMxZ = z_NxMxZ.astype(jnp.float32)
    t_rng, noise_rng = jax.random.split(rng)
    t_NxM = jax.random.uniform(t_rng, x1_NxMxZ.shape[:2])
    x0_NxMxZ = jax.random.normal(noise_rng, x1_NxMxZ.shape)
    xt_NxMxZ = x0_NxMxZ + t_NxM[..., None] * (x1_NxMxZ - x0_NxMxZ)
    v_NxMxZ = self.velocity(xt_NxMxZ, h_NxD[:, None], t_NxM)
    return jnp.mean(jnp.square(v_NxMxZ - (x1_NxMxZ - x0_NxMxZ)), axis=(1, 2))

  def sample(self, h_NxD, rng, temperature=1.0):
    _check_temperature(temperature)
    x_NxZ = temperature * jax.random.normal(
        rng, (h_NxD.shape[0], self.latent_dim))
    dt = 1.0 / self.num_steps

    def euler(mdl, i, x_NxZ):
      return x_NxZ + dt * mdl.velocity(x_NxZ, h_NxD, i * dt)
    return _loop(self, euler, x_NxZ, self.num_steps)


def cosine_alpha_bar(t):
  """Signal fraction alpha_bar(t), t in [0, 1] (Nichol & Dhariwal 2021)."""
  offset = 0.008
  f = lambda u: jnp.cos((u + offset) / (1 + offset) * jnp.pi / 2) ** 2
  return jnp.clip(f(t) / f(0.0), 0.0, 1.0)


class DiffusionHead(_Head):
  """x0-prediction diffusion (LCM, MAR) with DDIM sampling and CFG.

  Trains on num_steps discrete timesteps of a cosine schedule, dropping h to a
  learned null condition with probability cond_dropout. Samples with
  sample_steps deterministic DDIM steps (eta=0), mixing the x0 predictions as
  uncond + guidance_scale * (cond - uncond); temperature scales the initial
  noise.
  """
  num_steps: int = 1000
  sample_steps: int = 40
  guidance_scale: float = 1.0
  cond_dropout: float = 0.1

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
    drop_NxM = jax.random.bernoulli(drop_rng, self.cond_dropout, shape_NxM)
    pred_NxMxZ = self.denoise(xt_NxMxZ, h_NxD[:, None], t_NxM, drop_NxM)
    return jnp.mean(jnp.square(pred_NxMxZ - x0_NxMxZ), axis=(1, 2))

  def sample(self, h_NxD, rng, temperature=1.0):
    _check_temperature(temperature)
    x_NxZ = temperature * jax.random.normal(
        rng, (h_NxD.shape[0], self.latent_dim))

    def ddim(mdl, i, x_NxZ):
      t = 1.0 - i / self.sample_steps
      t_next = 1.0 - (i + 1) / self.sample_steps
      x0_NxZ = mdl.denoise(x_NxZ, h_NxD, t, False)
      if self.guidance_scale != 1.0:
        x0_uncond_NxZ = mdl.denoise(x_NxZ, h_NxD, t, True)
        x0_NxZ = x0_uncond_NxZ + self.guidance_scale * (x0_NxZ - x0_uncond_NxZ)
      alpha_bar, alpha_bar_next = cosine_alpha_bar(t), cosine_alpha_bar(t_next)
      eps_NxZ = (x_NxZ - jnp.sqrt(alpha_bar) * x0_NxZ) / jnp.sqrt(1 - alpha_bar)
      return jnp.sqrt(alpha_bar_next) * x0_NxZ + jnp.sqrt(
          1 - alpha_bar_next) * eps_NxZ
    return _loop(self, ddim, x_NxZ, self.sample_steps)


class GMMHead(_Head):
  """Mixture of diagonal Gaussians (GIVT) with an exact likelihood in nats.

  The output kernels start at zero (GIVT), so every position starts from the
  same mixture; the means' biases start random, as identical components would
  receive identical gradients and never separate. Temperature T divides the
  mixture logits and multiplies the stds; T=0 returns the most likely
  component's mean.
  """
  num_components: int = 8
  min_std: float = 1e-3

  def setup(self):
    k, z = self.num_components, self.latent_dim
    zeros = nn.initializers.zeros_init()
    self.trunk = _Trunk(self.hidden_dim, self.num_layers)
    self.logits_out = _dense(k, 'mlp', None, zeros)
    self.mean_out = _dense(k * z, 'mlp', 'latent', zeros,
                           nn.initializers.normal(1.0))
    self.std_out = _dense(k * z, 'mlp', 'latent', zeros)

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
    _check_temperature(temperature)
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


HEADS = {'mse': MSEHead, 'energy': EnergyHead, 'flow': FlowHead,
         'diffusion': DiffusionHead, 'gmm': GMMHead}


def _check_name(name):
  if name not in HEADS:
    raise UserError(f'unknown head {name!r}; choose one of {sorted(HEADS)}'
                    f'{config_lib.suggest(name, HEADS)}')


def default_head_config(name: str) -> ml_collections.ConfigDict:
  """Every field of head `name`, with its defaults."""
  _check_name(name)
  return ml_collections.ConfigDict(dict(name=name, **_SHARED,
                                        **_DEFAULTS[name]))


def make_head(head_config, latent_dim: int) -> nn.Module:
  """The head `head_config.name` over latents of size latent_dim.

  Fields the config leaves out take their defaults, and fields of other heads
  are ignored, so switching `name` alone on the command line works; a field no
  head knows is an error.
  """
  _check_name(head_config['name'])
  fields = default_head_config(head_config['name']).to_dict()
  known = set(_SHARED).union(*_DEFAULTS.values(), ['name'])
  for key, value in head_config.items():
    if key not in known:
      raise UserError(f'unknown head config key {key!r}'
                      f'{config_lib.suggest(key, known)}')
    if key in fields:
      fields[key] = value
  name = fields.pop('name')
  if name == 'energy' and fields['num_samples'] < 2:
    raise UserError('head.num_samples must be >= 2 for the energy score')
  if name == 'diffusion' and not 1 <= fields['sample_steps'] <= fields[
      'num_steps']:
    raise UserError('head.sample_steps must be in [1, head.num_steps]')
  if name == 'diffusion' and not 0 <= fields['cond_dropout'] < 1:
    raise UserError('head.cond_dropout must be in [0, 1)')
  return HEADS[name](latent_dim=latent_dim, **fields)
