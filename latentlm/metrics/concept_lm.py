"""Evaluation-only metrics of a concept LM over held-out batches.

  latent_l2:     |z - mu| of one head sample z (temperature 1) against the
                 true next chunk's normalised posterior mean mu.
  roundtrip_l2:  the sample decoded to tokens (argmax), re-encoded to its
                 normalised posterior mean, against mu (LCM): what the sample
                 means as text, not where it landed in latent space.
  gmm_nll:       -log p(mu | h) in nats per concept, only for the gmm head
                 (the others have no likelihood). A density in the normalised
                 latent space: comparable across gmm runs of one autoencoder.
  loss:          the head's training loss at eval (targets drawn as in
                 training), and its parts head_loss and token_ce when the
                 token head is on.

All are means over real next chunks (not all-pad), like the task's loss.
One pass over the batches computes them all from one head sample per
concept: flow and diffusion heads sample in many network passes, the
evaluation's main cost.
"""

import jax
import jax.numpy as jnp

from latentlm.core import sharding


# The loss's target noise and head randomness come from their own stream,
# apart from the sample's, so either can change without moving the other.
_LOSS_STREAM = 1


def _sums(task, params, frozen, tokens_BxS1xK, rng):
  """Sums over real next chunks, and the counts they are means over."""
  terms = task.head_terms(params, frozen, tokens_BxS1xK, *jax.random.split(
      jax.random.fold_in(rng, _LOSS_STREAM)))
  real_N, next_mu_NxZ = terms['real_N'], terms['next_mean_NxZ']
  sample_NxZ = task.model.apply({'params': params}, terms['h_NxD'], rng, 1.0,
                                method='sample')
  decoded_Nx1xK = task.decode(frozen, sample_NxZ)[:, None]
  roundtrip_NxZ = task.encode(frozen, decoded_Nx1xK)[0][:, 0]
  sums = dict(
      latent_l2=jnp.linalg.norm(sample_NxZ - next_mu_NxZ, axis=-1) @ real_N,
      roundtrip_l2=jnp.linalg.norm(roundtrip_NxZ - next_mu_NxZ,
                                   axis=-1) @ real_N,
      loss=terms['loss_N'] @ real_N,
      **{name: value_N @ real_N
         for name, value_N in terms['metrics_N'].items()})
  if task.config.head.name == 'gmm':
    log_p_N = task.model.apply({'params': params}, terms['h_NxD'],
                               next_mu_NxZ,
                               method=lambda m, h, z: m.head.log_prob(h, z))
    sums['gmm_nll'] = -log_p_N @ real_N
  counts = dict(num_concepts=real_N.sum(), num_bytes=task.next_chunk_bytes(
      terms['next_tokens_NxK']).sum())
  return sums, counts


def concept_lm_metrics(run, batches, seed: int = 0) -> dict:
  """The metrics above, num_concepts and num_bytes (of the next chunks)."""
  task = run.task
  sums_fn = jax.jit(lambda params, frozen, tokens, rng: _sums(
      task, params, frozen, tokens, rng))
  totals, counts = {}, dict(num_concepts=0.0, num_bytes=0.0)
  rng = jax.random.key(seed)
  with run.trainer.context():
    for i, batch in enumerate(run.trainer.lockstep_batches(batches)):
      tokens = sharding.global_batch(batch, run.trainer.mesh)['tokens']
      sums, batch_counts = jax.device_get(sums_fn(
          run.state.params, run.state.frozen, tokens,
          jax.random.fold_in(rng, i)))
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + float(value)
      for name, value in batch_counts.items():
        counts[name] += float(value)
  num_concepts = max(counts['num_concepts'], 1.0)
  # Mean bytes of text a concept stands for: K for fixed chunks, the mean
  # unit length for word and entropy units.
  return dict({name: value / num_concepts for name, value in totals.items()},
              bytes_per_concept=counts['num_bytes'] / num_concepts, **counts)
