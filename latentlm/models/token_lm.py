"""Token-level transformer LM: the baseline for every concept model."""

import flax.linen as nn
import jax.numpy as jnp

from latentlm.models import transformer
from latentlm.models.transformer import KVCache, TransformerConfig


class TokenLM(nn.Module):
  """tokens_BxL -> (float32 logits_BxLxV, new cache or None)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BxL, cache: KVCache | None = None):
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    # Unit-scale embeddings: the first block's norm sees them as they are.
    embed_VxD = transformer.declare(self, 'embed', nn.initializers.normal(1.0),
                                    (cfg.padded_vocab_size, cfg.d_model),
                                    ('vocab', 'embed'))
    x_BxLxD = jnp.take(embed_VxD, tokens_BxL, axis=0).astype(dtype)
    x_BxLxD, cache = transformer.Transformer(cfg, name='transformer')(
        x_BxLxD, cache=cache)
    x_BxLxD = transformer.RMSNorm(cfg.norm_eps, dtype,
                                  name='final_norm')(x_BxLxD)
    if cfg.tie_embeddings:
      # Scaled so that logits start near unit scale, as with the untied head.
      head_DxV = embed_VxD.T * cfg.d_model ** -0.5
    else:
      head_DxV = transformer.declare(self, 'head', transformer.fan_in_init(),
                                     (cfg.d_model, cfg.padded_vocab_size),
                                     ('embed', 'vocab'))
    logits_BxLxV = jnp.einsum('BLD,DV->BLV', x_BxLxD, head_DxV.astype(dtype),
                              preferred_element_type=jnp.float32)
    logits_BxLxV = nn.with_logical_constraint(logits_BxLxV,
                                              ('batch', 'seq', 'vocab'))
    # Ids past vocab_size exist only to pad the params; drop their logits.
    return logits_BxLxV[..., :cfg.vocab_size], cache
