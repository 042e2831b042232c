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

from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.models import heads
from latentlm.tasks import base
from latentlm.tasks import concept_lm
from latentlm.tasks import flops


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
  """A concept LM whose head is trained to match a teacher's samples.

  `stages`: 'teacher', the concept LM whose params this run starts from
  (without weights: fresh ones, for shapes), and 'autoencoder', its stage 1.
  """

  def __init__(self, config, stages):
    if config.head.name != 'flow':
      raise UserError(f'config.head.name={config.head.name!r}: the student '
                      'is a flow head, like its teacher')
    super().__init__(config, stages)
    self.distill = config.distill
    if not 0 <= self.distill.temperature_min <= self.distill.temperature_max:
      raise UserError(
          'config.distill needs 0 <= temperature_min <= temperature_max, got '
          f'{self.distill.temperature_min} and {self.distill.temperature_max}')
    teacher = self.stages['teacher']
    self.teacher_head = heads.make_head(teacher.config.head, self.latent_dim)
    self._teacher_params = None
    if teacher.weights is not None:
      self._teacher_params = teacher.weights['params']
      self._check_same_architecture(teacher)

  @classmethod
  def stages_of(cls, config, given=None) -> dict[str, base.Stage]:
    """'teacher': the run config.teacher_workdir names; 'autoencoder': the
    run config.autoencoder_workdir names, by default the teacher's; and the
    stages stage 1 builds on in turn (entropy units' byte LM)."""
    given = given or {}
    if 'teacher' in given:
      teacher = base.Stage(given['teacher'])
    else:
      teacher = base.Stage(load_teacher_config(config.teacher_workdir),
                           config.teacher_workdir)
    if 'autoencoder' in given:
      autoencoder = base.Stage(given['autoencoder'])
    else:
      path = config.autoencoder_workdir or teacher.config.autoencoder_workdir
      autoencoder = base.Stage(concept_lm.load_autoencoder_config(path), path)
    return dict(concept_lm.with_stage1_stages(autoencoder, given),
                teacher=teacher)

  def _check_same_architecture(self, teacher):
    """The student must be the teacher's network: it starts from its
    weights, and only the sampling settings of config.head may differ."""
    teacher_config = teacher.config
    student_shapes = _paths(nn.meta.unbox(
        jax.eval_shape(super().init, jax.random.key(0))[0]))
    teacher_shapes = _paths(self._teacher_params)
    if student_shapes == teacher_shapes:
      return
    differing = sorted(set(student_shapes.items()) ^
                       set(teacher_shapes.items()))[0][0]
    # The fields that build the network, as the teacher's config has them.
    fixes = [f'--config.{key}={teacher_config.get(key)}'
             for key in _NETWORK_FIELDS
             if self.config.get(key) != teacher_config.get(key)]
    fixes += [f'--config.{section}.{key}={value}'
              for section in ('model', 'head')
              for key, value in teacher_config[section].items()
              if key not in SAMPLING_FIELDS
              and self.config[section].get(key) != value]
    teacher_json = workdir_lib.Workdir(teacher.path).config_path
    raise UserError(
        f'the student must be the teacher\'s network ({differing} differs); '
        f'set {" ".join(fixes) or "config.model and config.head"} as in '
        f'{teacher_json}')

  def init(self, rng):
    """The teacher's params (the student head starts as the teacher's);
    frozen: stage 1 and the teacher's head."""
    params, frozen = super().init(rng)
    if self._teacher_params is not None:
      params = concept_lm.replace_boxed(params, self._teacher_params)
    return params, dict(frozen, teacher_head=params['head'])

  @classmethod
  def train_flops_per_step(cls, config, stages) -> float:
    """The teacher's samples are the targets: the encoder reads only inputs,
    and only for latent input."""
    autoencoder = stages['autoencoder']
    B = config.train.batch_size
    chunks = flops.row_chunks(autoencoder, config.data.seq_len + 1)
    per_position = flops.head_distill_flops_per_position(
        config, stages['teacher'].head, autoencoder)
    if flops.input_is_encoded(config):
      per_position += flops.encoder_flops_per_chunk(
          autoencoder.model)['forward']
    return B * (chunks - 1) * per_position

  @classmethod
  def upstream_flops(cls, config, stages) -> float:
    """The teacher's training, its stage 1 included."""
    teacher = stages['teacher']
    return flops.all_in_flops(teacher, teacher.train.num_steps,
                              stages['autoencoder'])

  @classmethod
  def describe_head(cls, config) -> str:
    return f'head={config.head.name} steps={config.head.num_steps}'

  @classmethod
  def metric_units(cls, config) -> dict[str, base.Unit]:
    del config
    return dict(
        loss=base.Unit('per concept: distill.latent_weight x latent_se + '
                       'distill.token_weight x token_ce'),
        latent_se=base.Unit('squared l2/concept (normalised latents)'),
        token_ce=base.Unit('nats/concept'),
        chunk_agreement=base.Unit('% concepts', base.PERCENT))

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
