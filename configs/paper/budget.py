"""Equal training FLOPs (steps from a FLOPs budget) and equal parameters
(layers from a parameter count) for the paper studies.

Not a config: the configs in this folder load it by path (through study.py)
to set `train.num_steps` so that num_steps x latentlm.flops.
train_flops_per_step(config) matches a stated budget. The concept LM's
budget counts stage 2 only: the frozen stage-1 encoder prepares data like a
tokenizer (latentlm/flops.py); stage 1's own training is reported beside it.
"""

from latentlm import config_lib
from latentlm import flops

# The CPU-scale stage-2 budget every equal-FLOPs study shares: 180 steps of
# the flow-head tiny concept LM of configs/shakespeare.py (16 rows x 64
# concepts, 1.67e10 FLOPs a step), 60 of the tiny byte-token LM (5.0e10).
# Small, so that every study fits in 30 minutes on 2 CPU cores: at 5e12 the
# chunk-size study took about 37 and the token baseline 45 (README).
CPU_BUDGET_FLOPS = 3e12


def config_file(path: str, arg: str = ''):
  """get_config(arg) of configs/PATH.py (PATH relative to configs/)."""
  return config_lib.config_beside(__file__, f'../{path}', arg)


def steps_for_budget(config, budget_flops: float, autoencoder=None) -> int:
  """Optimizer steps of `config` whose training FLOPs are closest to
  `budget_flops` (a concept LM's stage-1 config is `autoencoder`)."""
  per_step = flops.train_flops_per_step(config, autoencoder)
  return max(1, round(budget_flops / per_step))


def set_budget(config, budget_flops: float, autoencoder=None,
               num_evals: int = 3):
  """Sets num_steps for `budget_flops`, evaluating (and checkpointing)
  `num_evals` times along the way so the report can plot against FLOPs."""
  steps = steps_for_budget(config, budget_flops, autoencoder)
  config.train.num_steps = steps
  # Rounded up, so the last evaluation is the final step's (train.py always
  # evaluates and saves there) and not one more a few steps before it.
  config.train.eval_every = max(1, -(-steps // num_evals))
  config.train.checkpoint_every = config.train.eval_every
  config.train.log_every = max(1, min(config.train.log_every, steps // 10))
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps,
                                      max(1, steps // 10))
  return config


def budget_flops_of(config, autoencoder=None) -> float:
  """The training FLOPs `config` spends: steps x FLOPs per step."""
  return config.train.num_steps * flops.train_flops_per_step(config,
                                                             autoencoder)


def concept_lm_params(config, autoencoder) -> int:
  """Trained parameters of a concept LM over `autoencoder` (a config):
  backbone, input, head and auxiliary token readout; counted abstractly."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from latentlm.models import transformer  # pylint: disable=g-import-not-at-top
  from latentlm.tasks import concept_lm  # pylint: disable=g-import-not-at-top
  task = concept_lm.Task(config, autoencoder_config=autoencoder)
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
