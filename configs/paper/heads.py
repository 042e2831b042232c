"""Study (b): generative heads. Which head (mse, energy, flow, diffusion,
gmm) gives the best concept LM for the same training FLOPs?

One stage-1 autoencoder (K=4, Dz=32) shared by all; each concept LM trained
for the same stage-2 FLOPs (budget.CPU_BUDGET_FLOPS), so heads that cost
more per step (energy: 16 samples; flow, diffusion: a stream per target)
take fewer steps. Run the whole study:

  python launch/sweep.py --config=configs/paper/heads.py:stage=autoencoder \\
      --root=/tmp/paper/heads/ae && \\
  python launch/sweep.py --config=configs/paper/heads.py:ae_root=/tmp/paper/heads/ae \\
      --grid=args.head=mse,energy,flow,diffusion,gmm \\
      --root=/tmp/paper/heads/lm --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/heads/lm/* --out=/tmp/paper/heads/report

Expected cost on 2 CPU cores (an estimate from the documented times of
configs/autoencoder.py and configs/shakespeare.py, scaled by FLOPs): stage 1
about 2 minutes once, stage 2 about 3 minutes a head with compile and
evaluation, so about 17 minutes on an idle machine. Measured with
`python -m latentlm.bench train --config=configs/paper/heads.py:ae_root=AE,
head=H --steps=5` on a shared, loaded host: flow 0.47 s a step (299 steps,
load 3.3), energy 1.24 s a step (214 steps, load about 5): 2.4 and 4.4
minutes of stage-2 steps, plus about 25 s of compile and the evaluations.

Args: head (flow), stage (concept_lm | autoencoder), ae_root.
"""

from latentlm import config_lib

study = config_lib.module_beside(__file__, 'study')

HEADS = ('mse', 'energy', 'flow', 'diffusion', 'gmm')


def get_config(arg=None):
  args = config_lib.parse_args(arg, head='flow', **study.STUDY_ARGS)
  config_lib.choose('head', args.head, HEADS)
  return study.stage_config(args, study.autoencoder(), 'base', head=args.head)
