"""Token LM task: next-token cross-entropy; the baseline for concept models.

The smallest whole task (tasks/base.py: the interface). It tells the data
pipeline what a unit of a row is (`unit_fn`, `unit_shape`, `row_len`, and
`row_overlap`: units shared by consecutive rows, 1 for next-unit prediction
so every unit is a target once), initialises parameters (`init`), defines
the loss (`loss`, whose metrics include `num_bytes`, the weight of a batch
in evaluation) and its FLOPs, and hands the tools its metrics, samples and
BrierLM continuations.
"""

import math

import jax.numpy as jnp
import numpy as np
import optax

from latentlm.core.errors import UserError
from latentlm.data import tokenizers
from latentlm.metrics import brier
from latentlm.models import token_lm, transformer
from latentlm.sampling import tokens as token_sampling
from latentlm.tasks import base
from latentlm.tasks import flops


def masked_cross_entropy(logits_BxLxV, targets_BxL, byte_lengths_V, pad_id):
  """Mean cross-entropy over non-pad targets, plus bits per byte.

  Bits per byte divides the total negative log-likelihood by the number of
  text bytes the targets stand for, so byte and BPE models compare fairly.
  """
  mask_BxL = (targets_BxL != pad_id).astype(jnp.float32)
  ce_BxL = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL)
  num_targets = jnp.maximum(mask_BxL.sum(), 1.0)
  total_nats = (ce_BxL * mask_BxL).sum()
  num_bytes = (jnp.asarray(byte_lengths_V)[targets_BxL] * mask_BxL).sum()
  correct = (logits_BxLxV.argmax(-1) == targets_BxL) * mask_BxL
  metrics = dict(
      accuracy=correct.sum() / num_targets,
      bits_per_byte=total_nats / math.log(2) / jnp.maximum(num_bytes, 1.0),
      num_bytes=num_bytes)
  return total_nats / num_targets, metrics


class Task(base.Task):
  """Next-token prediction over packed rows of seq_len + 1 tokens."""

  unit_shape = ()

  def __init__(self, config, stages=None):
    super().__init__(config, stages)
    self.tokenizer = tokenizers.get_tokenizer(config.data)
    self.model_config = transformer.TransformerConfig.from_config(
        config.model, vocab_size=self.tokenizer.vocab_size)
    self.model = token_lm.TokenLM(self.model_config)
    self.row_len = config.data.seq_len + 1
    self.row_overlap = 1
    self.byte_lengths = np.asarray(self.tokenizer.token_byte_lengths(),
                                   np.float32)

  def unit_fn(self, tokens_N):
    return tokens_N

  def init(self, rng):
    """Boxed (logically partitioned) params, and no frozen params."""
    tokens_1xL = jnp.zeros((1, self.config.data.seq_len), jnp.int32)
    variables = self.model.init(rng, tokens_1xL)
    return variables['params'], {}

  def loss(self, params, frozen, batch, rng, train):
    del frozen, rng, train  # no dropout in the token LM
    tokens_BxL1 = batch['tokens']
    logits_BxLxV, _ = self.model.apply(
        {'params': params}, tokens_BxL1[:, :-1])
    return masked_cross_entropy(logits_BxLxV, tokens_BxL1[:, 1:],
                                self.byte_lengths, self.tokenizer.pad_id)

  def tokens_per_step(self) -> int:
    """Model positions trained per step (for throughput and FLOPs)."""
    return self.config.train.batch_size * self.config.data.seq_len

  @classmethod
  def train_flops_per_step(cls, config, stages) -> float:
    """The stack and output projection at every position. A tokenizer, like
    a data pipeline, is not model FLOPs."""
    del stages
    tokens = config.train.batch_size * config.data.seq_len
    return tokens * flops.token_lm_flops_per_token(config.model,
                                                   config.data.seq_len)['train']

  # --- the tools ----------------------------------------------------------
  def evaluation_metrics(self, run, batches) -> dict:
    metrics = run.trainer.evaluate(run.state, batches, max_batches=10**9)
    if not metrics.get('num_bytes'):
      raise UserError('the evaluation text has no bytes to score; give a '
                      'text with content')
    return dict(bits_per_byte=metrics['bits_per_byte'],
                token_accuracy=metrics['accuracy'], loss=metrics['loss'],
                num_bytes=metrics['num_bytes'])

  def generate_texts(self, run, prompt, num_samples, rng, **sampling):
    sampling.pop('num_candidates', None)  # a concept LM's sampling option
    return token_sampling.token_lm_texts(run, prompt, num_samples, rng,
                                         **sampling)

  def brier_continuations(self, run, contexts, rng, max_new_bytes,
                          temperature, unit, stats):
    return brier.token_lm_continuations(run, contexts, rng, max_new_bytes,
                                        temperature, unit, stats)

  # --- what a run says about itself ---------------------------------------
  @classmethod
  def describe(cls, config) -> str:
    m = config.model
    return (f'{config.task} {config.data.tokenizer} d={m.d_model} '
            f'L={m.num_layers} seq={config.data.seq_len}')

  @classmethod
  def metric_units(cls, config) -> dict[str, base.Unit]:
    del config
    return dict(bits_per_byte=base.Unit('bits/byte'),
                accuracy=base.Unit('% tokens', base.PERCENT),
                loss=base.Unit('nats/token'))
