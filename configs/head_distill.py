"""Head distillation (stage 3): a concept LM's flow head, sampled in one pass.

Needs a trained concept LM with a flow head (configs/concept_lm.py), whose
backbone and head network this run keeps; it trains only a copy of the head,
sampled with this config's head settings, to land where the teacher's ODE
lands from the same noise (latentlm/tasks/head_distill.py):

  python -m latentlm.train --config=configs/head_distill.py:size=tiny \\
      --config.teacher_workdir=/tmp/clm --workdir=/tmp/fast
  python -m latentlm.generate --workdir=/tmp/fast --temperature=0.2

Args: those of configs/concept_lm.py that build the teacher (input, size;
the head is a flow head). A teacher trained with other network fields (the
main job's sets head.cond_dropout and token_loss_weight) needs them here
too; the error names each one with the teacher's value.
configs/shakespeare.py runs this as its third stage, from its own stage 2's
config.
"""

from latentlm.core import config_lib

from configs import concept_lm as concept_lm_config


def student_config(teacher):
  """The distillation of a concept LM config `teacher` (a flow head): its
  network, one Euler step without guidance, distilled at temperatures in
  [0, 1]; override distill.temperature_* to match how it will sample."""
  c = teacher.copy_and_resolve_references()
  c.task = 'head_distill'
  c.teacher_workdir = ''  # the trained concept LM (required)
  # The student's sampler: one velocity, no null condition beside it.
  c.head.update(num_steps=1, solver='euler', guidance_scale=1.0)
  c.distill = config_lib.ConfigDict()
  c.distill.temperature_min = 0.0
  c.distill.temperature_max = 1.0
  c.distill.token_weight = 1.0
  c.distill.latent_weight = 1.0
  c.train.num_steps = 600
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.min_lr_ratio = 0.05
  c.optimizer.weight_decay = 0.0
  return c


def get_config(arg=None):
  args = config_lib.parse_args(arg, input='tokens', size='tiny')
  teacher = concept_lm_config.get_config(
      f'head=flow,input={args.input},size={args.size}')
  return student_config(teacher)
