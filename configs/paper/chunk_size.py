"""Study (a): chunk size. Which K (bytes per concept) learns most per FLOP?

K in {1, 2, 4, 8, 16}, each concept LM trained for the same stage-2 FLOPs
(budget.CPU_BUDGET_FLOPS) on rows of the same 256 bytes (256/K concepts),
flow head, previous-chunk token input; stage 1 per K. Run the whole study
(stage 1 for every K, then stage 2, each evaluated with BrierLM):

  python launch/sweep.py --config=configs/paper/chunk_size.py:stage=autoencoder \\
      --grid=args.K=1,2,4,8,16 --root=/tmp/paper/chunk_size/ae && \\
  python launch/sweep.py \\
      --config=configs/paper/chunk_size.py:ae_root=/tmp/paper/chunk_size/ae \\
      --grid=args.K=1,2,4,8,16 --root=/tmp/paper/chunk_size/lm --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/chunk_size/lm/* \\
      --out=/tmp/paper/chunk_size/report

Measured on 2 CPU cores (commit e5eb0f9, idle, budget 3e12): stage 1
1.7-2.3 minutes a K (9.3 in all), stage 2 with its evaluations 4.0
minutes at K=1 (44 steps of 256-concept rows; 1.6 of it evaluation) and
2.3-3.1 at K=2-16 (14.4 in all): 24.4 minutes for the study. At the old
5e12 budget it took about 37. Its K=4 run is configs/paper/heads.py's flow
run, number for number.

Args: K (4), stage (concept_lm | autoencoder), ae_root (the stage-1 sweep's
root; the run of K is AE_ROOT/K-<K>).
"""

from latentlm import config_lib
from latentlm.errors import UserError

study = config_lib.module_beside(__file__, 'study')

CHUNK_SIZES = (1, 2, 4, 8, 16)


def get_config(arg=None):
  args = config_lib.parse_args(arg, K=4, **study.STUDY_ARGS)
  if args.K not in CHUNK_SIZES:
    raise UserError(f'K={args.K} is not one of {list(CHUNK_SIZES)}')
  ae = study.autoencoder(K=args.K)
  return study.stage_config(args, ae, f'K-{args.K}')
