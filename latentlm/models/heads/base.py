"""What the heads share: dense layers with logical axis names, the
adaLN-conditioned residual MLP trunk, the lifted sampling loop and the
temperature check."""

import math
import numbers

import flax.linen as nn
import jax.numpy as jnp


def dense(features, in_axis, out_axis, kernel_init=None, bias_init=None,
          name=None):
  """nn.Dense whose kernel and bias carry logical axis names."""
  kernel_init = kernel_init or nn.initializers.lecun_normal()
  bias_init = bias_init or nn.initializers.zeros_init()
  return nn.Dense(
      features, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init,
                                               (in_axis, out_axis)),
      bias_init=nn.with_logical_partitioning(bias_init, (out_axis,)))


def modulation(c_NxH, num, name):
  """`num` zero-initialised (N x H) modulations computed from the condition."""
  hidden_dim = c_NxH.shape[-1]
  m = dense(num * hidden_dim, 'mlp', None, nn.initializers.zeros_init(),
             name=name)(nn.silu(c_NxH))
  return jnp.split(m, num, axis=-1)


def norm(x_NxH):
  """LayerNorm without scale or bias: the modulations supply both."""
  return nn.LayerNorm(use_scale=False, use_bias=False)(x_NxH)


def time_features(t_N, dim):
  """Sinusoidal features of t in [0, 1], as in DiT's timestep embedding."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
  angles_NxF = 1000.0 * t_N[..., None] * freqs
  return jnp.concatenate([jnp.cos(angles_NxF), jnp.sin(angles_NxF)], axis=-1)


class Block(nn.Module):
  """Residual MLP block with adaLN-Zero conditioning (DiT, MAR's MLP head).

  Modulating every block lets h and the time reach the whole depth, where a
  concatenation at the input would have to survive it; the zero-initialised
  gate makes each block start as the identity.
  """
  hidden_dim: int

  @nn.compact
  def __call__(self, x_NxH, c_NxH):
    shift, scale, gate = modulation(c_NxH, 3, 'modulation')
    y_NxH = norm(x_NxH) * (1 + scale) + shift
    y_NxH = nn.silu(dense(self.hidden_dim, None, 'mlp', name='up')(y_NxH))
    y_NxH = dense(self.hidden_dim, 'mlp', None, name='down')(y_NxH)
    return x_NxH + gate * y_NxH


class Trunk(nn.Module):
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
    c_NxH = dense(self.hidden_dim, 'embed', 'mlp', name='cond')(h_NxD)
    if drop_N is not None:
      # Classifier-free guidance: a learned "no condition" stands in for h.
      null_H = self.param(
          'null_cond',
          nn.with_logical_partitioning(nn.initializers.normal(1.0), ('mlp',)),
          (self.hidden_dim,))
      c_NxH = jnp.where(jnp.asarray(drop_N)[..., None], null_H, c_NxH)
    if t_N is not None:
      c_NxH = c_NxH + dense(self.hidden_dim, None, 'mlp', name='time')(
          time_features(t_N, self.hidden_dim))
    if x_NxI is None:
      x_NxH = c_NxH
    else:
      x_NxH = dense(self.hidden_dim, self.input_axis, 'mlp', name='input')(
          x_NxI.astype(jnp.float32))
    for i in range(self.num_layers):
      x_NxH = Block(self.hidden_dim, name=f'block_{i}')(x_NxH, c_NxH)
    shift, scale = modulation(c_NxH, 2, 'final_modulation')
    return norm(x_NxH) * (1 + scale) + shift


def check_temperature(temperature):
  """A negative Python or NumPy temperature is a caller's bug."""
  if isinstance(temperature, numbers.Real) and temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')


# Sampling loops up to this long are unrolled: at batch 1 on CPU a while
# loop's per-iteration overhead was ~20% of a 10-step flow head's sampling.
MAX_UNROLLED_STEPS = 16


def loop(module, step_fn, x, num_steps):
  """x = step_fn(module, i, x) for i < num_steps (i a traced int32).

  Unrolled up to MAX_UNROLLED_STEPS; longer loops are one lifted while loop,
  so that compile time does not grow with the number of steps.
  """
  if num_steps <= MAX_UNROLLED_STEPS:
    for i in range(num_steps):
      x = step_fn(module, jnp.asarray(i, jnp.int32), x)
    return x

  def body(mdl, carry):
    i, x = carry
    return i + 1, step_fn(mdl, i, x)
  carry = (jnp.asarray(0, jnp.int32), x)
  return nn.while_loop(lambda mdl, c: c[0] < num_steps, body, module, carry)[1]


class Head(nn.Module):
  """Fields every head has; the default network is a trunk and a Z output."""
  latent_dim: int
  hidden_dim: int
  num_layers: int
  trunk_input = 'latent'  # logical name of the trunk's input x dim

  def setup(self):
    self.trunk = Trunk(self.hidden_dim, self.num_layers, self.trunk_input)
    self.out = dense(self.latent_dim, 'mlp', 'latent')
