"""What the heads share: dense layers with logical axis names, the
adaLN-conditioned residual MLP trunk, the lifted sampling loop, the
temperature check, and the Head base class with its hooks."""

import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentlm.core.errors import UserError


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


def modulation_layer(num, hidden_dim):
  """The zero-initialised dense layer of `num` (N x H) modulations."""
  return dense(num * hidden_dim, 'mlp', None, nn.initializers.zeros_init())


def modulate(layer, c_NxH, num):
  """The `num` modulations `layer` computes from the condition."""
  return jnp.split(layer(nn.silu(c_NxH)), num, axis=-1)


def norm(x_NxH):
  """LayerNorm without scale or bias: the modulations supply both (the
  same numbers as flax's nn.LayerNorm at its default epsilon, and as
  jax.nn.standardize's fast variance). Both moments come from one
  reduction: on CPU each reduction is several runtime ops, and a head runs
  many norms a sample (docs/results/generation_speed.md)."""
  moments_2xNx1 = jnp.mean(jnp.stack([x_NxH, jnp.square(x_NxH)]), axis=-1,
                           keepdims=True)
  mean_Nx1 = moments_2xNx1[0]
  variance_Nx1 = jnp.maximum(moments_2xNx1[1] - jnp.square(mean_Nx1), 0.0)
  return (x_NxH - mean_Nx1) * jax.lax.rsqrt(variance_Nx1 + 1e-6)


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

  def setup(self):
    self.modulation = modulation_layer(3, self.hidden_dim)
    self.up = dense(self.hidden_dim, None, 'mlp')
    self.down = dense(self.hidden_dim, 'mlp', None)

  def modulations(self, c_NxH):
    return modulate(self.modulation, c_NxH, 3)

  def __call__(self, x_NxH, modulations):
    shift, scale, gate = modulations
    y_NxH = norm(x_NxH) * (1 + scale) + shift
    y_NxH = self.down(nn.silu(self.up(y_NxH)))
    return x_NxH + gate * y_NxH


class Trunk(nn.Module):
  """Residual MLP over an input x (noise, a noisy latent) conditioned on h.

  Leading dims of h, x, t and drop broadcast (h is N x 1 x D against N x M x Z
  targets). Without x the stream starts from the condition itself.

  `trunk(h, x, t, drop)` is `stream(modulations(condition(h, t, drop)), x)`.
  A sampler that runs the trunk at S known times calls the parts: the
  conditions and modulations of all S steps in one batch, then S streams: at
  batch 1 one matmul of S rows costs far less than S matmuls of one row, and
  the modulation weights are most of the trunk's.
  """
  hidden_dim: int
  num_layers: int
  input_axis: str | None = 'latent'
  null_condition: bool = False  # a learned "no condition" for guidance

  def setup(self):
    self.cond = dense(self.hidden_dim, 'embed', 'mlp')
    if self.null_condition:
      self.null_cond = self.param(
          'null_cond',
          nn.with_logical_partitioning(nn.initializers.normal(1.0), ('mlp',)),
          (self.hidden_dim,))
    self.time = dense(self.hidden_dim, None, 'mlp')
    self.input = dense(self.hidden_dim, self.input_axis, 'mlp')
    # Named one by one so that the params read block_0, block_1, ...
    for i in range(self.num_layers):
      setattr(self, f'block_{i}', Block(self.hidden_dim))
    self.final_modulation = modulation_layer(2, self.hidden_dim)

  def _blocks(self):
    return [getattr(self, f'block_{i}') for i in range(self.num_layers)]

  def condition(self, h_NxD, t_N=None, drop_N=None):
    """c (N x H) from h, the time t and, for guidance, where h is dropped."""
    c_NxH = self.cond(h_NxD.astype(jnp.float32))
    if drop_N is not None:
      c_NxH = jnp.where(jnp.asarray(drop_N)[..., None], self.null_embedding(),
                        c_NxH)
    if t_N is not None:
      c_NxH = c_NxH + self.time_embedding(t_N)
    return c_NxH

  def time_embedding(self, t_N):
    """The time's term of the condition: N x H."""
    return self.time(time_features(jnp.asarray(t_N), self.hidden_dim))

  def null_embedding(self):
    """The learned "no condition" (H) that stands in for a dropped h."""
    if not self.null_condition:
      raise ValueError('a dropped h needs a Trunk with null_condition=True')
    return self.null_cond

  def modulations(self, c_NxH):
    """Every block's (shift, scale, gate) and the final (shift, scale)."""
    return ([block.modulations(c_NxH) for block in self._blocks()],
            modulate(self.final_modulation, c_NxH, 2))

  def stream(self, modulations, x_NxI=None, start_NxH=None):
    """The residual stream from x (projected by `input`) or, without x, from
    start_NxH (the condition, or x already projected), under the given
    modulations."""
    block_modulations, (shift, scale) = modulations
    x_NxH = start_NxH if x_NxI is None else self.project(x_NxI)
    for block, block_mods in zip(self._blocks(), block_modulations):
      x_NxH = block(x_NxH, block_mods)
    return norm(x_NxH) * (1 + scale) + shift

  def project(self, x_NxI):
    """The input x in the residual stream's width: N x H."""
    return self.input(x_NxI.astype(jnp.float32))

  def __call__(self, h_NxD, x_NxI=None, t_N=None, drop_N=None):
    c_NxH = self.condition(h_NxD, t_N, drop_N)
    return self.stream(self.modulations(c_NxH), x_NxI, c_NxH)


