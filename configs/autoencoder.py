"""Concept autoencoder (stage 1): chunks of K bytes <-> latent vectors z.

  python -m latentlm.train --config=configs/autoencoder.py --workdir=/tmp/ae
  python -m latentlm.evaluate --workdir=/tmp/ae --split=test
  python -m latentlm.evaluate --workdir=/tmp/ae --text=/usr/share/common-licenses/GPL-3
  python -m latentlm.generate --workdir=/tmp/ae --prompt='To be, or not to be'

Args: K (bytes per chunk, 4), segment (fixed|words|sentences|word|entropy),
Dz (latent dim, 128 as in CALM), encoder (mlp|transformer), mean_bytes (4.5,
the mean unit length of segment=entropy, whose byte LM
--config.segment.entropy_workdir names: configs/entropy_units.py trains
both); e.g. configs/autoencoder.py:K=8,segment=word.

The default trains 400 steps of 16 rows x 256 bytes (1.0M params); its
reconstruction accuracy (on the test plays, on text it never saw, under
noise on z) and its cost: docs/results/autoencoder.md, with the recipe
for units of meaning of up to 16 bytes (K=16,segment=word,Dz=128 with
chunk extensions and a longer schedule). The recipe's code:
latentlm/tasks/autoencoder.py.
"""

from latentlm.core import config_lib
from latentlm.models import concept


def get_config(arg=None):
  args = config_lib.parse_args(arg, K=4, segment='fixed', Dz=128,
                               encoder='mlp', mean_bytes=4.5)
  c = config_lib.base_config()
  c.task = 'autoencoder'
  c.segment = config_lib.ConfigDict(dict(kind=args.segment, chunk_len=args.K))
  if args.segment == 'entropy':
    # Units cut where a byte LM finds the next byte hard to predict
    # (latentlm/data/entropy.py), at the threshold that gives this mean.
    c.segment.entropy_workdir = ''
    c.segment.mean_bytes = args.mean_bytes
  # Chunks per row: 256 token slots, so every K trains on as many per step.
  c.data.seq_len = max(256 // args.K, 1)

  c.model = concept.default_autoencoder_model_config()
  c.model.encoder = args.encoder
  c.model.chunk_len = c.segment.get_ref('chunk_len')  # one K for both
  c.model.latent_dim = args.Dz
  c.model.d_model = 128
  c.model.mlp_dim = 256

  # The training recipe (latentlm/tasks/autoencoder.py). A robust latent as in
  # CALM: KL weight with free bits per dim, dropout on z, optional Gaussian
  # noise on z. Random tokens, extended and truncated chunks, so that bytes
  # rare in the corpus (digits, brackets), long and short chunks are learnt
  # too.
  c.ae = config_lib.ConfigDict()
  c.ae.kl_weight = 1e-3
  c.ae.free_bits = 0.5  # nats per latent dim
  c.ae.z_dropout = 0.15
  c.ae.z_noise_std = 0.0
  c.ae.random_token_prob = 0.02
  c.ae.random_truncate_prob = 0.05
  # Units of meaning rarely fill a long chunk; extensions teach its last
  # slots.
  c.ae.random_extend_prob = 0.0

  c.train.num_steps = 400
  c.train.batch_size = 16
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0
  return c
