"""How well a trained autoencoder gives text back: metrics and round trips.

Both decode the encoder's posterior MEAN, greedily, and under Gaussian noise
of standard deviation sigma added to it: the robustness a stage-2 model
needs, since its predicted vectors are never exact.
"""

import jax
import jax.numpy as jnp
import numpy as np

from latentlm import sampling
from latentlm.core import sharding
from latentlm.data import corpus
from latentlm.data import segment

NOISE_STDS = (0.1, 0.3, 0.5)


def reconstruction_counts(logits_NxKxV, tokens_NxK, pad_id) -> dict:
  """Sums for token accuracy (real tokens) and exact chunks (real chunks)."""
  real_NxK = tokens_NxK != pad_id
  real_N = real_NxK.any(-1)
  right_NxK = logits_NxKxV.argmax(-1) == tokens_NxK
  return dict(
      tokens_right=(right_NxK & real_NxK).sum(),
      num_tokens=real_NxK.sum(),
      chunks_exact=(right_NxK.all(-1) & real_N).sum(),
      num_chunks=real_N.sum())


def _decoded_with_noise(task, params, tokens_NxK, rng, noise_stds):
  """logits_NxKxV from mean + sigma * N(0, 1), for each sigma (0 included)."""
  mean_NxZ, _ = task.encode(params, tokens_NxK)
  for i, sigma in enumerate(noise_stds):
    noise_NxZ = jax.random.normal(jax.random.fold_in(rng, i), mean_NxZ.shape)
    yield task.decode(params, mean_NxZ + sigma * noise_NxZ)


def reconstruction_metrics(run, batches, seed: int = 0) -> dict:
  """token_acc and chunk_exact, clean and under each noise sigma on z, over
  every real chunk of `batches`; num_bytes is the real tokens counted."""
  task = run.task
  K = task.config.segment.chunk_len
  suffixes = [''] + [f'_noise_{sigma}' for sigma in NOISE_STDS]

  @jax.jit
  def counts(params, tokens, rng):
    tokens_NxK = tokens.reshape(-1, K)
    logits = _decoded_with_noise(task, params, tokens_NxK, rng,
                                 (0.0,) + NOISE_STDS)
    return [reconstruction_counts(l, tokens_NxK, task.pad_id) for l in logits]

  totals = [dict() for _ in suffixes]
  rng = jax.random.key(seed)
  with run.trainer.context():
    for i, batch in enumerate(run.trainer.lockstep_batches(batches)):
      tokens = sharding.global_batch(batch, run.trainer.mesh)['tokens']
      batch_counts = jax.device_get(counts(run.state.params, tokens,
                                           jax.random.fold_in(rng, i)))
      for total, new in zip(totals, batch_counts):
        for name, value in new.items():
          total[name] = total.get(name, 0) + int(value)
  metrics = {}
  for suffix, total in zip(suffixes, totals):
    metrics[f'token_acc{suffix}'] = (total.get('tokens_right', 0) /
                                     max(total.get('num_tokens', 0), 1))
    metrics[f'chunk_exact{suffix}'] = (total.get('chunks_exact', 0) /
                                       max(total.get('num_chunks', 0), 1))
  metrics['num_bytes'] = totals[0].get('num_tokens', 0)
  metrics['bytes_per_concept'] = (metrics['num_bytes'] /
                                  max(totals[0].get('num_chunks', 0), 1))
  return metrics


def autoencoder_texts(run, prompt: str, num_samples: int, rng,
                      noise_std: float = 0.3) -> list[str]:
  """`prompt` through the latent and back, `num_samples` times.

  Text 0 decodes the encoder mean; the others decode the mean plus Gaussian
  noise `noise_std`, to show how robust the latent is. An empty prompt
  round-trips the first sampling.MAX_BYTES bytes of the held-out split.
  """
  task = run.task
  if not prompt:
    data = run.config.data
    prompt = corpus.split_texts(data, data.eval_split)[0][:sampling.MAX_BYTES]
  chunks_MxK = task.unit_fn(task.tokenizer.encode(prompt))
  if not len(chunks_MxK):
    return [''] * num_samples
  noise_stds = (0.0,) + (noise_std,) * (num_samples - 1)

  @jax.jit
  def round_trips(params, tokens_MxK):
    return jnp.stack([logits_MxKxV.argmax(-1) for logits_MxKxV in
                      _decoded_with_noise(task, params, tokens_MxK, rng,
                                          noise_stds)])

  with run.trainer.context():
    decoded_SxMxK = np.asarray(round_trips(run.state.params, chunks_MxK))
  return [task.tokenizer.decode(segment.join(decoded_MxK, task.pad_id))
          for decoded_MxK in decoded_SxMxK]
