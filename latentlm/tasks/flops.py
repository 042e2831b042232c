"""Model FLOPs of training, from the config alone, and MFU (against a
timed matmul off TPU).

Model FLOPs count the matmuls the model needs, not what the compiled program
runs: remat recomputation, elementwise ops and the optimizer are left out.
A dense layer with P weights costs 2 * P FLOPs per token forward, and the
backward pass twice that (gradients of inputs and of weights), so 6 * P to
train. Attention adds QK^T and AV; a causal mask halves them (MaxText's
convention), although a dense kernel still computes the masked half.

A step's count is everything its program needs, trained or not: a concept
LM's step also runs its frozen stage-1 encoder forward (to make its targets
and, for latent input, its inputs) and the auxiliary token readout, and
these are part of what an equal-FLOPs comparison must charge it. A run's
all-in FLOPs add the stages it builds on (`upstream_flops`): a concept LM's
stage 1, a distilled head's teacher (with the teacher's own stage 1).

The building blocks are here; each task counts its step and its upstream
stages with them (Task.train_flops_per_step, Task.upstream_flops), and each
head its loss (Head.loss_weights). A head, task, segmentation, encoder,
input or solver without a count is a UserError, never a silent default: a
wrong count would skew every equal-FLOPs study without a sign.
"""

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latentlm import tasks
from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.models import concept
from latentlm.models import heads
from latentlm.tasks import pipeline

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


def _add(*counts: dict) -> dict:
  return {k: sum(count[k] for count in counts) for k in counts[0]}


def _swiglu_weights(num_layers: int, width: int, mlp_dim: int) -> int:
  """`num_layers` SwiGLU blocks: gate, up and down."""
  return num_layers * 3 * width * mlp_dim


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
  mlp_weights = _swiglu_weights(1, c.d_model, c.mlp_dim)
  dense = dense_flops_per_token(qkv_weights + out_weights + mlp_weights)
  attention = attention_flops_per_token(seq_len, c.num_heads, c.head_dim,
                                        causal)
  return {k: c.num_layers * v for k, v in _add(dense, attention).items()}


def token_lm_flops_per_token(model_config, seq_len: int) -> dict:
  """Causal stack plus the output projection (tied or not, it is a matmul).

  Over `vocab_size` logits: the columns that pad the head for sharding are
  computed but are not model work.
  """
  stack = transformer_flops_per_token(model_config, seq_len, causal=True)
  head = dense_flops_per_token(model_config.d_model * model_config.vocab_size)
  return _add(stack, head)


def _known(table: dict, value, what: str):
  """table[value], or a one-line UserError naming `value` and the values
  the table knows: a count this module lacks must not default to another's."""
  if value not in table:
    raise UserError(f'latentlm.tasks.flops has no count for {what} {value!r}; it '
                    f'knows {sorted(table)}'
                    f'{config_lib.suggest(str(value), table)}')
  return table[value]


# --- the autoencoder (stage 1) ---------------------------------------------
def _mlp_encoder_flops(c) -> dict:
  """Per-token blocks on the K positions, the K*D*D flatten into one
  chunk vector, per-chunk blocks, the posterior's mean and log-std."""
  K, D, Z = c.chunk_len, c.d_model, c.latent_dim
  blocks = _swiglu_weights(c.num_layers, D, c.mlp_dim)
  return dense_flops_per_token(K * blocks + K * D * D + blocks + 2 * D * Z)


def _transformer_encoder_flops(c) -> dict:
  """A bidirectional stack over the K positions, then the posterior."""
  stack = transformer_flops_per_token(c.transformer_config(), c.chunk_len,
                                      causal=False)
  posterior = dense_flops_per_token(2 * c.d_model * c.latent_dim)
  return _add({k: c.chunk_len * v for k, v in stack.items()}, posterior)


# model.encoder of an autoencoder -> its FLOPs per chunk.
_ENCODERS = {'mlp': _mlp_encoder_flops,
             'transformer': _transformer_encoder_flops}


def encoder_flops_per_chunk(model_config) -> dict:
  """The concept encoder (latentlm.models.concept), per chunk."""
  c = concept.AutoencoderConfig.from_config(model_config)
  return _known(_ENCODERS, c.encoder, 'encoder')(c)


