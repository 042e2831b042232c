"""The continuous-vector autoregressor: a causal transformer over concepts.

Position t reads the previous chunk (t's input) and its hidden state h_t
conditions a generative head (latentlm.models.heads) on the next concept's
latent. The input of a position is, by `input_kind`:

  tokens: the chunk's K token embeddings, flattened and projected to d_model
          (CALM's input: it found this better than feeding latents back).
  latent: the chunk's normalised posterior mean, projected to d_model.
"""

import flax.linen as nn
import jax.numpy as jnp

from latentlm.models import transformer
from latentlm.models.transformer import TransformerConfig, declare, fan_in_init

INPUTS = ('tokens', 'latent')


class ConceptLM(nn.Module):
  """inputs (tokens_BxSxK or latents_BxSxZ) -> (h_BxSxD, new cache or None).

  `loss` and `sample` run the head on flattened hidden states h_NxD; `init`
  with `method='init_all'` creates the parameters of both halves.
  """
  cfg: TransformerConfig
  input_kind: str
  chunk_len: int
  head: nn.Module
  token_logits: bool = False  # an auxiliary next-chunk token predictor

  def setup(self):
    cfg, D = self.cfg, self.cfg.d_model
    if self.input_kind == 'tokens':
      # Unit-scale embeddings; the flatten kernel sees K of them (fan-in K*D).
      self.embed_VxD = declare(self, 'embed', nn.initializers.normal(1.0),
                               (cfg.vocab_size, D), ('vocab', 'embed'))
      self.flatten_KxDxD = declare(self, 'flatten', fan_in_init((0, 1), 2),
                                   (self.chunk_len, D, D),
                                   ('chunk', None, 'embed'))
    else:
      self.project_ZxD = declare(self, 'project', fan_in_init(),
                                 (self.head.latent_dim, D), ('latent', 'embed'))
    self.transformer = transformer.Transformer(cfg)
    self.final_norm = transformer.RMSNorm(cfg.norm_eps, cfg.compute_dtype)
    if self.token_logits:
      self.next_tokens_DxKxV = declare(
          self, 'next_tokens', fan_in_init(0, (1, 2)),
          (D, self.chunk_len, cfg.vocab_size), ('embed', 'chunk', 'vocab'))

  def embed_inputs(self, inputs):
    dtype = self.cfg.compute_dtype
    if self.input_kind == 'tokens':
      x_BxSxKxD = jnp.take(self.embed_VxD, inputs, axis=0).astype(dtype)
      return jnp.einsum('BSKD,KDE->BSE', x_BxSxKxD,
                        self.flatten_KxDxD.astype(dtype))
    return jnp.einsum('BSZ,ZD->BSD', inputs.astype(dtype),
                      self.project_ZxD.astype(dtype))

  def __call__(self, inputs, cache: transformer.KVCache | None = None):
    x_BxSxD, cache = self.transformer(self.embed_inputs(inputs), cache=cache)
    return self.final_norm(x_BxSxD), cache

  def loss(self, h_NxD, z_NxMxZ, rng):
    """The head's per-position loss against M target samples: N."""
    return self.head.loss(h_NxD, z_NxMxZ, rng)

  def sample(self, h_NxD, rng, temperature, constants=None):
    """One next latent per position from the head: N x Z. `constants`: the
    head's sample_constants, when a sampler keeps them."""
    if constants is None:
      return self.head.sample(h_NxD, rng, temperature)
    return self.head.sample(h_NxD, rng, temperature, constants)

  def sample_constants(self):
    """The head's sample_constants (None for a head without any)."""
    return self.head.sample_constants()

  def next_token_logits(self, h_NxD):
    """float32 logits_NxKxV of the next chunk's tokens, read off h."""
    return jnp.einsum('ND,DKV->NKV', h_NxD,
                      self.next_tokens_DxKxV.astype(h_NxD.dtype),
                      preferred_element_type=jnp.float32)

  def init_all(self, inputs, z_NxMxZ, rng):
    h_BxSxD, _ = self(inputs)
    h_NxD = h_BxSxD.reshape(-1, h_BxSxD.shape[-1])
    if self.token_logits:
      self.next_token_logits(h_NxD)
    return self.loss(h_NxD, z_NxMxZ, rng)
