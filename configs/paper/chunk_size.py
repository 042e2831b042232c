"""Study (a): chunk size. Which K (bytes per concept) learns most per FLOP?

K in {1, 2, 4, 8, 16}, each concept LM trained for the same all-in FLOPs
(budget.CPU_BUDGET_FLOPS, its own stage 1 included: a K whose autoencoder
costs more leaves its concept LM fewer steps) on rows of the same 256 bytes
(256/K concepts), flow head, previous-chunk token input; stage 1 per K. Run the whole study
(stage 1 for every K, then stage 2, each evaluated with BrierLM):

  python launch/sweep.py --config=configs/paper/chunk_size.py:stage=autoencoder \\
      --grid=args.K=1,2,4,8,16 --root=/tmp/paper/chunk_size/ae && \\
  python launch/sweep.py \\
      --config=configs/paper/chunk_size.py:ae_root=/tmp/paper/chunk_size/ae \\
      --grid=args.K=1,2,4,8,16 --root=/tmp/paper/chunk_size/lm --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/chunk_size/lm/* \\
      --out=/tmp/paper/chunk_size/report

Sized to run in under 30 minutes on 2 CPU cores; its cost and results
are in docs/results/chunk_size.md. Its K=4 run is configs/paper/heads.py's
flow run.

Args: K (4), stage (concept_lm | autoencoder), ae_root (the stage-1 sweep's
root; the run of K is AE_ROOT/K-<K>).
"""

from latentlm.core import config_lib
from latentlm.core.errors import UserError

from configs.paper import study


CHUNK_SIZES = (1, 2, 4, 8, 16)


def get_config(arg=None):
  args = config_lib.parse_args(arg, K=4, **study.STUDY_ARGS)
  if args.K not in CHUNK_SIZES:
    raise UserError(f'K={args.K} is not one of {list(CHUNK_SIZES)}')
  ae = study.autoencoder(K=args.K)
  return study.stage_config(args, ae, f'K-{args.K}')
