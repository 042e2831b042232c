"""Stage-1 concept autoencoder: a chunk of K tokens <-> a latent vector z.

The encoder maps tokens_BxK to a diagonal Gaussian posterior over z_BxZ (mean
and log-std); two kinds, by name: 'mlp' (CALM: no attention, per-token MLPs,
flatten, per-chunk MLPs) and 'transformer' (a bidirectional stack over the
chunk with a key padding mask, mean-pooled). The decoder predicts all K tokens
in parallel from z, pads included, so a short chunk decodes to its exact
length. The robust-latent training (KL weight and free bits, z dropout, noise
on z) lives in the autoencoder task, not here.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.data.tokenizers import ByteTokenizer
from latentlm.models import transformer
from latentlm.models.transformer import declare, fan_in_init

ENCODERS = ('mlp', 'transformer')


def default_autoencoder_model_config() -> ml_collections.ConfigDict:
  """The `model` fields of an autoencoder config (CALM-like, CPU-sized)."""
  c = ml_collections.ConfigDict()
  c.encoder = 'mlp'  # 'mlp' (CALM, no attention) | 'transformer'
  c.chunk_len = 4  # K tokens per concept (CALM: 4)
  c.latent_dim = 128  # Dz (CALM: 128)
  c.d_model = 256
  c.mlp_dim = 768
  c.num_layers = 2  # residual MLP blocks per stage, or transformer layers
  c.num_heads = 4  # 'transformer' encoder only
  c.vocab_size = ByteTokenizer.vocab_size
  c.pad_id = ByteTokenizer.pad_id
  c.token_mask_prob = 0.15  # input tokens replaced by a MASK embedding (CALM)
  c.norm_eps = 1e-6
  c.dtype = 'float32'  # compute dtype; params and latents stay float32
  return c


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """The fields of default_autoencoder_model_config(), validated."""
  encoder: str
  chunk_len: int
  latent_dim: int
  d_model: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  vocab_size: int
  pad_id: int
  token_mask_prob: float
  norm_eps: float
  dtype: str

  def __post_init__(self):
    config_lib.choose('encoder', self.encoder, ENCODERS)
    if not 0.0 <= self.token_mask_prob < 1.0:
      raise UserError(f'token_mask_prob={self.token_mask_prob} must be in '
                      '[0, 1)')
    if self.d_model % self.num_heads:
      raise UserError(f'num_heads={self.num_heads} must divide '
                      f'd_model={self.d_model}')

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'AutoencoderConfig':
    """From a ConfigDict or dict; unknown or missing keys are an error."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in config:
      if key not in names:
        raise UserError(f'unknown autoencoder config key {key!r}'
                        f'{config_lib.suggest(key, names)}')
    missing = [name for name in names if name not in config]
    if missing:
      raise UserError(f'autoencoder config is missing {missing}')
    return cls(**dict(config.items()))

  def transformer_config(self) -> transformer.TransformerConfig:
    """Block hyperparameters; the stack sees one chunk, bidirectionally."""
    return transformer.TransformerConfig(
        d_model=self.d_model, num_layers=self.num_layers,
        num_heads=self.num_heads, num_kv_heads=self.num_heads,
        head_dim=self.d_model // self.num_heads, mlp_dim=self.mlp_dim,
        vocab_size=self.vocab_size, max_len=self.chunk_len,
        norm_eps=self.norm_eps, dtype=self.dtype, causal=False)


def kl_per_dim(mean_BxZ, logstd_BxZ):
  """KL(N(mean, exp(logstd)^2) || N(0, 1)) for each dimension, in float32."""
  mean_BxZ = mean_BxZ.astype(jnp.float32)
  logstd_BxZ = logstd_BxZ.astype(jnp.float32)
  return 0.5 * (mean_BxZ**2 + jnp.exp(2 * logstd_BxZ) - 1) - logstd_BxZ


class ResidualMlps(nn.Module):
  """`num_layers` pre-norm SwiGLU blocks and a final norm, over [B, L, D]."""
  cfg: transformer.TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    for i in range(cfg.num_layers):
      h_BxLxD = transformer.RMSNorm(cfg.norm_eps, cfg.compute_dtype,
                                    name=f'norm_{i}')(x_BxLxD)
      x_BxLxD = x_BxLxD + transformer.Mlp(cfg, name=f'mlp_{i}')(h_BxLxD)
    return transformer.RMSNorm(cfg.norm_eps, cfg.compute_dtype,
                               name='final_norm')(x_BxLxD)


