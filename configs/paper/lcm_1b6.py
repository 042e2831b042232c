"""A 1.6B LCM-like concept LM for TPU pods: one concept per sentence,
a diffusion head, the previous concept's latent as input (LCM feeds its
sentence embeddings back), on a TFDS catalog dataset (pg19 by default).

Stage 1: configs/autoencoder.py:segment=sentences,K=64,Dz=256 (a sentence
of at most 64 bytes per concept; longer ones are packed into several, see
latentlm/data/segment.py). Stage 2 backbone: 24 layers, d_model 2048, 16
heads of 128, SwiGLU 8192, bfloat16, scanned, remat of matmul outputs;
diffusion head of width 2048; rows of 256 sentence concepts, 256 rows a
step. Parameters, counted with jax.eval_shape in
tests/test_paper_configs.py: 1.67B (backbone 1.61B, head 59.8M, latent
input 0.5M). Mesh and
sharding rules are those of configs/concept_lm_1b.py.

  python launch/tpu.py run --name=NAME -- python -m latentlm.train \\
      --config=configs/autoencoder.py:segment=sentences,K=64,Dz=256 \\
      --config.data.name=pg19 --config.data.text_key=book_text \\
      --workdir=/mnt/shared/lcm_ae
  python launch/tpu.py run --name=NAME -- python -m latentlm.train \\
      --config=configs/paper/lcm_1b6.py \\
      --config.autoencoder_workdir=/mnt/shared/lcm_ae --workdir=/mnt/shared/lcm

Check that it compiles and fits first (needs libtpu, not a TPU):

  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/paper/lcm_1b6.py \\
      --topology=v5p:8x8x8

Not trained here. Args: fsdp (128), tensor (1), baseline (false; true: the
token LM with this backbone on rows of the same 16 KiB).
"""

from latentlm.core import config_lib

from configs import concept_lm_1b as pods


BACKBONE = dict(d_model=2048, num_layers=24, num_heads=16, num_kv_heads=16,
                head_dim=128, mlp_dim=8192)
SENTENCE_BYTES = 64  # stage 1's K: the most bytes of one sentence concept
CONCEPTS_PER_ROW = 256


def get_config(arg=None):
  args = config_lib.parse_args(arg, fsdp=128, tensor=1, baseline=False)
  c = pods.pod_config('1b', f'head=diffusion,fsdp={args.fsdp},'
                      f'tensor={args.tensor},baseline={args.baseline}',
                      fsdp=args.fsdp, tensor=args.tensor)
  c.model.update(BACKBONE)
  if args.baseline:
    c.data.seq_len = CONCEPTS_PER_ROW * SENTENCE_BYTES
  else:
    c.model.input = 'latent'
    c.data.seq_len = CONCEPTS_PER_ROW
    c.head.hidden_dim = 2048
  c.model.max_len = c.data.seq_len
  c.train.batch_size = 256
  return c
