"""Pre-norm transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU.

One stack serves the token LM, the concept encoder (bidirectional, with a key
padding mask) and the concept autoregressor (causal, KV-cached decoding).
Params are float32 and carry logical axis names for latentlm.core.sharding; compute
runs in `config.dtype`, attention logits and softmax in float32.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from latentlm.core import config_lib
from latentlm.core.errors import UserError

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DTYPES = ('float32', 'bfloat16')
# Vocab-sized params are padded to a multiple of this, so that the vocab axis
# splits evenly over the mesh (259 bytes do not split over tensor=2).
VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Backbone hyperparameters; the fields of configs/token_lm.py `model`."""
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  vocab_size: int
  max_len: int
  rope_base: float = 10000.0
  norm_eps: float = 1e-6
  scan_layers: bool = True
  remat_policy: str = 'none'  # none | full | dots
  dtype: str = 'float32'  # compute dtype; params stay float32
  tie_embeddings: bool = False
  causal: bool = True

  def __post_init__(self):
    config_lib.choose('remat_policy', self.remat_policy, REMAT_POLICIES)
    config_lib.choose('dtype', self.dtype, DTYPES)
    if self.num_heads % self.num_kv_heads:
      raise UserError(f'num_kv_heads={self.num_kv_heads} must divide '
                      f'num_heads={self.num_heads}')
    if self.head_dim % 2:
      raise UserError(f'head_dim={self.head_dim} must be even for RoPE')

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides):
    """From a ConfigDict or dict; unknown keys are an error, not ignored."""
    values = dict(config.items(), **overrides)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
      if key not in fields:
        raise UserError(f'unknown transformer config key {key!r}'
                        f'{config_lib.suggest(key, fields)}')
    for name, field in fields.items():
      if name not in values and field.default is dataclasses.MISSING:
        raise UserError(f'transformer config is missing {name!r}')
    return cls(**values)

  @classmethod
  def default_fields(cls) -> dict:
    """The fields a config may leave to their defaults (rope_base, norm_eps,
    scan_layers, ...), in field order: configs take them from here, their
    one source. `causal` is the model's to set, never a config's."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING and f.name != 'causal'}

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer; `index` positions are filled."""
  k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
  v: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
  index: jax.Array  # int32 scalar


def init_cache(cfg: TransformerConfig, batch_size: int,
               max_len: int | None = None, dtype=None) -> KVCache:
  """An empty cache; decoding past `max_len` positions is not checked."""
  shape = (cfg.num_layers, batch_size, max_len or cfg.max_len,
           cfg.num_kv_heads, cfg.head_dim)
  dtype = dtype or cfg.compute_dtype
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 index=jnp.zeros((), jnp.int32))


def unrolled_layers(model: nn.Module, params):
  """(model, params) computing the same function with the layer scan
  unrolled: one param subtree per layer. `model` is a module with a
  TransformerConfig `cfg` and its block stack at params['transformer'].

  For decoding on CPU, where at every step a scanned stack copies each
  layer's weights out of the stacked arrays (a dynamic slice feeding a
  matmul): unrolled, batch-1 token and concept LMs step faster, with the
  same samples (docs/results/generation_speed.md). The per-layer arrays are
  a second copy of the stack's weights while the caller keeps the stacked
  ones.
  """
  cfg = model.cfg
  if not cfg.scan_layers:
    return model, params
  stack = dict(params['transformer'])
  layers = stack.pop('layers')
  for i in range(cfg.num_layers):
    stack[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], layers)
  return (model.clone(cfg=dataclasses.replace(cfg, scan_layers=False)),
          {**params, 'transformer': stack})


def for_decoding(model: nn.Module, params, unroll_layers: bool | None = None):
  """The (model, params) a sampler decodes with: unrolled_layers when
  `unroll_layers`, by default on CPU, where it was measured to pay
  (docs/results/generation_speed.md). On accelerators the stack stays
  scanned, one copy of the weights."""
  if unroll_layers is None:
    unroll_layers = jax.default_backend() == 'cpu'
  return unrolled_layers(model, params) if unroll_layers else (model, params)


def param_count(params) -> int:
  """Number of scalars in a (possibly boxed or abstract) param tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def fan_in_init(in_axis=-2, out_axis=-1, scale=1.0):
  """Truncated normal with variance scale/fan_in."""
  return nn.initializers.variance_scaling(
      scale, 'fan_in', 'truncated_normal', in_axis=in_axis, out_axis=out_axis)


def declare(module: nn.Module, name: str, init, shape, axes):
  """A float32 param annotated with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                      jnp.float32)


