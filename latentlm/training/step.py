"""The pure train and eval steps, generic over tasks.

A task supplies `loss(params, frozen, batch, rng, train) -> (loss, metrics)`;
`frozen` holds parameters the optimizer never touches (a stage-1 encoder).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any
  opt_state: Any
  frozen: Any  # not trained; restored and checkpointed with the rest


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warmup then cosine decay to min_lr_ratio * peak.

  The decay length is `decay_steps`, or `num_steps` when that is 0; fixing it
  lets a run be extended without changing the schedule it already followed.
  """
  num_steps = opt_config.decay_steps or num_steps
  peak = opt_config.learning_rate
  warmup = min(opt_config.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1),
      end_value=peak * opt_config.min_lr_ratio)


def make_optimizer(opt_config, num_steps: int,
                   trainable=None) -> optax.GradientTransformation:
  """AdamW with clipping; weight decay only on matrices, not norms or biases.

  `trainable(params)`: bools in a tree like params or a prefix of it; the
  False subtrees never change and keep no optimizer state (a task that
  trains part of its params, e.g. head_distill). None: all train.
  """
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.chain(
      optax.clip_by_global_norm(opt_config.grad_clip),
      optax.adamw(learning_rate_schedule(opt_config, num_steps),
                  b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                  weight_decay=opt_config.weight_decay, mask=decay_mask))
  if trainable is None:
    return adamw
  labels = lambda params: jax.tree.map(
      lambda train: 'train' if train else 'frozen', trainable(params))
  return optax.multi_transform(
      {'train': adamw, 'frozen': optax.set_to_zero()}, labels)


def init_state(params, frozen, optimizer) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), frozen=frozen)


def _split_microbatches(batch, num_micro: int):
  """[B, ...] -> [num_micro, B // num_micro, ...] for each array."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f'batch of {x.shape[0]} does not split into '
                       f'{num_micro} microbatches')
    return x.reshape(num_micro, x.shape[0] // num_micro, *x.shape[1:])
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch, rng, *, loss_fn: Callable,
               optimizer: optax.GradientTransformation,
               grad_accum_steps: int = 1, skip_nonfinite: bool = False):
  """One optimizer update; returns (new_state, metrics).

  The rng is folded with the step, so a resumed run draws the same noise as an
  uninterrupted one. Gradient accumulation averages microbatch gradients.
  With `skip_nonfinite`, an update whose loss or gradient is not finite is
  dropped (the step counter still advances, so the data order is kept).
  """
  rng = jax.random.fold_in(rng, state.step)

  def grad_of(micro_batch, micro_rng):
    def objective(params):
      return loss_fn(params, state.frozen, micro_batch, micro_rng, True)
    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    return grads, dict(metrics, loss=loss)

  if grad_accum_steps == 1:
    grads, metrics = grad_of(batch, rng)
  else:
    micro_batches = _split_microbatches(batch, grad_accum_steps)
    micro_rngs = jax.random.split(rng, grad_accum_steps)

    def accumulate(grad_sum, micro):
      grads, metrics = grad_of(*micro)
      return jax.tree.map(jnp.add, grad_sum, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grad_sum, metrics = jax.lax.scan(accumulate, zeros,
                                     (micro_batches, micro_rngs))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
    metrics = jax.tree.map(jnp.mean, metrics)

  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['grad_norm'] = optax.tree.norm(grads)
  if skip_nonfinite:
    # Keep the old params and optimizer state when this update is not finite.
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    metrics['skipped_updates'] = 1.0 - finite.astype(jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch, rng, *, loss_fn: Callable):
  """Metrics of one batch without dropout or noise."""
  loss, metrics = loss_fn(state.params, state.frozen, batch, rng, False)
  return dict(metrics, loss=loss)
