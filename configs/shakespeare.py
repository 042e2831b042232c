"""The main job: a concept LM of Shakespeare's plays, both stages, one command.

  python -m latentlm.train --config=configs/shakespeare.py --workdir=/tmp/bard

Stage 1 trains the concept autoencoder (configs/autoencoder.py at its
default) into /tmp/bard/autoencoder; stage 2 trains the concept LM
(configs/concept_lm.py) on its frozen encoder into /tmp/bard/concept_lm.
Then it prints both stages' eval metrics, three samples and the fraction of
their words found in the training plays; the last line is one JSON object.
Rerunning the command resumes the stage it was in. Any field of a stage is
overridable, e.g. --config.stages.concept_lm.train.num_steps=100.

Args: head, input and size of the concept LM (see configs/concept_lm.py).
"""

import os

from latentlm import config_lib


def _config_file(name: str, arg: str = ''):
  """get_config(arg) of configs/NAME.py, beside this file."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  return config_lib.load_config_file([f'--config={path}:{arg}'])


def get_config(arg=None):
  args = config_lib.parse_args(arg, head='energy', input='tokens', size='tiny')
  c = config_lib.ConfigDict()
  c.task = 'pipeline'
  c.seed = 0
  c.stages = config_lib.ConfigDict()
  c.stages.autoencoder = _config_file('autoencoder')
  c.stages.concept_lm = _config_file(
      'concept_lm', f'head={args.head},input={args.input},size={args.size}')

  c.samples = config_lib.ConfigDict()
  c.samples.prompt = ''
  c.samples.num_samples = 3
  c.samples.temperature = 0.8
  c.samples.max_bytes = 400
  return c
