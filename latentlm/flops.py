"""Model FLOPs per train step, from the config alone, and MFU (against a
timed matmul off TPU).

Model FLOPs count the matmuls the model needs, not what the compiled program
runs: remat recomputation, elementwise ops and the optimizer are left out.
A dense layer with P weights costs 2 * P FLOPs per token forward, and the
backward pass twice that (gradients of inputs and of weights), so 6 * P to
train. Attention adds QK^T and AV; a causal mask halves them (MaxText's
convention), although a dense kernel still computes the masked half.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from latentlm import workdir
from latentlm.models import concept

# Forward + backward = 3 forwards.
TRAIN_PASSES = 3

# bf16 dense peak FLOP/s per chip, from Google's Cloud TPU pages.
TPU_PEAK_FLOPS = {
    'v4': 275e12,
    'v5e': 197e12,
    'v5p': 459e12,
    'v6e': 918e12,
}
# jax.Device.device_kind -> generation; v5e and v6e report as 'lite'.
_TPU_KINDS = {
    'TPU v4': 'v4',
    'TPU v5 lite': 'v5e',
    'TPU v5e': 'v5e',
    'TPU v5': 'v5p',
    'TPU v5p': 'v5p',
    'TPU v6 lite': 'v6e',
    'TPU v6e': 'v6e',
}


def _per_token(forward: float) -> dict:
  return dict(forward=float(forward), train=float(TRAIN_PASSES * forward))


def attention_flops_per_token(seq_len: int, num_heads: int, head_dim: int,
                              causal: bool = True) -> dict:
  """QK^T and AV of one layer, per query position.

  Each is 2 * L * H * Dh per query (2 * L^2 * H * Dh per sequence); a causal
  query sees on average half the keys.
  """
  forward = 2 * 2 * seq_len * num_heads * head_dim
  return _per_token(forward / 2 if causal else forward)


def dense_flops_per_token(num_weights: int) -> dict:
  """A matmul with `num_weights` weights, per token."""
  return _per_token(2 * num_weights)


def transformer_flops_per_token(model_config, seq_len: int,
                                causal: bool = True) -> dict:
  """The block stack (latentlm.models.transformer), per position.

  `model_config` is a TransformerConfig or the config's `model` fields. The
  embedding lookup and the output head belong to the model around the stack.
  """
  c = model_config
  qkv_weights = c.d_model * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
  out_weights = c.num_heads * c.head_dim * c.d_model
  mlp_weights = 3 * c.d_model * c.mlp_dim  # SwiGLU: gate, up, down
  dense = dense_flops_per_token(qkv_weights + out_weights + mlp_weights)
  attention = attention_flops_per_token(seq_len, c.num_heads, c.head_dim,
                                        causal)
  return {k: c.num_layers * (dense[k] + attention[k]) for k in dense}


def token_lm_flops_per_token(model_config, seq_len: int) -> dict:
  """Causal stack plus the output projection (tied or not, it is a matmul).

  Over `vocab_size` logits: the columns that pad the head for sharding are
  computed but are not model work.
  """
  stack = transformer_flops_per_token(model_config, seq_len, causal=True)
  head = dense_flops_per_token(model_config.d_model * model_config.vocab_size)
  return {k: stack[k] + head[k] for k in stack}


def autoencoder_flops_per_chunk(model_config) -> dict:
  """Concept encoder and decoder (latentlm.models.concept), per chunk.

  Both halves have per-token SwiGLU blocks on the K positions, a K*D*D
  flatten (unflatten) between positions and chunk, and per-chunk blocks; the
  encoder adds the posterior's mean and log-std, the decoder the latent's
  input projection and the K-position output head. The 'transformer'
  encoder replaces the per-token blocks and the flatten with a bidirectional
  stack over the K positions.
  """
  c = concept.AutoencoderConfig.from_config(model_config)
  K, D, Z = c.chunk_len, c.d_model, c.latent_dim
  blocks = c.num_layers * 3 * D * c.mlp_dim  # SwiGLU: gate, up, down
  decoder = decoder_flops_per_chunk(model_config)
  if c.encoder == 'mlp':
    encoder = dense_flops_per_token(K * blocks + K * D * D + blocks +
                                    2 * D * Z)
  else:
    stack = transformer_flops_per_token(c.transformer_config(), K,
                                        causal=False)
    posterior = dense_flops_per_token(2 * D * Z)
    encoder = {k: K * stack[k] + posterior[k] for k in stack}
  return {k: encoder[k] + decoder[k] for k in encoder}


def decoder_flops_per_chunk(model_config) -> dict:
  """The concept decoder alone, per chunk (see autoencoder_flops_per_chunk)."""
  c = concept.AutoencoderConfig.from_config(model_config)
  K, D, Z = c.chunk_len, c.d_model, c.latent_dim
  blocks = c.num_layers * 3 * D * c.mlp_dim
  return dense_flops_per_token(Z * D + blocks + D * K * D + K * blocks +
                               K * D * c.vocab_size)


def flow_sample_flops_per_position(head, d_model: int, latent_dim: int):
  """A flow head's sampler at one position (heads/flow.py): the condition,
  the modulations of its S step times, then one stream per velocity (S, or
  2S - 1 for Heun) of one row, or two when guided (the input projection
  shared by both)."""
  H, Z, L, S = head.hidden_dim, latent_dim, head.num_layers, head.num_steps
  rows = 1 if head.guidance_scale == 1.0 else 2
  velocities = 2 * S - 1 if head.solver == 'heun' else S
  stream = rows * (2 * H * H * L + H * Z) + Z * H
  return dense_flops_per_token(d_model * H + S * H * H * (3 * L + 2) +
                               velocities * stream)


def head_distill_flops_per_position(config, teacher_head, autoencoder):
  """Head distillation (tasks/head_distill.py) per concept: the backbone's
  forward, the teacher's sampler, the student's sampler forward and
  backward, and the decoder on both samples (and back through it to the
  student's sample: frozen, it needs no weight gradient, so 2 passes, not
  3)."""
  Z, D = autoencoder.model.latent_dim, config.model.d_model
  backbone = backbone_flops_per_position(config, autoencoder)
  decoder = decoder_flops_per_chunk(autoencoder.model)
  return (backbone['forward'] +
          flow_sample_flops_per_position(teacher_head, D, Z)['forward'] +
          flow_sample_flops_per_position(config.head, D, Z)['train'] +
          3 * decoder['forward'])


def head_flops_per_position(head, d_model: int, latent_dim: int,
                            num_targets: int) -> dict:
  """A generative head (latentlm.models.heads) at one concept position.

  The trunk projects h to H, and its modulations (3 per block, 2 at the
  end) read the condition; each stream it runs has the blocks' two matmuls
  and the input and output projections. mse and gmm run one stream on the
  condition; energy runs num_samples streams from noise; flow and diffusion
  one per target, whose condition adds the time, so modulations run per
  target too.
  """
  H, Z, L = head.hidden_dim, latent_dim, head.num_layers
  modulations = H * H * (3 * L + 2)
  blocks = 2 * H * H * L
  if head.name == 'mse':
    weights = d_model * H + modulations + blocks + H * Z
  elif head.name == 'gmm':
    outputs = head.num_components * (1 + 2 * Z)  # weights, means, stds
    weights = d_model * H + modulations + blocks + H * outputs
  elif head.name == 'energy':
    stream = head.noise_dim * H + blocks + H * Z
    weights = d_model * H + modulations + head.num_samples * stream
  else:  # flow, diffusion: time features -> H, then the trunk per target
    stream = H * H + modulations + Z * H + blocks + H * Z
    weights = d_model * H + num_targets * stream
  return dense_flops_per_token(weights)


def backbone_flops_per_position(config, autoencoder) -> dict:
  """A concept LM's causal stack and its input projection, per concept."""
  K, Z = autoencoder.model.chunk_len, autoencoder.model.latent_dim
  D = config.model.d_model
  stack = transformer_flops_per_token(config.model, config.data.seq_len)
  inputs = dense_flops_per_token(K * D * D if config.model.input == 'tokens'
                                 else Z * D)
  return {k: stack[k] + inputs[k] for k in stack}