def apply_rope(x_BxLxHxK, positions, base: float):
  """Rotates feature pairs (i, i + K/2) by angle position * base^(-2i/K).

  `positions` broadcasts against [B, L] (e.g. shape [L] or [B, L]).
  """
  half = x_BxLxHxK.shape[-1] // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  sin, cos = jnp.sin(angle)[..., None, :], jnp.cos(angle)[..., None, :]
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return rotated.astype(x_BxLxHxK.dtype)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxLxD):
    scale_D = declare(self, 'scale', nn.initializers.ones,
                      (x_BxLxD.shape[-1],), ('embed',))
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * scale_D).astype(self.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention; query head h reads kv head h // group."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, index, mask_BxL, kv):
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    D, H, N, K = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    B, L, _ = x_BxLxD.shape
    in_init = fan_in_init(in_axis=0, out_axis=(1, 2))
    w_q = declare(self, 'query', in_init, (D, H, K),
                  ('embed', 'heads', 'head_dim'))
    w_k = declare(self, 'key', in_init, (D, N, K),
                  ('embed', 'kv_heads', 'head_dim'))
    w_v = declare(self, 'value', in_init, (D, N, K),
                  ('embed', 'kv_heads', 'head_dim'))
    w_o = declare(self, 'out', fan_in_init((0, 1), 2, 0.5 / cfg.num_layers),
                  (H, K, D), ('heads', 'head_dim', 'embed'))

    positions_L = index + jnp.arange(L)
    q_BxLxHxK = jnp.einsum('BLD,DHK->BLHK', x_BxLxD, w_q.astype(dtype))
    k_BxLxNxK = jnp.einsum('BLD,DNK->BLNK', x_BxLxD, w_k.astype(dtype))
    v_BxLxNxK = jnp.einsum('BLD,DNK->BLNK', x_BxLxD, w_v.astype(dtype))
    q_BxLxHxK = nn.with_logical_constraint(
        apply_rope(q_BxLxHxK, positions_L, cfg.rope_base),
        ('batch', 'seq', 'heads', 'head_dim'))
    k_BxLxNxK = apply_rope(k_BxLxNxK, positions_L, cfg.rope_base)

    if kv is None:  # Keys are this block's positions.
      k_BxSxNxK, v_BxSxNxK = k_BxLxNxK, v_BxLxNxK
    else:  # Write the new positions at `index`; read the whole cache.
      k_BxSxNxK, v_BxSxNxK = (
          jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), index, 1)
          for c, new in zip(kv, (k_BxLxNxK, v_BxLxNxK)))
      kv = (k_BxSxNxK, v_BxSxNxK)
      k_BxSxNxK, v_BxSxNxK = k_BxSxNxK.astype(dtype), v_BxSxNxK.astype(dtype)
    kv_axes = ('batch', 'seq', 'kv_heads', 'head_dim')
    k_BxSxNxK = nn.with_logical_constraint(k_BxSxNxK, kv_axes)
    v_BxSxNxK = nn.with_logical_constraint(v_BxSxNxK, kv_axes)

    key_positions_S = jnp.arange(k_BxSxNxK.shape[1])
    if cfg.causal:
      allowed_LxS = key_positions_S[None, :] <= positions_L[:, None]
    else:  # Every filled position.
      allowed_LxS = jnp.broadcast_to(key_positions_S < index + L,
                                     (L, key_positions_S.shape[0]))
    allowed_BxLxS = allowed_LxS[None]
    if mask_BxL is not None:
      allowed_BxLxS = allowed_BxLxS & mask_BxL[:, None, :]

    # Heads-major, a kv head's G query heads stacked along the query
    # positions (M = G x L): XLA:CPU runs these 4-D batched matmuls faster
    # than the same einsums over the B x L x heads layout
    # (docs/results/throughput.md); on TPU XLA picks the layout.
    G = H // N
    q_BxNxMxK = q_BxLxHxK.reshape(B, L, N, G, K).transpose(
        0, 2, 3, 1, 4).reshape(B, N, G * L, K)
    k_BxNxSxK = k_BxSxNxK.transpose(0, 2, 1, 3)
    v_BxNxSxK = v_BxSxNxK.transpose(0, 2, 1, 3)
    logits_BxNxMxS = jnp.einsum(
        'BNMK,BNSK->BNMS', q_BxNxMxK, k_BxNxSxK,
        preferred_element_type=jnp.float32) * K ** -0.5
    allowed_BxMxS = jnp.tile(allowed_BxLxS, (1, G, 1))
    logits_BxNxMxS = jnp.where(allowed_BxMxS[:, None], logits_BxNxMxS,
                               jnp.finfo(jnp.float32).min)
    probs_BxNxMxS = jax.nn.softmax(logits_BxNxMxS, axis=-1).astype(dtype)
    out_BxNxGxLxK = jnp.einsum('BNMS,BNSK->BNMK', probs_BxNxMxS,
                               v_BxNxSxK).reshape(B, N, G, L, K)
    y_BxLxD = jnp.einsum('BNGLK,NGKD->BLD', out_BxNxGxLxK,
                         w_o.reshape(N, G, K, D).astype(dtype))
    return y_BxLxD, kv


