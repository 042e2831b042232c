"""A 1B concept LM for TPU pods: stage 2 over a stage-1 autoencoder.

Backbone: 16 layers, d_model 2048, 16 heads of 128, SwiGLU 8192 (1.07B
params), bfloat16 compute, layers scanned, remat keeping only matmul
outputs. Rows of 1024 concepts (4 KiB of text at K=4), 512 rows per step.
Mesh data=-1 x fsdp x tensor (args): FSDP and tensor parallelism inside a
slice, data parallelism over the rest, across slices too.

Check that it fits before renting the pod (needs libtpu, not a TPU):

  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/concept_lm_1b.py \\
      --topology=v5p:8x8x8
  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/concept_lm_1b.py \\
      --topology=v5e:16x16 --slices=2

Train on the pod (launch/README.md), after stage 1 (configs/autoencoder.py,
same data) into a directory every host sees:

  python launch/tpu.py run --name=NAME -- python -m latentlm.train \\
      --config=configs/concept_lm_1b.py \\
      --config.autoencoder_workdir=/mnt/shared/ae --workdir=/mnt/shared/clm_1b

Per-chip memory and FLOPs, compiled ahead of time: docs/results/pods.md.

Args: head (energy), fsdp (128), tensor (1), baseline (false; true gives
the token LM with this backbone over the same 4 KiB rows: its baseline).
"""

from latentlm.core import config_lib

from configs import concept_lm as concept_lm_config
from configs import token_lm as token_lm_config

BACKBONES = {
    '1b': dict(d_model=2048, num_layers=16, num_heads=16, mlp_dim=8192),
    '7b': dict(d_model=4096, num_layers=32, num_heads=32, mlp_dim=11008),
}
CHUNK_LEN = 4  # bytes per concept: the stage-1 default
CONCEPTS_PER_ROW = 1024


def pod_config(backbone: str, arg, fsdp: int, tensor: int):
  """The concept LM (or its token baseline) of `backbone`, sized for pods."""
  args = config_lib.parse_args(arg, head='energy', fsdp=fsdp, tensor=tensor,
                               baseline=False)
  if args.baseline:
    c = token_lm_config.get_config('size=nano')
    c.data.seq_len = CONCEPTS_PER_ROW * CHUNK_LEN  # the same text per row
  else:
    c = concept_lm_config.get_config(f'head={args.head},size=nano')
    c.data.seq_len = CONCEPTS_PER_ROW
    c.head.hidden_dim = 1024
    # No softmax over the vocabulary: its input embedding (and the stage-1
    # decoder's) are too small to be worth splitting over tensor.
    c.sharding.rules = tuple('vocab=' if rule.startswith('vocab=') else rule
                             for rule in c.sharding.rules)
  c.model.update(BACKBONES[backbone])
  c.model.update(num_kv_heads=c.model.num_heads, head_dim=128,
                 max_len=c.data.seq_len, dtype='bfloat16',
                 remat_policy='dots', scan_layers=True)

  # Long documents suit 4 KiB rows; any TFDS text dataset works.
  c.data.update(name='pg19', text_key='book_text')
  c.mesh.update(data=-1, fsdp=args.fsdp, tensor=args.tensor)

  c.train.update(num_steps=20_000, batch_size=512, log_every=100,
                 eval_every=1000, eval_batches=16, checkpoint_every=1000)
  c.optimizer.update(learning_rate=3e-4, warmup_steps=2000, weight_decay=0.1)
  return c


def get_config(arg=None):
  return pod_config('1b', arg, fsdp=128, tensor=1)
