"""Study (b): generative heads. Which head (mse, energy, flow, diffusion,
gmm) gives the best concept LM for the same training FLOPs?

One stage-1 autoencoder (K=4, Dz=32) shared by all; each concept LM trained
for the same all-in FLOPs (budget.CPU_BUDGET_FLOPS, the shared stage 1
included), so heads that cost more per step (energy: 16 samples; flow,
diffusion: a stream per target) take fewer steps. Run the whole study:

  python launch/sweep.py --config=configs/paper/heads.py:stage=autoencoder \\
      --root=/tmp/paper/heads/ae && \\
  python launch/sweep.py --config=configs/paper/heads.py:ae_root=/tmp/paper/heads/ae \\
      --grid=args.head=mse,energy,flow,diffusion,gmm \\
      --root=/tmp/paper/heads/lm --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/heads/lm/* --out=/tmp/paper/heads/report

Sized to run in under 30 minutes on 2 CPU cores; its cost and results,
beside the token baseline's, are in docs/results/equal_flops.md.

Args: head (flow), stage (concept_lm | autoencoder), ae_root.
"""

from latentlm.core import config_lib

from configs.paper import study


HEADS = ('mse', 'energy', 'flow', 'diffusion', 'gmm')


def get_config(arg=None):
  args = config_lib.parse_args(arg, head='flow', **study.STUDY_ARGS)
  config_lib.choose('head', args.head, HEADS)
  return study.stage_config(args, study.autoencoder(), 'base', head=args.head)