def decoder_flops_per_chunk(model_config) -> dict:
  """The concept decoder, per chunk: the latent's input projection,
  per-chunk blocks, the D*K*D unflatten, per-token blocks on the K
  positions and the K-position output head."""
  c = concept.AutoencoderConfig.from_config(model_config)
  K, D, Z = c.chunk_len, c.d_model, c.latent_dim
  blocks = _swiglu_weights(c.num_layers, D, c.mlp_dim)
  return dense_flops_per_token(Z * D + blocks + D * K * D + K * blocks +
                               K * D * c.vocab_size)


def autoencoder_flops_per_chunk(model_config) -> dict:
  """Concept encoder and decoder, per chunk."""
  return _add(encoder_flops_per_chunk(model_config),
              decoder_flops_per_chunk(model_config))


def _padded_chunks(num_chunks: int) -> int:
  """Each chunk is padded to K tokens, so it costs the same full or not."""
  return num_chunks


# segment.kind of a stage-1 config -> the chunks the models compute on in a
# row of `num_chunks`.
_SEGMENTATIONS = {'fixed': _padded_chunks, 'words': _padded_chunks,
                  'sentences': _padded_chunks, 'word': _padded_chunks,
                  'entropy': _padded_chunks}


def row_chunks(autoencoder, num_chunks: int) -> int:
  """Chunks computed in a row of `num_chunks` of `autoencoder`'s
  segmentation."""
  kind = autoencoder.segment.kind
  return _known(_SEGMENTATIONS, kind, 'segmentation')(num_chunks)


def segmentation_flops_per_chunk(autoencoder, entropy_model=None) -> float:
  """FLOPs of cutting one chunk's text into units: none for the rule-based
  kinds; for entropy units (data/entropy.py) the byte LM `entropy_model`
  (a token LM config) on each of the chunk's mean_bytes, twice, since its
  windows overlap by half."""
  if autoencoder.segment.kind != 'entropy':
    return 0.0
  if entropy_model is None:
    raise UserError('entropy units need their entropy model\'s config to be '
                    'counted (config.segment.entropy_workdir)')
  model = entropy_model.model
  per_byte = token_lm_flops_per_token(model, model.max_len)['forward']
  return 2 * autoencoder.segment.mean_bytes * per_byte


# --- generative heads ------------------------------------------------------
def head_flops_per_position(head, d_model: int, latent_dim: int,
                            num_targets: int) -> dict:
  """A generative head's loss (latentlm.models.heads) at one concept
  position, against `num_targets` target samples."""
  head = heads.head_config(head)
  return dense_flops_per_token(heads.head_class(head.name).loss_weights(
      head, d_model, latent_dim, num_targets))


# head.solver of a flow head -> the velocities its S steps evaluate: Heun's
# last step is Euler's; Adams-Bashforth reuses the last step's.
_SOLVER_VELOCITIES = {'euler': lambda S: S, 'heun': lambda S: 2 * S - 1,
                      'ab2': lambda S: S}


def flow_sample_flops_per_position(head, d_model: int, latent_dim: int):
  """A flow head's sampler at one position (heads/flow.py): the condition,
  the modulations of its S step times, then one stream per velocity of one
  row, or two when guided (the input projection shared by both)."""
  H, Z, L, S = head.hidden_dim, latent_dim, head.num_layers, head.num_steps
  rows = 1 if head.guidance_scale == 1.0 else 2
  velocities = _known(_SOLVER_VELOCITIES, head.solver, 'flow solver')(S)
  stream = rows * (2 * H * H * L + H * Z) + Z * H
  return dense_flops_per_token(d_model * H + S * H * H * (3 * L + 2) +
                               velocities * stream)


# --- the concept LM (stage 2) ----------------------------------------------
class _Input(NamedTuple):
  """What a concept LM reads at a position (config.model.input)."""
  weights: Callable[[int, int, int], int]  # (K, D, Z) -> its projection's
  encoded: bool  # made by the frozen encoder


# config.model.input -> its projection into the backbone and its source.
_INPUTS = {'tokens': _Input(lambda K, D, Z: K * D * D, encoded=False),
           'latent': _Input(lambda K, D, Z: Z * D, encoded=True)}


