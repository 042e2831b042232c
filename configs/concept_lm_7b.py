"""A 7B concept LM for TPU pods: configs/concept_lm_1b.py, scaled up.

Backbone: 32 layers, d_model 4096, 32 heads of 128, SwiGLU 11008 (6.4B
params); the rows, batch, data and schedule of the 1B. Mesh data=-1 x
fsdp=64 x tensor=4: 256 chips hold one copy of the state, so a v5p:8x8x8
runs two copies and two v5e:16x16 slices one each.

  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/concept_lm_7b.py \\
      --topology=v5p:8x8x8
  JAX_PLATFORMS=cpu python -m latentlm.aot --config=configs/concept_lm_7b.py \\
      --topology=v5e:16x16 --slices=2

Per-chip figures: docs/results/pods.md. Args: those of
configs/concept_lm_1b.py, with fsdp 64 and tensor 4.
"""

from configs import concept_lm_1b as pods


def get_config(arg=None):
  return pods.pod_config('7b', arg, fsdp=64, tensor=4)
