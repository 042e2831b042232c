"""Concept LM task (stage 2): predict the next concept vector with a head.

`config.autoencoder_workdir` names a trained stage-1 run: the task's stage
'autoencoder'. Its config gives the segmentation, K, the latent size and
the tokenizer; its encoder, decoder and latent statistics (the weights
training hands the task: runs.build_task) become this run's `frozen` params
(checkpointed with stage 2, never trained). Rows are S + 1 chunks,
{'tokens': int32[B, S+1, K]}.

Position t reads chunk t (`config.model.input`: its tokens, or its
normalised posterior mean) and the head is trained on `config.head_targets`
samples of the encoder posterior of chunk t + 1 (CALM), in the space
normalised by the stage-1 statistics: (z - latent_mean) / latent_std. Target
chunks that are all pads count in no loss or metric.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from latentlm import tasks
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.data import tokenizers
from latentlm.metrics import brier
from latentlm.metrics import concept_lm as concept_metrics
from latentlm.models import concept_lm
from latentlm.models import heads
from latentlm.models import transformer
from latentlm.sampling import concepts as concept_sampling
from latentlm.tasks import base
from latentlm.tasks import flops


def load_autoencoder_config(path: str):
  """The stage-1 config of `path`, or a one-line UserError."""
  return workdir_lib.load_stage_config(
      path, 'autoencoder_workdir', 'autoencoder', 'an autoencoder',
      'a trained autoencoder workdir (configs/autoencoder.py)')


def with_stage1_stages(autoencoder: base.Stage, given) -> dict:
  """`autoencoder` (a Stage) and the stages stage 1 builds on in turn
  (entropy units' byte LM), those in `given` (name -> config) as given:
  what every task over a trained stage 1 builds on."""
  upstream = tasks.task_class(autoencoder.config).stages_of(
      autoencoder.config, given)
  return dict(upstream, autoencoder=autoencoder)


def _configs(stages) -> dict:
  """name -> config of `stages` (name -> Stage)."""
  return {name: stage.config for name, stage in stages.items()}


def replace_boxed(abstract, values):
  """`abstract` (boxed shapes, from jax.eval_shape) holding `values`: the
  logical axis names of the one, the numbers of the other."""
  return jax.tree.map(
      lambda box, value: box.replace_boxed(jnp.asarray(value))
      if isinstance(box, nn.Partitioned) else jnp.asarray(value),
      abstract, values, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class Task(base.Task):
  """The autoregressor over concepts, on a frozen stage-1 autoencoder.

  `stages['autoencoder']`: the stage-1 run. Without weights (tasks.get_task:
  benchmarks, compiles, tests) the frozen params are a fresh, untrained
  autoencoder with unit statistics.
  """

  def __init__(self, config, stages):
    super().__init__(config, stages)
    autoencoder = self.stages['autoencoder']
    if autoencoder.config.data.tokenizer != config.data.tokenizer:
      raise UserError(
          f'config.data.tokenizer={config.data.tokenizer!r} differs from the '
          f'autoencoder\'s {autoencoder.config.data.tokenizer!r}')
    # Stage 1 on the stages it builds on (entropy units' byte LM), with
    # the weights this task was handed.
    ae_class = tasks.task_class(autoencoder.config)
    ae_stages = ae_class.stages_of(autoencoder.config, _configs(self.stages))
    self.autoencoder = ae_class(autoencoder.config, {
        name: self.stages.get(name, stage) for name, stage in ae_stages.items()})
    self.tokenizer = tokenizers.get_tokenizer(config.data)
    self.pad_id = self.tokenizer.pad_id
    self.unit_fn = self.autoencoder.unit_fn  # the stage-1 segmentation
    self.unit_shape = self.autoencoder.unit_shape
    self.chunk_len, = self.unit_shape
    self.latent_dim = self.autoencoder.model_config.latent_dim
    self.row_len = config.data.seq_len + 1
    self.row_overlap = 1  # a row's last chunk starts the next: none unscored

    model_fields = dict(config.model.items())
    self.input_kind = model_fields.pop('input')
    if self.input_kind not in concept_lm.INPUTS:
      raise UserError(f'config.model.input={self.input_kind!r} is not one of '
                      f'{concept_lm.INPUTS}')
    self.model_config = transformer.TransformerConfig.from_config(
        model_fields, vocab_size=self.tokenizer.vocab_size)
    self.head = heads.make_head(config.head, self.latent_dim)
    self.model = concept_lm.ConceptLM(
        self.model_config, self.input_kind, self.chunk_len, self.head,
        token_logits=config.token_loss_weight > 0)
    self.byte_lengths = np.asarray(self.tokenizer.token_byte_lengths(),
                                   np.float32)
    # The stage-1 params and statistics, as numpy (put on devices in init).
    self._trained = None if autoencoder.weights is None else dict(
        autoencoder=autoencoder.weights['params'],
        **autoencoder.weights['frozen'])

  @classmethod
  def stages_of(cls, config, given=None) -> dict[str, base.Stage]:
    """'autoencoder': the run config.autoencoder_workdir names; and the
    stages it builds on in turn (entropy units' byte LM)."""
    given = given or {}
    if 'autoencoder' in given:
      autoencoder = base.Stage(given['autoencoder'])
    else:
      path = config.autoencoder_workdir
      autoencoder = base.Stage(load_autoencoder_config(path), path)
    return with_stage1_stages(autoencoder, given)

  @classmethod
  def stages_outside_checkpoint(cls, config, stages) -> tuple[str, ...]:
    """Those of stage 1 (entropy units' byte LM): the frozen params hold
    stage 1's weights, not theirs."""
    autoencoder = stages['autoencoder'].config
    return tasks.task_class(autoencoder).stages_outside_checkpoint(
        autoencoder, stages)

  # --- frozen stage 1 -----------------------------------------------------
  def _init_frozen(self, rng):
    """Boxed like the stage-1 params, so they shard the same way."""
    ae_params, stats = self.autoencoder.init(rng)
    return dict(autoencoder=ae_params, **stats)

  def init_frozen(self, rng):
    """The trained stage-1 model, or a fresh one without its weights."""
    if self._trained is None:
      return self._init_frozen(rng)
    # Only the structure and axis names: the values are the trained ones.
    return replace_boxed(jax.eval_shape(self._init_frozen, rng),
                         self._trained)

  def encode(self, frozen, tokens_BxSxK):
    """Normalised posterior (mean_BxSxZ, std_BxSxZ); no gradient flows."""
    B, S, K = tokens_BxSxK.shape
    frozen = jax.lax.stop_gradient(frozen)
    mean_NxZ, logstd_NxZ = self.autoencoder.encode(
        frozen['autoencoder'], tokens_BxSxK.reshape(B * S, K))
    mean_NxZ = (mean_NxZ - frozen['latent_mean']) / frozen['latent_std']
    std_NxZ = jnp.exp(logstd_NxZ) / frozen['latent_std']
    return mean_NxZ.reshape(B, S, -1), std_NxZ.reshape(B, S, -1)

  def decode_logits(self, frozen, z_NxZ):
    """Normalised latents -> the decoder's token logits N x K x V."""
    z_NxZ = z_NxZ * frozen['latent_std'] + frozen['latent_mean']
    return self.autoencoder.decode(frozen['autoencoder'], z_NxZ)

  def decode(self, frozen, z_NxZ):
    """Normalised latents -> token ids N x K (argmax, pads included)."""
    return self.decode_logits(frozen, z_NxZ).argmax(-1)

  def model_inputs(self, frozen, tokens_BxSxK, mean_BxSxZ=None):
    """What the autoregressor reads for these chunks (config.model.input)."""
    if self.input_kind == 'tokens':
      return tokens_BxSxK
    if mean_BxSxZ is None:
      mean_BxSxZ, _ = self.encode(frozen, tokens_BxSxK)
    return mean_BxSxZ

  # --- the Task API -------------------------------------------------------
  def init(self, rng):
    """Boxed autoregressor and head params; the stage-1 model as frozen."""
    model_rng, head_rng, frozen_rng = jax.random.split(rng, 3)
    tokens_1x1xK = jnp.full((1, 1, self.chunk_len), self.pad_id, jnp.int32)
    inputs = self.model_inputs(None, tokens_1x1xK,
                               jnp.zeros((1, 1, self.latent_dim)))
    z_1x1xZ = jnp.zeros((1, 1, self.latent_dim))
    params = self.model.init(model_rng, inputs, z_1x1xZ, head_rng,
                             method='init_all')['params']
    return params, self.init_frozen(frozen_rng)

  def head_terms(self, params, frozen, tokens_BxS1xK, target_rng, head_rng):
    """The per-concept loss of rows of S + 1 chunks, with what evaluation
    needs beside it: dict(loss_N, metrics_N (head_loss, token_ce when the
    token head is on), h_NxD, next_mean_NxZ, next_tokens_NxK, real_N)."""
    B, S1, _ = tokens_BxS1xK.shape
    N, M, Z = B * (S1 - 1), self.config.head_targets, self.latent_dim
    mean_BxS1xZ, std_BxS1xZ = self.encode(frozen, tokens_BxS1xK)
    inputs = self.model_inputs(frozen, tokens_BxS1xK[:, :-1],
                               mean_BxS1xZ[:, :-1])
    h_BxSxD, _ = self.model.apply({'params': params}, inputs)
    h_NxD = h_BxSxD.reshape(N, -1)

    next_mean_NxZ = mean_BxS1xZ[:, 1:].reshape(N, Z)
    noise_NxMxZ = jax.random.normal(target_rng, (N, M, Z))
    z_NxMxZ = next_mean_NxZ[:, None] + self.config.target_noise * (
        std_BxS1xZ[:, 1:].reshape(N, 1, Z) * noise_NxMxZ)
    loss_N = self.model.apply({'params': params}, h_NxD, z_NxMxZ, head_rng,
                              method='loss')
    next_tokens_NxK = tokens_BxS1xK[:, 1:].reshape(N, -1)
    metrics_N = {}
    if self.config.token_loss_weight > 0:
      logits_NxKxV = self.model.apply({'params': params}, h_NxD,
                                      method='next_token_logits')
      ce_N = optax.softmax_cross_entropy_with_integer_labels(
          logits_NxKxV, next_tokens_NxK).sum(-1)
      metrics_N = dict(head_loss=loss_N, token_ce=ce_N)
      loss_N = loss_N + self.config.token_loss_weight * ce_N
    real_N = (next_tokens_NxK != self.pad_id).any(-1).astype(jnp.float32)
    return dict(loss_N=loss_N, metrics_N=metrics_N, h_NxD=h_NxD,
                next_mean_NxZ=next_mean_NxZ, next_tokens_NxK=next_tokens_NxK,
                real_N=real_N)

  def next_chunk_bytes(self, next_tokens_NxK):
    """Bytes of text in each chunk (pads are none)."""
    return jnp.asarray(self.byte_lengths)[next_tokens_NxK].sum(-1)

  def loss(self, params, frozen, batch, rng, train):
    """Head loss per real target concept; eval adds `latent_l2`."""
    target_rng, head_rng, sample_rng = jax.random.split(rng, 3)
    terms = self.head_terms(params, frozen, batch['tokens'], target_rng,
                            head_rng)
    real_N = terms['real_N']
    num_concepts = jnp.maximum(real_N.sum(), 1.0)
    metrics = {k: v @ real_N / num_concepts
               for k, v in terms['metrics_N'].items()}
    bytes_N = self.next_chunk_bytes(terms['next_tokens_NxK'])
    metrics.update(num_bytes=bytes_N.sum(), num_concepts=real_N.sum())
    if not train:  # sampling can take many head passes (flow, diffusion)
      # One sample at temperature 1 against the true next posterior mean.
      sample_NxZ = self.model.apply({'params': params}, terms['h_NxD'],
                                    sample_rng, 1.0, method='sample')
      l2_N = jnp.linalg.norm(sample_NxZ - terms['next_mean_NxZ'], axis=-1)
      metrics['latent_l2'] = l2_N @ real_N / num_concepts
    return terms['loss_N'] @ real_N / num_concepts, metrics

  def tokens_per_step(self) -> int:
    """Concept positions trained per step (for throughput and FLOPs)."""
    return self.config.train.batch_size * self.config.data.seq_len

  @classmethod
  def train_flops_per_step(cls, config, stages) -> float:
    """Rows of S + 1 chunks: the frozen encoder reads all of them (targets
    and, for latent input, inputs), and S are trained positions."""
    autoencoder = stages['autoencoder']
    B = config.train.batch_size
    chunks = flops.row_chunks(autoencoder, config.data.seq_len + 1)
    trained = flops.concept_lm_flops_per_position(config, autoencoder)['train']
    encoder = flops.encoder_flops_per_chunk(autoencoder.model)['forward']
    segmentation = flops.segmentation_flops_per_chunk(autoencoder,
                                                      stages.get('entropy'))
    return B * ((chunks - 1) * trained + chunks * (encoder + segmentation))

  @classmethod
  def upstream_flops(cls, config, stages) -> float:
    """Stage 1's training, all in."""
    autoencoder = stages['autoencoder']
    return flops.all_in_flops(autoencoder, autoencoder.train.num_steps,
                              entropy=stages.get('entropy'))

  # --- the tools ----------------------------------------------------------
  def evaluation_metrics(self, run, batches) -> dict:
    return concept_metrics.concept_lm_metrics(run, batches)

  def generate_texts(self, run, prompt, num_samples, rng, **sampling):
    sampling.pop('top_p', None)  # a head has no nucleus to cut
    return concept_sampling.concept_lm_texts(run, prompt, num_samples, rng,
                                             **sampling)

  def brier_continuations(self, run, contexts, rng, max_new_bytes,
                          temperature, unit, stats):
    return brier.concept_lm_continuations(run, contexts, rng, max_new_bytes,
                                          temperature, unit, stats)

  # --- what a run says about itself ---------------------------------------
  @classmethod
  def describe_head(cls, config) -> str:
    return f'head={config.head.name}'

  @classmethod
  def describe(cls, config) -> str:
    m = config.model
    return (f'{config.task} {cls.describe_head(config)} input={m.input} '
            f'd={m.d_model} L={m.num_layers} seq={config.data.seq_len}')

  @classmethod
  def metric_units(cls, config) -> dict[str, base.Unit]:
    head_loss = base.Unit(heads.head_class(config.head.name).loss_unit)
    units = dict(loss=head_loss)
    if config.token_loss_weight > 0:
      units = dict(
          loss=base.Unit(f'per concept: head_loss + {config.token_loss_weight}'
                         ' x token_ce'),
          head_loss=head_loss, token_ce=base.Unit('nats/concept'))
    return dict(units, latent_l2=base.Unit('l2/concept (normalised latents)'))