def check_temperature(temperature):
  """A negative Python or NumPy temperature is a caller's bug."""
  if isinstance(temperature, numbers.Real) and temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')


# Sampling loops up to this long are unrolled: at batch 1 on CPU a while
# loop's per-iteration overhead is a large share of a few-step head's
# sampling (docs/results/generation_speed.md).
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


def trunk_weights(head) -> tuple[int, int]:
  """(modulations, blocks): the weights of a Trunk's modulations (3 per
  block, 2 at the end, all reading the condition) and of its blocks' two
  matmuls, for a head config `head` (hidden_dim, num_layers)."""
  H, L = head.hidden_dim, head.num_layers
  return H * H * (3 * L + 2), 2 * H * H * L


class Head(nn.Module):
  """Fields every head has; the default network is a trunk and a Z output.

  A head's fields and their defaults are its dataclass fields: the config's
  `head` holds them (heads.default_head_config). Beside `loss` and `sample`
  a head class declares `check` (what its fields may be), `loss_weights`
  (its FLOPs) and `loss_unit` (the run summary's unit of its loss).
  """
  latent_dim: int
  hidden_dim: int = 256
  num_layers: int = 3
  trunk_input = 'latent'  # logical name of the trunk's input x dim
  trunk_null_condition = False  # classifier-free guidance's "no condition"
  loss_unit = 'per concept'  # what one value of `loss` is
  # Whether `sample`'s draws vary with its rng: rejection sampling (BrierLM's
  # conditions) draws a head that does not just once.
  samples_vary = True

  @classmethod
  def check(cls, fields: dict):
    """Raises a one-line UserError for field values the head cannot take."""
    del fields

  @classmethod
  def loss_weights(cls, head, d_model: int, latent_dim: int,
                   num_targets: int) -> int:
    """The weights the loss multiplies at one position (config `head`, h of
    size d_model, targets num_targets x latent_dim): latentlm.tasks.flops counts
    2 of its FLOPs per weight forward, 6 to train. No default: a head
    priced as another would skew every equal-FLOPs study."""
    del head, d_model, latent_dim, num_targets
    raise UserError('latentlm.tasks.flops has no count for head '
                    f'{cls.__name__}: '
                    f'define {cls.__name__}.loss_weights (see '
                    'latentlm/models/heads/mse.py)')

  def setup(self):
    self.trunk = Trunk(self.hidden_dim, self.num_layers, self.trunk_input,
                       self.trunk_null_condition)
    self.out = dense(self.latent_dim, 'mlp', 'latent')

  def sample_constants(self):
    """What `sample` needs that depends on the params alone, for a sampler
    to compute once and pass to every `sample`; None: nothing."""
    return None

  def out_at_step(self, modulations_S, i, x_NxZ=None, start_NxH=None):
    """The network's output at step i (traced) of modulations_S, for x or
    for a stream start (see Trunk.stream)."""
    modulations = jax.tree.map(lambda m_SxNxH: m_SxNxH[i], modulations_S)
    return self.out(self.trunk.stream(modulations, x_NxZ, start_NxH))


