"""Token-level transformer LM: the baseline every concept model is compared to.

Byte tokens by default. Train, evaluate and sample:

  python -m latentlm.train --config=configs/token_lm.py:size=tiny --workdir=/tmp/tok
  python -m latentlm.evaluate --workdir=/tmp/tok
  python -m latentlm.generate --workdir=/tmp/tok --prompt='ROMEO.'

Sizes: nano (tests and smoke runs), tiny (~1M params, the main job's
backbone; its cost on 2 CPU cores: docs/results/main_job.md), small (~20M
params, the MFU benchmark size: docs/results/throughput.md), and base
(~85M, for accelerators).
"""

from latentlm.core import config_lib
from latentlm.models import transformer

SIZES = {
    'nano': dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=64),
    'tiny': dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=384),
    'small': dict(d_model=512, num_layers=6, num_heads=8, mlp_dim=1536),
    'base': dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=2048),
}


def transformer_config(size: str, vocab_size: int, max_len: int):
  """The shared backbone fields (latentlm.models.transformer): the size's,
  and the TransformerConfig defaults of the rest."""
  c = config_lib.ConfigDict(SIZES[config_lib.choose('size', size, SIZES)])
  c.num_kv_heads = c.num_heads
  c.head_dim = c.d_model // c.num_heads
  c.vocab_size = vocab_size
  c.max_len = max_len
  for name, value in transformer.TransformerConfig.default_fields().items():
    c[name] = value
  return c


def get_config(arg=None):
  args = config_lib.parse_args(arg, size='tiny')
  c = config_lib.base_config()
  c.task = 'token_lm'
  c.data.seq_len = 256
  c.model = transformer_config(args.size, vocab_size=259,
                               max_len=c.data.seq_len)
  c.train.num_steps = 600
  c.train.batch_size = 32
  c.train.log_every = 25
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  return c
