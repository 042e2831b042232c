"""Head distillation (stage 3): a flow head that samples in one network pass.

`config.teacher_workdir` names a trained concept LM (stage 2) with a flow
head. This run starts from all of its params and trains only a copy of its
head, sampled with `config.head`'s own settings (the main job's: one Euler
step, no guidance), to land where the teacher's ODE lands from the same
initial noise (knowledge distillation of a deterministic sampler, Luhman &
Luhman 2021). The teacher's head stays in `frozen`.

The loss weighs two terms per concept: `distill.latent_weight` times the
squared distance to the teacher's latent, and `distill.token_weight` times
the decoder's cross-entropy of the student's latent against the tokens the
teacher's latent decodes to. The second asks only for the teacher's text,
not its exact point, and on the main job's teacher it spelt the samples
better than the squared distance alone (docs/results/main_job.md).
The noise is drawn at temperatures uniform in [distill.temperature_min,
temperature_max]: a student is only distilled where it is trained, and the
main job samples at one temperature.

The run is a concept LM in every other way (its config has every field of
configs/concept_lm.py), so evaluate, generate and BrierLM take its workdir.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from latentlm import runs
from latentlm import workdir as workdir_lib
from latentlm.errors import UserError
from latentlm.models import heads
from latentlm.tasks import concept_lm


def load_teacher_config(path: str):
  """The stage-2 config of `path`, or a one-line UserError."""
  config = workdir_lib.load_stage_config(
      path, 'teacher_workdir', 'concept_lm', 'a concept_lm',
      'a trained concept LM workdir with a flow head (configs/concept_lm.py)')
  if config.head.name != 'flow':
    raise UserError(f'config.teacher_workdir={path!r} has a '
                    f'{config.head.name!r} head; distillation needs a flow '
                    'head, whose sampler is deterministic given its noise')
  return config


# The head's fields a student may set apart from its teacher's.
SAMPLING_FIELDS = ('num_steps', 'solver', 'guidance_scale')
# Top-level fields that add params (the auxiliary token head).
_NETWORK_FIELDS = ('token_loss_weight',)


def _paths(tree):
  return {jax.tree_util.keystr(path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class Task(concept_lm.Task):
  """A concept LM whose head is trained to match a teacher's samples."""

  def __init__(self, config):
    teacher_config = load_teacher_config(config.teacher_workdir)
    if config.head.name != 'flow':
      raise UserError(f'config.head.name={config.head.name!r}: the student '
                      'is a flow head, like its teacher')
    if not config.autoencoder_workdir:  # the teacher's stage 1
      config = config.copy_and_resolve_references()
      config.autoencoder_workdir = teacher_config.autoencoder_workdir
    super().__init__(config)
    self.distill = config.distill
    if not 0 <= self.distill.temperature_min <= self.distill.temperature_max:
      raise UserError(
          'config.distill needs 0 <= temperature_min <= temperature_max, got '
          f'{self.distill.temperature_min} and {self.distill.temperature_max}')
    self.teacher_head = heads.make_head(teacher_config.head, self.latent_dim)
    teacher = runs.load(config.teacher_workdir)
    self._teacher_params = jax.device_get(teacher.state.params)
    self._check_same_architecture(teacher_config)

  def _check_same_architecture(self, teacher_config):
    """The student must be the teacher's network: it starts from its
    weights, and only the sampling settings of config.head may differ."""
    student = _paths(nn.meta.unbox(
        jax.eval_shape(super().init, jax.random.key(0))[0]))
    teacher = _paths(self._teacher_params)
    if student == teacher:
      return
    differing = sorted(set(student.items()) ^ set(teacher.items()))[0][0]
    # The fields that build the network, as the teacher's config has them.
    fixes = [f'--config.{key}={teacher_config.get(key)}'
             for key in _NETWORK_FIELDS
             if self.config.get(key) != teacher_config.get(key)]
    fixes += [f'--config.{section}.{key}={value}'
              for section in ('model', 'head')
              for key, value in teacher_config[section].items()
              if key not in SAMPLING_FIELDS
              and self.config[section].get(key) != value]
    teacher_json = workdir_lib.Workdir(self.config.teacher_workdir).config_path
    raise UserError(
        f'the student must be the teacher\'s network ({differing} differs); '
        f'set {" ".join(fixes) or "config.model and config.head"} as in '
        f'{teacher_json}')

  def init(self, rng):
    """The teacher's params (the student head starts as the teacher's);
    frozen: stage 1 and the teacher's head."""
    fresh, frozen = super().init(rng)
    params = jax.tree.map(
        lambda box, value: box.replace_boxed(jnp.asarray(value))
        if isinstance(box, nn.Partitioned) else jnp.asarray(value),
        fresh, self._teacher_params,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return params, dict(frozen, teacher_head=params['head'])

  @staticmethod
  def trainable(params):
    """Only the head trains: the backbone is the teacher's, kept as is.
    (A prefix of params: a frozen module keeps no optimizer state at all.)"""
    return {name: name == 'head' for name in params}

  def loss(self, params, frozen, batch, rng, train):
    """Per real concept, the weighted distance of the student's sample to
    the teacher's from the same noise; metrics `latent_se`, `token_ce` and
    `chunk_agreement` (the student's chunk decodes to the teacher's)."""
    del train  # the same draws in training and evaluation
    tokens_BxS1xK = batch['tokens']
    B, S1, _ = tokens_BxS1xK.shape
    N, Z = B * (S1 - 1), self.latent_dim
    params = dict(params, **{k: jax.lax.stop_gradient(v)
                             for k, v in params.items() if k != 'head'})
    inputs = self.model_inputs(frozen, tokens_BxS1xK[:, :-1])
    h_BxSxD, _ = self.model.apply({'params': params}, inputs)
    h_NxD = h_BxSxD.reshape(N, -1)

    noise_rng, temperature_rng = jax.random.split(rng)
    temperature_Nx1 = jax.random.uniform(
        temperature_rng, (N, 1), minval=self.distill.temperature_min,
        maxval=self.distill.temperature_max)
    x_NxZ = temperature_Nx1 * jax.random.normal(noise_rng, (N, Z))
    teacher_NxZ = jax.lax.stop_gradient(self.teacher_head.apply(
        {'params': frozen['teacher_head']}, h_NxD, x_NxZ,
        method='sample_from_noise'))
    student_NxZ = self.head.apply({'params': params['head']}, h_NxD, x_NxZ,
                                  method='sample_from_noise')

    teacher_tokens_NxK = self.decode(frozen, teacher_NxZ)
    logits_NxKxV = self.decode_logits(frozen, student_NxZ)
    token_ce_N = optax.softmax_cross_entropy_with_integer_labels(
        logits_NxKxV, teacher_tokens_NxK).sum(-1)
    latent_se_N = jnp.sum(jnp.square(student_NxZ - teacher_NxZ), -1)
    agree_N = jnp.all(logits_NxKxV.argmax(-1) == teacher_tokens_NxK, -1)
    loss_N = (self.distill.token_weight * token_ce_N +
              self.distill.latent_weight * latent_se_N)

    real_N = (tokens_BxS1xK[:, 1:] != self.pad_id).any(-1).reshape(N)
    real_N = real_N.astype(jnp.float32)
    num_concepts = jnp.maximum(real_N.sum(), 1.0)
    mean = lambda value_N: value_N @ real_N / num_concepts
    bytes_N = self.next_chunk_bytes(tokens_BxS1xK[:, 1:].reshape(N, -1))
    metrics = dict(latent_se=mean(latent_se_N), token_ce=mean(token_ce_N),
                   chunk_agreement=mean(agree_N.astype(jnp.float32)),
                   num_bytes=bytes_N.sum(), num_concepts=real_N.sum())
    return mean(loss_N), metrics
