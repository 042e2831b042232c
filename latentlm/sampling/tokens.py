"""Token LM sampling: token by token with a KV cache (temperature, top-p);
when the context is full, the cache is refilled from the last half of the
window."""

import codecs

import jax
import jax.numpy as jnp
import numpy as np

from latentlm import sampling
from latentlm.core.errors import UserError
from latentlm.models import transformer
from latentlm.sampling import concepts as concept_sampling


def check_sampling_args(temperature: float, top_p: float, max_bytes: int):
  if temperature < 0:
    raise UserError(f'--temperature={temperature} must be >= 0 (0 = greedy)')
  if not 0 < top_p <= 1:
    raise UserError(f'--top_p={top_p} must be in (0, 1]')
  if max_bytes <= 0:
    raise UserError(f'--max_bytes={max_bytes} must be positive')


def sample_logits(logits_BxV, rng, temperature: float, top_p: float):
  """Temperature and nucleus (top-p) sampling; temperature 0 is greedy."""
  if temperature == 0:
    return logits_BxV.argmax(-1)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_p < 1:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    # The smallest logit still inside the nucleus; the top token always is.
    kept_BxV = jnp.where(mass_before_BxV < top_p, sorted_BxV, jnp.inf)
    threshold_Bx1 = kept_BxV.min(axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1)


class TokenSampler:
  """KV-cached sampling from a token LM task's model. `unroll_layers`
  (default: on CPU) decodes with the layer scan unrolled
  (transformer.unrolled_layers): the same samples, faster there."""

  def __init__(self, task, params, unroll_layers=None):
    self.task = task
    self.cfg = task.model_config
    self.window = self.cfg.max_len
    model, params = transformer.for_decoding(task.model, params,
                                             unroll_layers)
    # The params, passed as one list, flattened once
    # (concept_sampling.on_leaves).
    self.weights, weights_def = jax.tree.flatten((params,))

    def forward(params, tokens_BxL, cache):
      logits_BxLxV, cache = model.apply({'params': params}, tokens_BxL,
                                        cache=cache)
      return logits_BxLxV[:, -1], cache

    def sample(logits_BxV, rng, i, temperature, top_p):
      return sample_logits(logits_BxV, jax.random.fold_in(rng, i),
                           temperature, top_p)

    def step(params, logits_BxV, cache, rng, i, temperature, top_p):
      """Samples the next tokens and feeds them back: one dispatch a step,
      as a concept LM's step is. The cache is donated: updated in place."""
      tokens_B = sample(logits_BxV, rng, i, temperature, top_p)
      return (tokens_B, *forward(params, tokens_B[:, None], cache))

    self._sample = jax.jit(sample, static_argnums=(3, 4))
    self._forward = jax.jit(concept_sampling.on_leaves(forward, weights_def))
    self._step = jax.jit(concept_sampling.on_leaves(step, weights_def),
                         static_argnums=(5, 6), donate_argnums=2)

  def _prefill(self, tokens_BxL):
    cache = transformer.init_cache(self.cfg, tokens_BxL.shape[0], self.window)
    return self._forward(self.weights, jnp.asarray(tokens_BxL), cache)

  def stream(self, prompt_BxL: np.ndarray, rng, max_new: int,
             temperature: float, top_p: float, first_allowed=None):
    """Yields the next token of every row, max_new times (EOS included).

    `first_allowed`, booleans over the tokenizer's ids, restricts the first
    token to those ids: sampling from the model's next-token distribution
    renormalised over them, so the rest is drawn conditioned on that first
    token's class (BrierLM's next-byte condition). Step i samples with
    fold_in(rng, i). Step i + 1 is dispatched before
    step i's tokens are read, as in the concept LM's stream (its input, the
    logits, stays on the device).
    """
    context_BxL = prompt_BxL[:, -(self.window // 2):]
    logits_BxV, cache = self._prefill(context_BxL)
    if first_allowed is not None:
      allowed_V = np.zeros(logits_BxV.shape[-1], bool)
      allowed_V[:len(first_allowed)] = first_allowed[:len(allowed_V)]
      logits_BxV = jnp.where(allowed_V, logits_BxV, -jnp.inf)
    history = [context_BxL]
    cached = context_BxL.shape[1]  # counted here: no device sync a step
    unread = None  # the last step's tokens, still on the device

    def read(tokens_B):
      tokens_B = np.asarray(tokens_B)
      history.append(tokens_B[:, None])
      return tokens_B

    for i in range(max_new):
      if cached < self.window:
        tokens_B, logits_BxV, cache = self._step(
            self.weights, logits_BxV, cache, rng, i, temperature, top_p)
        cached += 1
        if unread is not None:
          yield read(unread)
        unread = tokens_B
      else:  # no room for the new tokens: refill with them
        if unread is not None:
          yield read(unread)
          unread = None
        tokens_B = read(self._sample(logits_BxV, rng, i, temperature, top_p))
        recent_BxL = np.concatenate(history, axis=1)[:, -(self.window // 2):]
        history[:] = [recent_BxL]
        logits_BxV, cache = self._prefill(recent_BxL)
        cached = recent_BxL.shape[1]
        yield tokens_B
    if unread is not None:
      yield read(unread)


def token_lm_texts(run, prompt: str, num_samples: int, rng,
                   temperature=sampling.TEMPERATURE, top_p=sampling.TOP_P,
                   max_bytes=sampling.MAX_BYTES, on_text=None) -> list[str]:
  """Samples continuations of `prompt`; `on_text` receives sample 0's pieces."""
  tokenizer = run.task.tokenizer
  prompt_ids = np.concatenate([[tokenizer.eos_id], tokenizer.encode(prompt)])
  context = run.task.model_config.max_len
  if len(prompt_ids) > context:
    raise UserError(f'the prompt is {len(prompt_ids)} tokens but the model\'s '
                    f'context is {context}; shorten --prompt')
  prompt_BxL = np.tile(prompt_ids.astype(np.int32), (num_samples, 1))
  sampler = TokenSampler(run.task, run.state.params)
  outputs = [[] for _ in range(num_samples)]
  done = np.zeros(num_samples, bool)
  decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
  for tokens_B in sampler.stream(prompt_BxL, rng, max_bytes, temperature,
                                 top_p):
    done |= tokens_B == tokenizer.eos_id
    for i in np.flatnonzero(~done):
      outputs[i].append(int(tokens_B[i]))
    if on_text is not None and not done[0]:
      on_text(decoder.decode(tokenizer.decode_bytes([int(tokens_B[0])])))
    if done.all():
      break
  return [tokenizer.decode(ids) for ids in outputs]