class Encoder(nn.Module):
  """tokens_BxK -> float32 (mean_BxZ, logstd_BxZ) of the posterior over z."""
  cfg: AutoencoderConfig

  @nn.compact
  def __call__(self, tokens_BxK, train: bool = False, rng=None):
    cfg, tcfg = self.cfg, self.cfg.transformer_config()
    dtype = tcfg.compute_dtype
    K, D, Z = cfg.chunk_len, cfg.d_model, cfg.latent_dim
    embed_VxD = declare(self, 'embed', nn.initializers.normal(1.0),
                        (cfg.vocab_size, D), ('vocab', 'embed'))
    mask_D = declare(self, 'mask_embed', nn.initializers.normal(1.0), (D,),
                     ('embed',))
    x_BxKxD = jnp.take(embed_VxD, tokens_BxK, axis=0)
    valid_BxK = tokens_BxK != cfg.pad_id
    if train and cfg.token_mask_prob > 0:
      # Pads stay visible: they carry the chunk's length.
      masked_BxK = valid_BxK & jax.random.bernoulli(
          rng, cfg.token_mask_prob, tokens_BxK.shape)
      x_BxKxD = jnp.where(masked_BxK[..., None], mask_D, x_BxKxD)
    x_BxKxD = nn.with_logical_constraint(x_BxKxD.astype(dtype),
                                         ('batch', 'chunk', 'act_embed'))

    if cfg.encoder == 'mlp':
      x_BxKxD = ResidualMlps(tcfg, name='token_mlps')(x_BxKxD)
      flatten_KxDxD = declare(self, 'flatten', fan_in_init((0, 1), 2),
                              (K, D, D), ('chunk', 'embed', None))
      h_BxD = jnp.einsum('BKD,KDE->BE', x_BxKxD, flatten_KxDxD.astype(dtype))
      h_BxD = ResidualMlps(tcfg, name='chunk_mlps')(h_BxD[:, None])[:, 0]
    else:
      x_BxKxD, _ = transformer.Transformer(tcfg, name='transformer')(
          x_BxKxD, mask_BxL=valid_BxK)
      x_BxKxD = transformer.RMSNorm(cfg.norm_eps, dtype,
                                    name='final_norm')(x_BxKxD)
      # Mean over the valid positions; an all-pad chunk pools to zero.
      weights_BxK = valid_BxK / jnp.maximum(valid_BxK.sum(-1, keepdims=True), 1)
      h_BxD = jnp.einsum('BKD,BK->BD', x_BxKxD, weights_BxK.astype(dtype))

    posterior = []
    for name in ('mean', 'logstd'):
      w_DxZ = declare(self, name, fan_in_init(), (D, Z), ('embed', 'latent'))
      out_BxZ = jnp.einsum('BD,DZ->BZ', h_BxD, w_DxZ.astype(dtype),
                           preferred_element_type=jnp.float32)
      posterior.append(nn.with_logical_constraint(out_BxZ, ('batch', 'latent')))
    return tuple(posterior)


class Decoder(nn.Module):
  """z_BxZ -> float32 logits_BxKxV for all K tokens at once, pads included."""
  cfg: AutoencoderConfig

  @nn.compact
  def __call__(self, z_BxZ):
    cfg, tcfg = self.cfg, self.cfg.transformer_config()
    dtype = tcfg.compute_dtype
    K, D, Z = cfg.chunk_len, cfg.d_model, cfg.latent_dim
    in_ZxD = declare(self, 'latent_in', fan_in_init(), (Z, D),
                     ('latent', 'embed'))
    h_BxD = jnp.einsum('BZ,ZD->BD', z_BxZ.astype(dtype), in_ZxD.astype(dtype))
    h_BxD = ResidualMlps(tcfg, name='chunk_mlps')(h_BxD[:, None])[:, 0]
    unflatten_DxKxD = declare(self, 'unflatten', fan_in_init(0, (1, 2)),
                              (D, K, D), (None, 'chunk', 'embed'))
    x_BxKxD = jnp.einsum('BD,DKE->BKE', h_BxD, unflatten_DxKxD.astype(dtype))
    x_BxKxD = nn.with_logical_constraint(x_BxKxD,
                                         ('batch', 'chunk', 'act_embed'))
    x_BxKxD = ResidualMlps(tcfg, name='token_mlps')(x_BxKxD)
    head_DxV = declare(self, 'head', fan_in_init(), (D, cfg.vocab_size),
                       ('embed', 'vocab'))
    logits_BxKxV = jnp.einsum('BKD,DV->BKV', x_BxKxD, head_DxV.astype(dtype),
                              preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits_BxKxV, ('batch', 'chunk', 'vocab'))


class Autoencoder(nn.Module):
  """Encoder + decoder. `__call__` samples z from the posterior when training.

  Use `method='encode'` / `method='decode'` with `apply` to run one half, e.g.
  to perturb z (dropout, noise) between them.
  """
  cfg: AutoencoderConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode(self, tokens_BxK, train: bool = False, rng=None):
    """-> (mean_BxZ, logstd_BxZ); `rng` drives token masking when training."""
    return self.encoder(tokens_BxK, train, rng)

  def decode(self, z_BxZ):
    """-> logits_BxKxV (float32)."""
    return self.decoder(z_BxZ)

  def __call__(self, tokens_BxK, rng=None, train: bool = False):
    """-> (logits_BxKxV, mean_BxZ, logstd_BxZ); z = mean unless training."""
    if train:
      mask_rng, sample_rng = jax.random.split(rng)
    else:
      mask_rng = sample_rng = None
    mean_BxZ, logstd_BxZ = self.encode(tokens_BxK, train, mask_rng)
    z_BxZ = mean_BxZ
    if train:
      z_BxZ += jnp.exp(logstd_BxZ) * jax.random.normal(sample_rng,
                                                       mean_BxZ.shape)
    return self.decode(z_BxZ), mean_BxZ, logstd_BxZ
