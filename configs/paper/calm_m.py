"""CALM-M-like concept LM for TPU pods: about 370M parameters, K=4, energy
head, on a TFDS catalog dataset (pg19 by default; any array_record text
dataset via --config.data.name=... --config.data.text_key=...).

Backbone: 26 layers, d_model 1024, 16 heads of 64, SwiGLU 3072, bfloat16
compute, scanned layers with remat of matmul outputs; energy head of width
1024 (CALM's); rows of 1024 concepts (4 KiB of text), 512 rows a step.
Parameters, counted with jax.eval_shape in tests/test_paper_configs.py:
372.8M (backbone 354.5M, token input 4.5M, head 13.8M). Mesh and sharding
rules are those of configs/concept_lm_1b.py: FSDP inside a slice, data
parallelism over the rest.

Stage 1 (the CALM autoencoder, K=4, Dz=128) on the same data, then stage 2:

  python launch/tpu.py run --name=NAME -- python -m latentlm.train \\
      --config=configs/autoencoder.py:K=4,Dz=128 --config.data.name=pg19 \\
      --config.data.text_key=book_text --workdir=/mnt/shared/calm_m_ae
  python launch/tpu.py run --name=NAME -- python -m latentlm.train \\
      --config=configs/paper/calm_m.py \\
      --config.autoencoder_workdir=/mnt/shared/calm_m_ae --workdir=/mnt/shared/calm_m

Check that it compiles and fits first (needs libtpu, not a TPU):

  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/paper/calm_m.py \\
      --topology=v5p:4x4x4

Not trained here: its cost is set by the pod (the aot command above
prints its model FLOPs per step). Args: head (energy), fsdp (64), tensor (1),
baseline (false; true: the token LM with this backbone on the same rows).
"""


from configs import concept_lm_1b as pods


BACKBONE = dict(d_model=1024, num_layers=26, num_heads=16, num_kv_heads=16,
                head_dim=64, mlp_dim=3072)


def get_config(arg=None):
  c = pods.pod_config('1b', arg, fsdp=64, tensor=1)
  c.model.update(BACKBONE)
  if 'head' in c:  # a concept LM's
    c.head.hidden_dim = 1024
  return c
