"""Token LM sampling: the KV-cached stream against full recomputation."""

import flax.linen as nn
import jax
import numpy as np

import helpers
from latentlm import tasks
from latentlm.sampling import tokens as token_sampling

WINDOW = 8


def _sampler(**kwargs):
  config = helpers.tiny_token_lm('unused')  # the byte tokenizer reads no data
  config.data.seq_len = WINDOW
  config.model.max_len = WINDOW
  task = tasks.get_task(config)
  assert task.model_config.scan_layers  # the sampler unrolls it on CPU
  params, _ = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0)))
  return task, params, token_sampling.TokenSampler(task, params, **kwargs)


def test_stream_equals_sampling_from_the_full_context_across_refills():
  task, params, sampler = _sampler()
  prompt_BxL = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
  rng, steps, temperature, top_p = jax.random.key(1), 20, 1.5, 0.9
  streamed_SxB = np.stack(list(sampler.stream(prompt_BxL, rng, steps,
                                              temperature, top_p)))

  @jax.jit
  def next_tokens(context_BxL, step_rng):
    logits_BxLxV, _ = task.model.apply({'params': params}, context_BxL)
    return token_sampling.sample_logits(logits_BxLxV[:, -1], step_rng,
                                        temperature, top_p)

  # What the sampler's window holds: the last half of it after each refill.
  context_BxL = prompt_BxL[:, -(WINDOW // 2):]
  for i in range(steps):
    expected_B = next_tokens(context_BxL, jax.random.fold_in(rng, i))
    np.testing.assert_array_equal(streamed_SxB[i], expected_B)
    context_BxL = np.concatenate([context_BxL, streamed_SxB[i][:, None]], 1)
    if context_BxL.shape[1] > WINDOW:
      context_BxL = context_BxL[:, -(WINDOW // 2):]
  assert len(np.unique(streamed_SxB)) > 2  # it samples, it does not stall


def test_stream_dispatches_each_step_before_yielding_the_last():
  _, _, sampler = _sampler()
  dispatched = []
  step = sampler._step  # pylint: disable=protected-access
  sampler._step = lambda *args: dispatched.append(args[4]) or step(*args)
  stream = sampler.stream(np.array([[1, 2]], np.int32), jax.random.key(1), 3,
                          1.0, 0.9)
  next(stream)
  assert dispatched == [0, 1]
  assert len(list(stream)) == 2 and dispatched == [0, 1, 2]


def test_stream_is_the_same_with_the_layer_scan_unrolled_or_not():
  prompt_BxL = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
  unrolled, scanned = (
      np.stack(list(_sampler(unroll_layers=unroll)[2].stream(
          prompt_BxL, jax.random.key(1), 12, 1.5, 0.9)))
      for unroll in (True, False))
  np.testing.assert_array_equal(unrolled, scanned)
