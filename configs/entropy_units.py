"""Concepts on entropy units (as in the Byte Latent Transformer), every
stage in one command:

  python -m latentlm.train --config=configs/entropy_units.py --workdir=/tmp/entropy_units

Stage 0 trains a small byte LM into DIR/entropy; a unit starts where it
finds the next byte hard to predict (latentlm/data/entropy.py), at the
threshold that gives `mean_bytes` bytes a unit on its training text, at
most K. Stage 1 trains the autoencoder on those units into DIR/autoencoder,
stage 2 the concept LM into DIR/concept_lm. The byte LM's training, and its
passes over the text stages 1 and 2 read, count in every later stage's
all-in FLOPs. `python -m latentlm.evaluate --workdir=DIR` reports
`bytes_per_concept`.

Args: K (16, the longest unit), mean_bytes (4.5), head (flow), size (tiny,
the concept LM's), Dz (32).
"""

from latentlm.core import config_lib
from latentlm.tasks import pipeline

from configs import autoencoder as autoencoder_config
from configs import concept_lm as concept_lm_config
from configs import token_lm as token_lm_config

# The byte LM: small beside the concept LM, as BLT's entropy model is, and
# its window long enough to see the line a byte sits in.
ENTROPY_MODEL = dict(d_model=64, num_layers=2, num_heads=2, mlp_dim=192)
ENTROPY_WINDOW = 128


def entropy_model():
  c = token_lm_config.get_config('size=nano')
  c.model.update(ENTROPY_MODEL)
  c.model.num_kv_heads = c.model.num_heads
  c.model.head_dim = c.model.d_model // c.model.num_heads
  c.data.seq_len = c.model.max_len = ENTROPY_WINDOW
  c.train.num_steps = 300
  c.train.eval_every = c.train.checkpoint_every = 300
  return c


def get_config(arg=None):
  args = config_lib.parse_args(arg, K=16, mean_bytes=4.5, head='flow',
                               size='tiny', Dz=32)
  c = config_lib.ConfigDict()
  c.task = 'pipeline'
  c.seed = 0
  c.stages = config_lib.ConfigDict()
  c.stages.entropy = entropy_model()
  c.stages.autoencoder = autoencoder_config.get_config(
      f'K={args.K},segment=entropy,mean_bytes={args.mean_bytes},Dz={args.Dz}')
  lm = concept_lm_config.get_config(f'head={args.head},size={args.size}')
  lm.token_loss_weight = 1.0
  c.stages.concept_lm = lm
  c.samples = pipeline.samples_config()
  return c