def concept_lm_flops_per_position(config, autoencoder=None) -> dict:
  """The causal stack, its input projection and the head, per concept.

  K and the latent size come from the stage-1 config: `autoencoder`, or
  else that of the stage-1 workdir. Its frozen encoder, which makes inputs
  and targets, is not counted: like a tokenizer, it prepares data, and
  nothing of it is trained.
  """
  if autoencoder is None:
    autoencoder = workdir.Workdir(config.autoencoder_workdir).load_config()
  backbone = backbone_flops_per_position(config, autoencoder)
  head = head_flops_per_position(config.head, config.model.d_model,
                                 autoencoder.model.latent_dim,
                                 config.head_targets)
  return {k: backbone[k] + head[k] for k in backbone}


def train_flops_per_step(config, autoencoder=None) -> float:
  """Model FLOPs of one optimizer step of `config` (all devices together);
  a concept LM's stage-1 config is `autoencoder` or its workdir's.

  Uses `config.model.vocab_size`; a tokenizer with another vocabulary size
  must be reflected there for the head term to be right.
  """
  if config.task == 'token_lm':
    tokens = config.train.batch_size * config.data.seq_len
    return tokens * token_lm_flops_per_token(config.model,
                                             config.data.seq_len)['train']
  if config.task == 'autoencoder':
    chunks = config.train.batch_size * config.data.seq_len
    return chunks * autoencoder_flops_per_chunk(config.model)['train']
  if config.task == 'concept_lm':
    positions = config.train.batch_size * config.data.seq_len
    per_position = concept_lm_flops_per_position(config, autoencoder)
    return positions * per_position['train']
  if config.task == 'head_distill':
    teacher = workdir.Workdir(config.teacher_workdir).load_config()
    if autoencoder is None:
      autoencoder = workdir.Workdir(config.autoencoder_workdir or
                                    teacher.autoencoder_workdir).load_config()
    positions = config.train.batch_size * config.data.seq_len
    return positions * head_distill_flops_per_position(config, teacher.head,
                                                       autoencoder)
  raise ValueError(f'unknown task {config.task!r}')


def mfu(flops_per_step: float, step_time_s: float,
        peak_flops_per_s: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
  return flops_per_step / step_time_s / peak_flops_per_s


def device_peak_flops(device) -> float | None:
  """bf16 peak FLOP/s of a TPU chip; None off TPU or for an unknown chip."""
  if device.platform != 'tpu':
    return None
  generation = _TPU_KINDS.get(device.device_kind)
  return TPU_PEAK_FLOPS[generation] if generation else None


def seconds(fn) -> float:
  """Wall time of one call of `fn`."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def timed_matmul(n: int, repeats: int):
  """(run, flops, rate) of a jitted float32 n x n matmul, the peak that MFU
  is measured against off TPU. `run` is warmed up and returns when the
  product is ready; `rate` is FLOP/s over the median of `repeats` runs."""
  a_NxN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b_NxN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  run = lambda: matmul(a_NxN, b_NxN).block_until_ready()
  run()  # compile and warm up
  median_s = float(np.median([seconds(run) for _ in range(repeats)]))
  return run, 2 * n ** 3, 2 * n ** 3 / median_s
