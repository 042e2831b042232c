"""Evaluation-only metrics of a concept LM over held-out batches.

  latent_l2:     |z - mu| of one head sample z (temperature 1) against the
                 true next chunk's normalised posterior mean mu.
  roundtrip_l2:  the sample decoded to tokens (argmax), re-encoded to its
                 normalised posterior mean, against mu (LCM): what the sample
                 means as text, not where it landed in latent space.
  gmm_nll:       -log p(mu | h) in nats per concept, only for the gmm head
                 (the others have no likelihood). A density in the normalised
                 latent space: comparable across gmm runs of one autoencoder.
  loss:          the head's training loss at eval (targets as in training).

All are means over real next chunks (not all-pad), like the task's loss.
"""

import jax
import jax.numpy as jnp

from latentlm import train


def _sums(task, params, frozen, tokens_BxS1xK, rng):
  """Sums over real next chunks, and their count."""
  B, S1, K = tokens_BxS1xK.shape
  N = B * (S1 - 1)
  mean_BxS1xZ, _ = task.encode(frozen, tokens_BxS1xK)
  inputs = task.model_inputs(frozen, tokens_BxS1xK[:, :-1],
                             mean_BxS1xZ[:, :-1])
  h_BxSxD, _ = task.model.apply({'params': params}, inputs)
  h_NxD = h_BxSxD.reshape(N, -1)
  next_mu_NxZ = mean_BxS1xZ[:, 1:].reshape(N, -1)
  sample_NxZ = task.model.apply({'params': params}, h_NxD, rng, 1.0,
                                method='sample')
  decoded_Nx1xK = task.decode(frozen, sample_NxZ)[:, None]
  roundtrip_NxZ = task.encode(frozen, decoded_Nx1xK)[0][:, 0]
  real_N = (tokens_BxS1xK[:, 1:].reshape(N, K) != task.pad_id).any(-1)
  real_N = real_N.astype(jnp.float32)
  sums = dict(
      latent_l2=jnp.linalg.norm(sample_NxZ - next_mu_NxZ, axis=-1) @ real_N,
      roundtrip_l2=jnp.linalg.norm(roundtrip_NxZ - next_mu_NxZ,
                                   axis=-1) @ real_N)
  if task.config.head.name == 'gmm':
    log_p_N = task.model.apply({'params': params}, h_NxD, next_mu_NxZ,
                               method=lambda m, h, z: m.head.log_prob(h, z))
    sums['gmm_nll'] = -log_p_N @ real_N
  return sums, real_N.sum()


def concept_lm_metrics(run, batches, seed: int = 0) -> dict:
  """latent_l2, roundtrip_l2, gmm_nll (gmm head), num_concepts, num_bytes."""
  task = run.task
  sums_fn = jax.jit(lambda params, frozen, tokens, rng: _sums(
      task, params, frozen, tokens, rng))
  totals, count = {}, 0.0
  rng = jax.random.key(seed)
  with run.trainer.context():
    for i, batch in enumerate(batches):
      tokens = train.global_batch(batch, run.trainer.mesh)['tokens']
      sums, n = jax.device_get(sums_fn(run.state.params, run.state.frozen,
                                       tokens, jax.random.fold_in(rng, i)))
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + float(value)
      count += float(n)
  metrics = {name: value / max(count, 1.0) for name, value in totals.items()}
  metrics['num_concepts'] = count
  return metrics


def concept_lm_eval(run, batches) -> dict:
  """The task's own eval loss and bytes, plus the metrics above."""
  batches = list(batches)
  loss_metrics = run.trainer.evaluate(run.state, iter(batches),
                                      max_batches=10**9)
  metrics = concept_lm_metrics(run, batches)
  return dict(metrics, loss=loss_metrics['loss'],
              num_bytes=loss_metrics['num_bytes'])