class GuidedHead(Head):
  """A head with classifier-free guidance: trained with h dropped to a
  learned null condition with probability cond_dropout, sampled with the
  outputs mixed as uncond + guidance_scale * (cond - uncond).

  The guided sampler runs both conditions in one stream of 2N rows per step:
  one set of ops a step, not two.
  """
  # Off by default: no null condition, so runs trained before guidance load.
  guidance_scale: float = 1.0
  cond_dropout: float = 0.0

  @classmethod
  def check(cls, fields: dict):
    if not 0 <= fields['cond_dropout'] < 1:
      raise UserError('head.cond_dropout must be in [0, 1)')
    if fields['guidance_scale'] != 1.0 and fields['cond_dropout'] == 0:
      raise UserError('head.guidance_scale needs a null condition to guide '
                      'from: train with head.cond_dropout > 0 (e.g. 0.1)')

  @classmethod
  def loss_weights(cls, head, d_model, latent_dim, num_targets):
    """A stream per target, whose condition adds the time (features -> H),
    so its modulations run per target too."""
    H, Z = head.hidden_dim, latent_dim
    modulations, blocks = trunk_weights(head)
    stream = H * H + modulations + Z * H + blocks + H * Z
    return d_model * H + num_targets * stream

  @property
  def trunk_null_condition(self):
    return self.cond_dropout > 0

  @property
  def guided(self):
    return self.guidance_scale != 1.0

  def dropped(self, rng, shape):
    """Where training drops h (None without dropout)."""
    if not self.trunk_null_condition:
      return None
    return jax.random.bernoulli(rng, self.cond_dropout, shape)

  def step_times(self):
    """The S times at which the sampler runs the network: S."""
    raise NotImplementedError

  def sample_constants(self):
    """What the sampler's steps need that depends on the params alone: the
    time embedding of each step (S x H) and, when guided, the null
    condition's modulations at each step (leaves S x H). A sampler that
    samples many times computes them once (ConceptSampler) and passes them
    to `sample`: at batch 1 on CPU a matmul costs its rows, and the null
    condition's were half of the modulations' rows."""
    time_SxH = self.trunk.time_embedding(self.step_times())
    if not self.guided:
      return dict(time=time_SxH)
    return dict(time=time_SxH, null=self.trunk.modulations(
        self.trunk.null_embedding() + time_SxH))

  def guided_step_modulations(self, h_NxD, constants=None):
    """The trunk's modulations at each step time, all computed in one
    batch (see Trunk), leaves S x N x H; when guided, the conditional rows
    then the null condition's (S x 2N x H). `constants`: sample_constants,
    computed here when not given."""
    if constants is None:
      constants = self.sample_constants()
    c_SxNxH = self.trunk.condition(h_NxD)[None] + constants['time'][:, None]
    modulations_S = self.trunk.modulations(c_SxNxH)
    if not self.guided:
      return modulations_S
    return jax.tree.map(
        lambda cond_SxNxH, null_SxH: jnp.concatenate(
            [cond_SxNxH, jnp.broadcast_to(null_SxH[:, None],
                                          cond_SxNxH.shape)], axis=1),
        modulations_S, constants['null'])

  def guided_out_at_step(self, modulations_S, i, x_NxZ):
    """out_at_step, mixed by the guidance scale when guided."""
    if not self.guided:
      return self.out_at_step(modulations_S, i, x_NxZ)
    # Both conditions start from the same x: project it once, as at batch 1
    # a matmul costs its rows (docs/results/generation_speed.md).
    x_NxH = self.trunk.project(x_NxZ)
    out_2NxZ = self.out_at_step(modulations_S, i,
                                start_NxH=jnp.concatenate([x_NxH, x_NxH]))
    cond_NxZ, uncond_NxZ = jnp.split(out_2NxZ, 2)
    return uncond_NxZ + self.guidance_scale * (cond_NxZ - uncond_NxZ)
