"""The main job: a concept LM of Shakespeare's plays, every stage, one command.

  python -m latentlm.train --config=configs/shakespeare.py --workdir=workdirs/shakespeare

A concept is one word with the whitespace before it (segment=word, at
most 8 bytes; longer words are cut). Stage 1 trains the concept
autoencoder (configs/autoencoder.py) into DIR/autoencoder; stage 2 trains
the concept LM (configs/concept_lm.py) on its frozen encoder into
DIR/concept_lm. With distill=True a third stage distils the flow head's
sampler into one network pass (configs/head_distill.py) into
DIR/head_distill, and the samples come from it. Then it prints every
stage's eval metrics, three samples and the fraction of their words found
in the training plays; the last line is one JSON object. Rerunning the
command resumes the stage it was in. Any field of a stage is overridable,
e.g. --config.stages.concept_lm.train.num_steps=100.

What it prints, how long it takes, and how each choice below was made:
docs/results/main_job.md.

Args: head (flow), input (tokens) and size (tiny) of the concept LM (see
configs/concept_lm.py); segment (word: one word and the whitespace before
it; fixed: K bytes a concept; entropy: units cut by a small byte LM, which
then trains first, into DIR/entropy, configs/entropy_units.py), K (the
longest unit; 0: the segmentation's below), Dz (0: the segmentation's) and
ae_steps (0: the segmentation's) of the autoencoder
(configs/autoencoder.py); distill (False; True: the third stage).
"""

from latentlm.core import config_lib
from latentlm.tasks import pipeline

from configs import autoencoder as autoencoder_config
from configs import concept_lm as concept_lm_config
from configs import entropy_units
from configs import head_distill as head_distill_config

# The head's sampling temperature (see c.samples.temperature below).
TEMPERATURE = 0.3

# segment -> its stage 1: K (the longest unit), Dz and steps. word, the
# job's: a concept is a word, the unit of meaning, and of fixed K=4, word
# and entropy units its samples spelt best (docs/results/main_job.md). A
# unit of up to 8 bytes needs a wider latent and a longer schedule than
# fixed K=2 to come back exact; for word units Dz=64 trained longer beats
# Dz=128 both ways: it decodes as exactly, and its smaller latent is one
# the head samples into real words more often. fixed K=2, the job before
# word units: a head sample that falls between the chunks it could be
# decodes to a misspelling, and two bytes leave the head fewer chunks to
# fall between, but a concept is a fraction of a word.
SEGMENTS = {
    'fixed': dict(K=2, Dz=32, ae_steps=250),
    'word': dict(K=8, Dz=64, ae_steps=1000),
    'entropy': dict(K=8, Dz=128, ae_steps=600),
}


def get_config(arg=None):
  args = config_lib.parse_args(arg, head='flow', input='tokens', size='tiny',
                               segment='word', K=0, Dz=0, ae_steps=0,
                               distill=False)
  unit = dict(SEGMENTS[config_lib.choose('segment', args.segment, SEGMENTS)])
  unit.update({k: v for k, v in (('K', args.K), ('Dz', args.Dz),
                                 ('ae_steps', args.ae_steps)) if v})
  c = config_lib.ConfigDict()
  c.task = 'pipeline'
  c.seed = 0
  c.stages = config_lib.ConfigDict()
  if args.segment == 'entropy':
    c.stages.entropy = entropy_units.entropy_model()
  c.stages.autoencoder = autoencoder_config.get_config(
      f'K={unit["K"]},segment={args.segment},Dz={unit["Dz"]}')
  c.stages.autoencoder.train.update(num_steps=unit['ae_steps'],
                                    eval_every=unit['ae_steps'],
                                    checkpoint_every=unit['ae_steps'])
  lm = concept_lm_config.get_config(
      f'head={args.head},input={args.input},size={args.size}')
  # The flow head was chosen on this budget (2 CPU cores, a few minutes
  # for stage 2) by the fraction of sampled words found in the plays
  # (docs/results/main_job.md). The auxiliary next-chunk token loss shapes
  # the backbone early; sampling never reads it. Small batches: more steps
  # for the time.
  lm.token_loss_weight = 1.0
  if args.head in ('flow', 'diffusion'):
    # Classifier-free guidance: scale 3 spelt best of the scales tried and
    # kept the verse's shape; higher breaks the text into fragments
    # (docs/results/main_job.md).
    lm.head.update(cond_dropout=0.1, guidance_scale=3.0)
  if args.head == 'flow':
    # Adams-Bashforth: second order at one velocity a step, so 6 steps
    # sample as well as Heun's 9 velocities in less time; 5 steps spoilt the
    # job's own draw of samples (docs/results/main_job.md).
    lm.head.update(solver='ab2', num_steps=6)
  lm.train.batch_size = 16
  lm.train.num_steps = 700
  lm.train.eval_every = 350
  lm.train.checkpoint_every = 350
  c.stages.concept_lm = lm
  if args.head == 'flow' and args.distill:
    # Stage 3 (distill=True): the flow head distilled into one Euler step
    # without guidance, at the temperature the samples use, so that a
    # generation step runs the head's network once instead of six times.
    # Off by default: on word units it costs more spelling than on K=2
    # chunks, and the job's time (docs/results/generation_speed.md,
    # main_job.md).
    c.stages.head_distill = head_distill_config.student_config(lm)
    c.stages.head_distill.distill.update(temperature_min=TEMPERATURE,
                                         temperature_max=TEMPERATURE)

  # Lower temperature sharpens a flow head's samples and is paid for in
  # repeats; 0 falls into loops. The job's temperature spells best of
  # those whose samples repeat no more than before (docs/results/main_job.md).
  c.samples = pipeline.samples_config(TEMPERATURE)
  return c