def _input_kind(config) -> _Input:
  return _known(_INPUTS, config.model.input, 'concept LM input')


def input_is_encoded(config) -> bool:
  """Whether a concept LM's input is made by the frozen encoder."""
  return _input_kind(config).encoded


def backbone_flops_per_position(config, autoencoder) -> dict:
  """A concept LM's causal stack and its input projection, per concept."""
  K, Z = autoencoder.model.chunk_len, autoencoder.model.latent_dim
  stack = transformer_flops_per_token(config.model, config.data.seq_len)
  inputs = _input_kind(config).weights(K, config.model.d_model, Z)
  return _add(stack, dense_flops_per_token(inputs))


def token_readout_flops_per_position(config, autoencoder) -> dict:
  """The auxiliary readout of the next chunk's K token logits off h
  (models/concept_lm.py), which the step runs when token_loss_weight > 0."""
  weights = config.model.d_model * autoencoder.model.chunk_len * (
      config.model.vocab_size)
  return dense_flops_per_token(weights if config.token_loss_weight > 0 else 0)


def concept_lm_flops_per_position(config, autoencoder) -> dict:
  """What a concept LM trains per concept: the causal stack, its input
  projection, the head and the auxiliary token readout. The frozen
  encoder's forward pass is per chunk (the task's step count adds it).
  K and the latent size come from the stage-1 config `autoencoder`.
  """
  head = head_flops_per_position(config.head, config.model.d_model,
                                 autoencoder.model.latent_dim,
                                 config.head_targets)
  return _add(backbone_flops_per_position(config, autoencoder), head,
              token_readout_flops_per_position(config, autoencoder))


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


# --- a run's step and the stages it builds on -----------------------------
def _task_stages(config, autoencoder, teacher, entropy=None):
  """The Task class of `config` and its stages' configs (name -> config):
  `autoencoder`, `teacher` and `entropy` (entropy units' byte LM) where
  given, else those of the workdirs the config names."""
  cls = tasks.task_class(config)
  given = {name: stage for name, stage in
           dict(autoencoder=autoencoder, teacher=teacher,
                entropy=entropy).items()
           if stage is not None}
  return cls, {name: stage.config
               for name, stage in cls.stages_of(config, given).items()}


def train_flops_per_step(config, autoencoder=None, teacher=None,
                         entropy=None) -> float:
  """Model FLOPs of one optimizer step of `config` (all devices together):
  everything the step runs, frozen stage-1 encoder and auxiliary heads
  included. A concept LM's stage-1 config is `autoencoder`, a distilled
  head's teacher config `teacher`; None reads them from the workdirs
  the config names.

  Uses `config.model.vocab_size`; a tokenizer with another vocabulary size
  must be reflected there for the output terms to be right.
  """
  cls, stages = _task_stages(config, autoencoder, teacher, entropy)
  return float(cls.train_flops_per_step(config, stages))


def upstream_flops(config, autoencoder=None, teacher=None,
                   entropy=None) -> float:
  """All-in training FLOPs of the stages `config` builds on, from their
  configs (so a budget can be set before anything trains): a concept LM's
  stage 1; a distilled head's teacher, stage 1 included; 0 for the rest."""
  cls, stages = _task_stages(config, autoencoder, teacher, entropy)
  return float(cls.upstream_flops(config, stages))


def all_in_flops(config, step: int, autoencoder=None, teacher=None,
                 entropy=None) -> float:
  """Training FLOPs of `config` after `step` steps, every stage it builds
  on included: what an equal-FLOPs comparison charges a run."""
  return upstream_flops(config, autoencoder, teacher, entropy) + (
      step * train_flops_per_step(config, autoencoder, teacher, entropy))


def pipeline_flops(config) -> float:
  """All-in training FLOPs of a pipeline config (config.stages) when every
  stage has run: its last stage's, which counts the stages before it."""
  stages = config.stages
  last = stages[pipeline.last_stage(config)]
  return all_in_flops(last, last.train.num_steps, stages.autoencoder,
                      stages.concept_lm, stages.get('entropy'))


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