class Mlp(nn.Module):
  """SwiGLU: (silu(x W_gate) * x W_up) W_down."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    D, F = cfg.d_model, cfg.mlp_dim
    w_gate = declare(self, 'gate', fan_in_init(), (D, F), ('embed', 'mlp'))
    w_up = declare(self, 'up', fan_in_init(), (D, F), ('embed', 'mlp'))
    w_down = declare(self, 'down', fan_in_init(scale=0.5 / cfg.num_layers),
                     (F, D), ('mlp', 'embed'))
    gate_BxLxF = jnp.einsum('BLD,DF->BLF', x_BxLxD, w_gate.astype(dtype))
    up_BxLxF = jnp.einsum('BLD,DF->BLF', x_BxLxD, w_up.astype(dtype))
    h_BxLxF = nn.with_logical_constraint(nn.silu(gate_BxLxF) * up_BxLxF,
                                         ('batch', 'seq', 'mlp'))
    return jnp.einsum('BLF,FD->BLD', h_BxLxF, w_down.astype(dtype))


class Block(nn.Module):
  """Pre-norm residual block; returns the updated (k, v) of this layer."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, kv, index, mask_BxL):
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    axes = ('batch', 'seq', 'act_embed')
    h_BxLxD = RMSNorm(cfg.norm_eps, dtype, name='attn_norm')(x_BxLxD)
    h_BxLxD, kv = Attention(cfg, name='attn')(h_BxLxD, index, mask_BxL, kv)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD + h_BxLxD, axes)
    h_BxLxD = RMSNorm(cfg.norm_eps, dtype, name='mlp_norm')(x_BxLxD)
    x_BxLxD = nn.with_logical_constraint(
        x_BxLxD + Mlp(cfg, name='mlp')(h_BxLxD), axes)
    return x_BxLxD, kv


class Transformer(nn.Module):
  """The block stack (no final norm): x_BxLxD -> (y_BxLxD, new cache or None).

  `mask_BxL` marks valid key positions (padding is False); it is not supported
  together with a cache. With a cache, the L new positions are written at
  `cache.index` and attend to every filled position (causally if cfg.causal).
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_BxL=None, cache: KVCache | None = None):
    cfg = self.cfg
    if cache is not None and mask_BxL is not None:
      raise ValueError('a key padding mask is not supported with a KV cache')
    index = jnp.zeros((), jnp.int32) if cache is None else cache.index
    kv = None if cache is None else (cache.k, cache.v)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD.astype(cfg.compute_dtype),
                                         ('batch', 'seq', 'act_embed'))

    block = Block
    if cfg.remat_policy != 'none':
      block = nn.remat(block, prevent_cse=not cfg.scan_layers,
                       policy=REMAT_POLICIES[cfg.remat_policy])
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0},
                      split_rngs={'params': True},
                      in_axes=(0, nn.broadcast, nn.broadcast),
                      length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxLxD, kv = stack(cfg, name='layers')(x_BxLxD, kv, index, mask_BxL)
    else:
      new_kv = []
      for i in range(cfg.num_layers):
        layer_kv = None if kv is None else (kv[0][i], kv[1][i])
        x_BxLxD, layer_kv = block(cfg, name=f'layers_{i}')(
            x_BxLxD, layer_kv, index, mask_BxL)
        new_kv.append(layer_kv)
      kv = None if kv is None else tuple(map(jnp.stack, zip(*new_kv)))

    if cache is None:
      return x_BxLxD, None
    return x_BxLxD, KVCache(k=kv[0], v=kv[1], index=index + x_BxLxD.shape[1])
