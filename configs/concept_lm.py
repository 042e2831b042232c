"""Concept LM (stage 2): a causal transformer predicts the next concept vector.

Needs a trained stage-1 autoencoder (configs/autoencoder.py):

  python -m latentlm.train --config=configs/autoencoder.py --workdir=/tmp/ae
  python -m latentlm.train --config=configs/concept_lm.py:head=energy \\
      --config.autoencoder_workdir=/tmp/ae --workdir=/tmp/clm
  python -m latentlm.generate --workdir=/tmp/clm --prompt='ROMEO.'

configs/shakespeare.py runs both stages in one command. Args: head (mse |
energy | flow | diffusion | gmm), input (tokens: the previous chunk's token
embeddings, CALM; latent: its normalised posterior mean), size (the backbone
sizes of configs/token_lm.py, so the token baseline of the same size compares
directly).
"""

from latentlm.core import config_lib
from latentlm.models import concept_lm
from latentlm.models import heads

from configs import token_lm as token_lm_config

# Encoder posterior samples per position the head is scored on. Cheap for
# the energy score, mse and gmm; flow and diffusion run their MLP per target.
HEAD_TARGETS = dict(mse=8, energy=16, flow=2, diffusion=2, gmm=8)


def get_config(arg=None):
  args = config_lib.parse_args(arg, head='energy', input='tokens', size='tiny')
  c = config_lib.base_config()
  c.task = 'concept_lm'
  c.autoencoder_workdir = ''  # a trained stage-1 workdir (required)
  c.data.seq_len = 64  # concept positions per row (256 bytes at K=4)
  # The token LM baseline's backbone of the same size (configs/token_lm.py).
  c.model = token_lm_config.get_config(f'size={args.size}').model
  c.model.max_len = c.data.seq_len
  c.model.input = config_lib.choose('input', args.input, concept_lm.INPUTS)
  c.head = heads.default_head_config(args.head)
  c.head.hidden_dim = 256
  c.head.num_layers = 2
  c.head_targets = HEAD_TARGETS[args.head]
  # Targets are mean + target_noise * std * N(0, I) of the encoder posterior:
  # 1 draws posterior samples (CALM), 0 takes the mean.
  c.target_noise = 1.0
  # Weight of an auxiliary cross-entropy: the next chunk's K tokens read
  # linearly off h. It shapes the backbone fast; sampling never uses it.
  c.token_loss_weight = 0.0

  c.train.num_steps = 600
  c.train.batch_size = 32
  c.train.log_every = 25
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  return c
