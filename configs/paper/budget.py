"""Equal training FLOPs (steps from a FLOPs budget) and equal parameters
(layers from a parameter count) for the paper studies.

Not a config: the configs in this folder import it (through study.py)
to set `train.num_steps` so that a run's all-in training FLOPs
(latentlm.tasks.flops.all_in_flops: the stages it builds on, then num_steps x the
FLOPs of its step) match a stated budget. All in, because a concept LM
cannot run without its stage 1, and its step runs the frozen encoder and
the auxiliary token readout: a budget that left them out would hand the
concept LM compute that its token baseline never gets. Figures per study:
docs/results/<study>.md.
"""

from latentlm.core.errors import UserError
from latentlm.tasks import flops

# The CPU-scale all-in budget every equal-FLOPs study shares: a token LM
# spends it all on its steps, a concept LM what its stage 1 leaves on stage
# 2 (about as much as the studies gave stage 2 alone when stage 1 went
# uncounted). Small, so that every study fits in 30 minutes on 2 CPU cores.
CPU_BUDGET_FLOPS = 6e12


def steps_for_budget(config, budget_flops: float, autoencoder=None,
                     entropy=None) -> int:
  """Optimizer steps of `config` whose all-in training FLOPs are closest to
  `budget_flops` (a concept LM's stage-1 config is `autoencoder`, the byte LM
  that cuts entropy units `entropy`): what its upstream stages leave, over
  the FLOPs of one step."""
  upstream = flops.upstream_flops(config, autoencoder, entropy=entropy)
  if upstream >= budget_flops:
    raise UserError(
        f'the stages a {config.task} run builds on take {upstream:.3g} '
        f'FLOPs, more than its budget of {budget_flops:.3g}: raise the budget '
        'or shorten them')
  per_step = flops.train_flops_per_step(config, autoencoder, entropy=entropy)
  return max(1, round((budget_flops - upstream) / per_step))


def set_budget(config, budget_flops: float, autoencoder=None,
               num_evals: int = 3, entropy=None):
  """Sets num_steps for `budget_flops`, evaluating (and checkpointing)
  `num_evals` times along the way so the report can plot against FLOPs."""
  steps = steps_for_budget(config, budget_flops, autoencoder, entropy)
  config.train.num_steps = steps
  # Rounded up, so the last evaluation is the final step's (the train loop
  # always evaluates and saves there) and not one more a few steps before it.
  config.train.eval_every = max(1, -(-steps // num_evals))
  config.train.checkpoint_every = config.train.eval_every
  config.train.log_every = max(1, min(config.train.log_every, steps // 10))
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps,
                                      max(1, steps // 10))
  return config


def budget_flops_of(config, autoencoder=None, entropy=None) -> float:
  """The all-in training FLOPs `config` spends at its num_steps."""
  return flops.all_in_flops(config, config.train.num_steps, autoencoder,
                            entropy=entropy)


def concept_lm_params(config, autoencoder) -> int:
  """Trained parameters of a concept LM over `autoencoder` (a config):
  backbone, input, head and auxiliary token readout; counted abstractly."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from latentlm.models import transformer  # pylint: disable=g-import-not-at-top
  from latentlm import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get_task(config, autoencoder=autoencoder)
  if task.input_kind == 'tokens':
    inputs = jnp.zeros((1, 2, task.chunk_len), jnp.int32)
  else:
    inputs = jnp.zeros((1, 2, task.latent_dim), jnp.float32)
  z = jnp.zeros((2, config.head_targets, task.latent_dim))
  init = lambda rng: task.model.init(rng, inputs, z, rng, method='init_all')
  params = jax.eval_shape(init, jax.random.key(0))['params']
  return transformer.param_count(params)


def token_lm_params(config) -> int:
  """Parameters of a token LM config (vocabulary from config.model)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from latentlm.models import token_lm  # pylint: disable=g-import-not-at-top
  from latentlm.models import transformer  # pylint: disable=g-import-not-at-top
  model_config = transformer.TransformerConfig.from_config(
      config.model, vocab_size=config.model.vocab_size)
  params = jax.eval_shape(token_lm.TokenLM(model_config).init,
                          jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  return transformer.param_count(params)


def layers_for_params(config, num_params: int) -> int:
  """The num_layers that brings token LM `config` closest to `num_params`
  (parameters grow linearly with layers)."""
  one = config.copy_and_resolve_references()
  one.model.num_layers = 1
  two = config.copy_and_resolve_references()
  two.model.num_layers = 2
  base = token_lm_params(one)
  per_layer = token_lm_params(two) - base
  return max(1, round(1 + (num_params - base) / per_layer))
