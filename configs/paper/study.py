"""What the CPU-scale concept-LM studies share: Shakespeare, stage 1 then
stage 2 at an equal all-in FLOPs budget (budget.py: stage 1's training
counts, so stage 2 gets what it leaves). Not a config: the study configs
load it by path (configs/ is not a package).

A study runs as two launch/sweep.py lines over the same grid: `stage=
autoencoder` trains (and evaluates) the stage-1 models into AE_ROOT/<run>,
then `stage=concept_lm,ae_root=AE_ROOT` trains each concept LM on the
autoencoder of its run and evaluates it with BrierLM. Stage 2 is a plain
concept_lm run, so `python -m latentlm.evaluate` and `latentlm.report` read
it directly. When the study leaves stage 1 alone, its grid has one run,
named 'base' by launch/sweep.py, and every concept LM shares it.
"""

import os

from latentlm.core import config_lib
from latentlm.core.errors import UserError

from configs import autoencoder as autoencoder_config
from configs import concept_lm as concept_lm_config
from configs.paper import budget


STAGES = ('autoencoder', 'concept_lm')
# Stage 1 at half the default 400 steps: at K=4 it already reconstructs
# almost every chunk (docs/results/robustness.md), and what it spends comes
# out of stage 2's budget.
AUTOENCODER_STEPS = 200
# Bytes of text per stage-2 row, whatever K: 64 concepts at K=4.
ROW_BYTES = 256
STUDY_ARGS = dict(stage='concept_lm', ae_root='')


def autoencoder(*, K=4, segment='fixed', Dz=32, mean_bytes=4.5):
  """Stage 1 (configs/autoencoder.py) at the study's shorter schedule;
  `mean_bytes` is entropy units' mean length."""
  ae = autoencoder_config.get_config(
      f'K={K},segment={segment},Dz={Dz},mean_bytes={mean_bytes}')
  ae.train.num_steps = AUTOENCODER_STEPS
  ae.train.eval_every = ae.train.checkpoint_every = AUTOENCODER_STEPS
  return ae


# The main job's stage-2 choices (configs/shakespeare.py), copied rather than
# loaded so that tuning the main job does not change the studies' numbers.
TOKEN_LOSS_WEIGHT = 1.0
BATCH_SIZE = 16


# One unit a concept (segment kinds 'word' and 'entropy', whose units are
# about 4.5-5 bytes whatever K) is sized as a 4-byte chunk: rows of as many
# concepts as K=4's, and at least as much text. The packing kinds fill
# their chunks towards K, and are sized by K.
UNIT_KINDS = ('word', 'entropy')
UNIT_BYTES = 4


def bytes_per_concept(ae) -> int:
  """The bytes a stage-2 row is sized by, per concept of `ae`."""
  if ae.segment.kind in UNIT_KINDS:
    return min(ae.segment.chunk_len, UNIT_BYTES)
  return ae.segment.chunk_len


def concept_lm(ae, *, ae_workdir: str, head='flow', input='tokens',
               budget_flops=None, entropy=None):
  """Stage 2 (configs/concept_lm.py at size=tiny, with the main job's
  auxiliary token loss and batch) over `ae`, whose trained workdir is
  `ae_workdir`: ROW_BYTES / bytes_per_concept(ae) concepts a row,
  `budget_flops` of training all in, `ae`'s included (and for entropy
  units their byte LM's, whose config is `entropy`)."""
  lm = concept_lm_config.get_config(
                          f'head={head},input={input},size=tiny')
  lm.token_loss_weight = TOKEN_LOSS_WEIGHT
  lm.train.batch_size = BATCH_SIZE
  lm.autoencoder_workdir = ae_workdir
  lm.data.seq_len = max(ROW_BYTES // bytes_per_concept(ae), 1)
  lm.model.max_len = lm.data.seq_len
  return budget.set_budget(lm, budget_flops or budget.CPU_BUDGET_FLOPS, ae,
                           entropy=entropy)


def stage_config(args, ae, ae_run: str, **lm_fields):
  """`ae` for stage=autoencoder; else the concept LM over AE_ROOT/ae_run."""
  stage = config_lib.choose('stage', args.stage, STAGES)
  if stage == 'autoencoder':
    return ae
  if not args.ae_root:
    raise UserError('stage=concept_lm needs ae_root=DIR, the --root of the '
                    'stage=autoencoder sweep (see the config\'s docstring)')
  return concept_lm(ae, ae_workdir=os.path.join(args.ae_root, ae_run),
                    **lm_fields)
