"""Concept autoencoder task (stage 1): chunks of K tokens <-> latent vectors.

A row is `data.seq_len` chunks of the segmentation `config.segment` (kind,
chunk_len K); a batch is {'tokens': int32[B, S, K]}, flattened to B*S chunks.
Chunks that are all pads (row padding at the end of an eval split) count in
no loss or metric. The decoder predicts all K positions of a real chunk, its
pads included, since they encode the chunk's length; token accuracy counts
only the real (non-pad) tokens.

Loss per real chunk (a VAE with CALM's robust-latent recipe, `config.ae`):
  CE summed over the K positions (nats per chunk)
  + kl_weight * sum_z max(mean over chunks of KL_z, free_bits)
The latent fed to the decoder in training is a posterior sample, plus
optional Gaussian noise, then dropout; input tokens are masked in the model
(`model.token_mask_prob`). Evaluation decodes the posterior mean.

The codec should return any text, not only the corpus's, so training also
alters the chunks themselves (input and target alike). A corpus leaves some
bytes rare or absent (Shakespeare has almost no digits, no '<' or '/'): a
fraction `random_token_prob` of the real tokens are replaced by uniformly
drawn text tokens. With 'fixed' segmentation short chunks occur only at a
document's end, yet a round trip of any text ends in one: a fraction
`random_truncate_prob` of the chunks are cut to a random length. With units
of meaning the long end is rare: few words fill the slots past the eighth,
so a decoder of K=16 seldom learns them. A fraction `random_extend_prob` of
the chunks are extended by the text after them to a random length up to K
(in text the codec never saw, a unit may be any text of up to K bytes).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latentlm.core import config_lib
from latentlm.core import sharding
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.data import entropy
from latentlm.data import segment
from latentlm.data import tokenizers
from latentlm.metrics import reconstruction
from latentlm.models import concept
from latentlm.tasks import base
from latentlm.tasks import flops
from latentlm.tasks import token_lm


def kl_with_free_bits(mean_NxZ, logstd_NxZ, weights_N, free_bits: float):
  """(clamped, raw) KL in nats per chunk, averaged with `weights_N`.

  Each dimension's KL is averaged over the chunks first and then clamped
  from below at `free_bits`, so a dimension below it is not pushed further.
  """
  kl_NxZ = concept.kl_per_dim(mean_NxZ, logstd_NxZ)
  kl_Z = weights_N @ kl_NxZ / jnp.maximum(weights_N.sum(), 1.0)
  return jnp.maximum(kl_Z, free_bits).sum(), kl_Z.sum()


def substitute_tokens(tokens_NxK, rng, prob: float, text_ids, pad_id):
  """Replaces each real token with probability `prob` by one of `text_ids`."""
  replace_rng, draw_rng = jax.random.split(rng)
  replace_NxK = (tokens_NxK != pad_id) & jax.random.bernoulli(
      replace_rng, prob, tokens_NxK.shape)
  drawn_NxK = jnp.asarray(text_ids)[jax.random.randint(
      draw_rng, tokens_NxK.shape, 0, len(text_ids))]
  return jnp.where(replace_NxK, drawn_NxK, tokens_NxK)


def truncate_chunks(tokens_NxK, rng, prob: float, pad_id):
  """Cuts each chunk with probability `prob` to a uniform length in 1..K."""
  cut_rng, length_rng = jax.random.split(rng)
  N, K = tokens_NxK.shape
  cut_Nx1 = jax.random.bernoulli(cut_rng, prob, (N, 1))
  length_Nx1 = jax.random.randint(length_rng, (N, 1), 1, K + 1)
  keep_NxK = ~cut_Nx1 | (jnp.arange(K) < length_Nx1)
  return jnp.where(keep_NxK, tokens_NxK, pad_id)


def extend_chunks(tokens_NxK, rng, prob: float, pad_id):
  """Extends each chunk, with probability `prob`, by the text after it (the
  next chunks' tokens, in order) to a length drawn uniformly from its own
  to K. Chunks hold their tokens first and their pads after."""
  N, K = tokens_NxK.shape
  extend_rng, length_rng = jax.random.split(rng)
  real_NxK = tokens_NxK != pad_id
  length_N = real_NxK.sum(-1)
  # The batch's text: every real token in chunk order, the pads after.
  text_M = tokens_NxK.reshape(-1)[jnp.argsort(~real_NxK.reshape(-1),
                                              stable=True)]
  start_N = jnp.cumsum(length_N) - length_N
  new_length_Nx1 = jax.random.randint(length_rng, (N, 1), length_N[:, None],
                                      K + 1)
  slot_1xK = jnp.arange(K)[None]
  extended_NxK = jnp.where(
      slot_1xK < new_length_Nx1,
      text_M[jnp.minimum(start_N[:, None] + slot_1xK, N * K - 1)], pad_id)
  extend_Nx1 = (jax.random.bernoulli(extend_rng, prob, (N, 1))
                & (length_N[:, None] > 0))
  return jnp.where(extend_Nx1, extended_NxK, tokens_NxK)


def perturb_latent(z_NxZ, rng, noise_std: float, dropout: float):
  """Training-time robustness: Gaussian noise on z, then (inverted) dropout."""
  noise_rng, dropout_rng = jax.random.split(rng)
  if noise_std > 0:
    z_NxZ += noise_std * jax.random.normal(noise_rng, z_NxZ.shape)
  if dropout > 0:
    keep_NxZ = jax.random.bernoulli(dropout_rng, 1.0 - dropout, z_NxZ.shape)
    z_NxZ = jnp.where(keep_NxZ, z_NxZ / (1.0 - dropout), 0.0)
  return z_NxZ


ENTROPY = 'entropy'  # units cut by a byte LM's entropy (data/entropy.py)
SEGMENTATIONS = segment.KINDS + (ENTROPY,)


class Task(base.Task):
  """Trains the concept encoder and decoder as a VAE over chunks."""

  # generate's text is the prompt's round trip, which replaces the prompt.
  continues_prompt = False

  def __init__(self, config, stages=None):
    super().__init__(config, stages)
    self.tokenizer = tokenizers.get_tokenizer(config.data)
    self.pad_id = self.tokenizer.pad_id
    # Ids that stand for text (bytes), the draws of `substitute_tokens`.
    self.text_ids = np.flatnonzero(self.tokenizer.token_byte_lengths() > 0)
    K = config.segment.chunk_len
    if config.model.chunk_len != K:
      raise UserError(f'config.model.chunk_len={config.model.chunk_len} must '
                      f'equal config.segment.chunk_len={K}')
    self.model_config = concept.AutoencoderConfig.from_config(config.model)
    self.model = concept.Autoencoder(self.model_config)
    self.unit_shape = (K,)
    self.row_len = config.data.seq_len
    self.row_overlap = 0  # chunks are independent: rows share none
    if config.segment.kind == ENTROPY:
      stage = self.stages[ENTROPY]
      if stage.config.data.tokenizer != 'bytes':
        raise UserError('the entropy model must be a token LM over bytes '
                        '(data.tokenizer=bytes), not '
                        f'{stage.config.data.tokenizer!r}')
      byte_lm = token_lm.Task(stage.config)
      self.unit_fn = entropy.EntropyUnits(
          byte_lm.model, byte_lm.model_config.max_len, stage.weights,
          stage.config.data, K=K, mean_bytes=config.segment.mean_bytes,
          pad_id=self.pad_id, eos_id=self.tokenizer.eos_id)
      return
    segment.segment(np.zeros(0, np.int32), config.segment.kind, K,
                    self.pad_id)  # a bad kind or K fails here, not in grain
    # A partial of a module function pickles, for grain worker processes.
    self.unit_fn = functools.partial(segment.segment, kind=config.segment.kind,
                                     K=K, pad_id=self.pad_id)

  def ends_unit(self, tokens_N, last_K, followed_by_whitespace=False) -> bool:
    """Whether a text (token ids), whose last unit is `last_K`, ends where
    a unit ends, so that what follows starts a new unit: that unit is K
    long; for spaced words and entropy units, the text ends in a word and
    the caller knows whitespace comes next (`followed_by_whitespace`:
    BrierLM's positions are word ends), which starts a unit; for entropy
    units, the byte LM finds the next byte hard to predict. Otherwise the
    last unit may still grow (BrierLM completes it, brier.py)."""
    if (np.asarray(last_K) != self.pad_id).all():
      return True
    kind = self.config.segment.kind
    tokens_N = np.asarray(tokens_N)
    if (kind in ('word', ENTROPY) and followed_by_whitespace and
        len(tokens_N) and not np.isin(tokens_N[-1], segment.WHITESPACE)):
      return True
    return kind == ENTROPY and self.unit_fn.starts_unit_after(tokens_N)

  @classmethod
  def stages_of(cls, config, given=None) -> dict[str, base.Stage]:
    """'entropy' for entropy units: the byte LM that
    config.segment.entropy_workdir names. None for the other kinds."""
    config_lib.choose('segmentation kind', config.segment.kind,
                      SEGMENTATIONS)
    if config.segment.kind != ENTROPY:
      return {}
    given = given or {}
    if ENTROPY in given:
      return {ENTROPY: base.Stage(given[ENTROPY])}
    path = config.segment.entropy_workdir
    return {ENTROPY: base.Stage(workdir_lib.load_stage_config(
        path, 'segment.entropy_workdir', 'token_lm', 'a token LM',
        'a byte token LM run whose entropies cut the units '
        '(configs/autoencoder.py:segment=entropy)'), path)}

  @classmethod
  def stages_outside_checkpoint(cls, config, stages) -> tuple[str, ...]:
    """Entropy units' byte LM: a run of its own, in no checkpoint here."""
    del stages
    return (ENTROPY,) if config.segment.kind == ENTROPY else ()

  @classmethod
  def upstream_flops(cls, config, stages) -> float:
    """The entropy model's training, for entropy units."""
    if ENTROPY not in stages:
      return 0.0
    return flops.all_in_flops(stages[ENTROPY],
                              stages[ENTROPY].train.num_steps)

  def init(self, rng):
    """Boxed params; frozen latent statistics (set by `finalize`)."""
    tokens_1xK = jnp.zeros((1, self.config.segment.chunk_len), jnp.int32)
    params = self.model.init(rng, tokens_1xK)['params']
    Z = self.model_config.latent_dim
    frozen = dict(latent_mean=jnp.zeros((Z,)), latent_std=jnp.ones((Z,)))
    return params, frozen

  def encode(self, params, tokens_NxK, train=False, rng=None):
    """-> (mean_NxZ, logstd_NxZ) of the posterior over z."""
    return self.model.apply({'params': params}, tokens_NxK, train, rng,
                            method='encode')

  def decode(self, params, z_NxZ):
    """-> float32 logits_NxKxV."""
    return self.model.apply({'params': params}, z_NxZ, method='decode')

  def alter_chunks(self, tokens_NxK, rng):
    """Random tokens, extensions and truncations, so that the codec learns
    any text."""
    ae = self.config.ae
    substitute_rng, truncate_rng = jax.random.split(rng)
    # A stream of its own: the other two stay those of earlier runs.
    extend_rng = jax.random.fold_in(rng, 1)
    if ae.random_token_prob > 0:
      tokens_NxK = substitute_tokens(tokens_NxK, substitute_rng,
                                     ae.random_token_prob, self.text_ids,
                                     self.pad_id)
    if ae.random_extend_prob > 0:
      tokens_NxK = extend_chunks(tokens_NxK, extend_rng,
                                 ae.random_extend_prob, self.pad_id)
    if ae.random_truncate_prob > 0:
      tokens_NxK = truncate_chunks(tokens_NxK, truncate_rng,
                                   ae.random_truncate_prob, self.pad_id)
    return tokens_NxK

  def loss(self, params, frozen, batch, rng, train):
    del frozen  # statistics for stage 2; they do not shape stage 1
    ae = self.config.ae
    tokens_NxK = batch['tokens'].reshape(-1, self.config.segment.chunk_len)
    real_N = (tokens_NxK != self.pad_id).any(-1).astype(jnp.float32)
    alter_rng, mask_rng, sample_rng, perturb_rng = jax.random.split(rng, 4)
    if train:
      tokens_NxK = self.alter_chunks(tokens_NxK, alter_rng)
    mean_NxZ, logstd_NxZ = self.encode(params, tokens_NxK, train, mask_rng)
    z_NxZ = mean_NxZ
    if train:
      z_NxZ += jnp.exp(logstd_NxZ) * jax.random.normal(sample_rng,
                                                       mean_NxZ.shape)
      z_NxZ = perturb_latent(z_NxZ, perturb_rng, ae.z_noise_std, ae.z_dropout)
    logits_NxKxV = self.decode(params, z_NxZ)
    ce_N = optax.softmax_cross_entropy_with_integer_labels(
        logits_NxKxV, tokens_NxK).sum(-1)
    num_chunks = jnp.maximum(real_N.sum(), 1.0)
    ce = ce_N @ real_N / num_chunks
    kl_clamped, kl = kl_with_free_bits(mean_NxZ, logstd_NxZ, real_N,
                                       ae.free_bits)
    counts = reconstruction.reconstruction_counts(logits_NxKxV, tokens_NxK,
                                                  self.pad_id)
    metrics = dict(
        ce=ce, kl=kl,
        token_acc=counts['tokens_right'] / jnp.maximum(counts['num_tokens'], 1),
        chunk_exact=counts['chunks_exact'] / num_chunks,
        num_bytes=counts['num_tokens'].astype(jnp.float32))
    return ce + ae.kl_weight * kl_clamped, metrics

  def tokens_per_step(self) -> int:
    """Token slots per step, B * S * K: an upper bound on the real bytes
    (chunks of 'words'/'sentences' are partly pads)."""
    c = self.config
    return c.train.batch_size * c.data.seq_len * c.segment.chunk_len

  @classmethod
  def train_flops_per_step(cls, config, stages) -> float:
    """Encoder and decoder on every chunk the rows compute on, and the
    entropy model on the text the chunks hold, for entropy units."""
    chunks = config.train.batch_size * flops.row_chunks(config,
                                                        config.data.seq_len)
    return chunks * (
        flops.autoencoder_flops_per_chunk(config.model)['train'] +
        flops.segmentation_flops_per_chunk(config, stages.get(ENTROPY)))

  def finalize(self, trainer, state, make_train_data,
               num_batches: int = 8):
    """Per-dim mean and std of the posterior mean over a few train batches,
    into `state.frozen`, so stage 2 can normalise the latents."""
    @jax.jit
    def moments(params, tokens):
      tokens_NxK = tokens.reshape(-1, self.config.segment.chunk_len)
      real_N = (tokens_NxK != self.pad_id).any(-1).astype(jnp.float32)
      mean_NxZ, _ = self.encode(params, tokens_NxK)
      return (real_N.sum(), real_N @ mean_NxZ, real_N @ mean_NxZ**2)

    sums = [0.0, 0.0, 0.0]
    data = make_train_data()
    with trainer.context():
      for _ in range(num_batches):
        batch = sharding.global_batch(next(data), trainer.mesh)
        sums = [s + np.asarray(x, np.float64) for s, x in zip(
            sums, jax.device_get(moments(state.params, batch['tokens'])))]
    count, total_Z, total_sq_Z = sums
    mean_Z = total_Z / count
    std_Z = np.sqrt(np.maximum(total_sq_Z / count - mean_Z**2, 1e-12))
    frozen = dict(latent_mean=mean_Z.astype(np.float32),
                  latent_std=std_Z.astype(np.float32))
    return state.replace(frozen=jax.device_put(
        frozen, trainer.state_shardings.frozen))

  # --- the tools ----------------------------------------------------------
  def evaluation_metrics(self, run, batches) -> dict:
    return reconstruction.reconstruction_metrics(run, batches)

  def generate_texts(self, run, prompt, num_samples, rng, **sampling):
    """The prompt's round trip: no sampling options."""
    del sampling
    return reconstruction.autoencoder_texts(run, prompt, num_samples, rng)

  # --- what a run says about itself ---------------------------------------
  @classmethod
  def describe(cls, config) -> str:
    return (f'{config.task} K={config.segment.chunk_len} '
            f'segment={config.segment.kind} Dz={config.model.latent_dim}')

  @classmethod
  def metric_units(cls, config) -> dict[str, base.Unit]:
    del config
    return dict(token_acc=base.Unit('% tokens', base.PERCENT),
                chunk_exact=base.Unit('% chunks', base.PERCENT),
                ce=base.Unit('nats/chunk'), kl=base.Unit('nats/chunk'),
                loss=base.Unit('nats/chunk'))

  @classmethod
  def next_commands(cls, config, workdir_path: str) -> list[str]:
    """Its round trip and evaluation, then stage 2 on it, on the same text
    (the data fields this run set apart from the defaults)."""
    data_flags = [f'--config.data.{key}={value}'
                  for key, value in config.data.items()
                  if key not in _STAGE_OWN_DATA_FIELDS
                  and value != config_lib.base_config().data.get(key)]
    stage2 = os.path.join(os.path.dirname(workdir_path), 'concept_lm')
    return super().next_commands(config, workdir_path) + [
        base.command('python', '-m', 'latentlm.train',
                     '--config=configs/concept_lm.py',
                     f'--config.autoencoder_workdir={workdir_path}',
                     *data_flags, f'--workdir={stage2}')]


# Data fields a stage sets for itself: a concept LM's rows are its own.
_STAGE_OWN_DATA_FIELDS = ('seq_len', 'worker_count')
