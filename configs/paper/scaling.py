"""The decisive study: concept LMs against token LMs at equal all-in
training FLOPs, at three budgets a factor of 3 apart (9x in all).

Families, each at budget in {5e12, 1.5e13, 4.5e13} all-in FLOPs:
- bytes: the tiny token LM over bytes (token_baseline.py, match=flops);
- spm: the tiny token LM over a SentencePiece BPE vocabulary of 1024,
  trained on the training split (token_baseline.py, tokens=spm);
- flow: the K=4 concept LM with the flow head (study.py);
- energy: the K=4 concept LM with the energy head (CALM's choice).
A concept family is a pipeline (the main job's shape): stage 1, the study's
K=4 autoencoder, then the concept LM, in one workdir, so one train command
makes it from nothing. Stage 1 is inside the budget: the concept LM gets
what it leaves.

Backbone size: one size for every budget and family, the tiny backbone
(about 1M parameters) every other study used, so that these runs extend
those and a family's points differ only in steps. Chinchilla's rule (20
tokens a parameter, C = 6ND) puts the compute-optimal size at the top
budget near tiny's, so the top budget, where the verdict weighs most,
is the one where the size is right; the lower budgets run tiny oversized
for their compute, the same way for every family.

Decision rule, written before any run of this study (the commit that
added this file has no results in it):
- Primary metric: BrierLM on the Shakespeare test plays (8192 word-end
  positions, seed 0, docs/measurement.md); bits per byte beside it for the
  token LMs. Modern prose (the GPL-3 text) is evaluated and reported
  beside the plays; it does not enter the verdict.
- At each budget, the best token LM is the token family with the higher
  BrierLM there. Concepts win the budget if some concept family's paired
  95% interval (bootstrap over positions) of (concept - best token LM)
  lies above 0; tokens win it if every concept family's interval lies
  below 0; otherwise the budget is not resolved.
- Verdict: the side that wins the top budget and at least one other.
  Otherwise "not resolved". If that verdict is "not resolved" on BrierLM,
  the same rule on Brier-1 decides, and the page says it was Brier-1.
- The comparison only means something where the models have learned
  something: if at the top budget the byte LM's bits per byte on the test
  plays are not below the byte 4-gram's, the page says first that the
  models are too undertrained to compare, then gives the verdict.
- Whatever it says, the verdict is the page's first line.

Run the whole study (one run after another; a rerun resumes):

  python launch/sweep.py --config=configs/paper/scaling.py \\
      --grid=args.budget=5e12,1.5e13,4.5e13 \\
      --grid=args.family=bytes,spm,flow,energy \\
      --root=/tmp/paper/scaling --evaluate=brier --eval_flag=--split=test \\
      --eval_text=/usr/share/common-licenses/GPL-3
  python launch/scaling_table.py --root=/tmp/paper/scaling \\
      --ngram=/tmp/paper/ngram --out=docs/results

Each run's own command (train, evaluate, its row) is in
docs/results/scaling.json; the cost and results are in
docs/results/scaling.md.

Args: family (flow), budget (5e12 all-in FLOPs).
"""

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.tasks import pipeline

from configs.paper import study
from configs.paper import token_baseline

budget = study.budget

FAMILIES = ('bytes', 'spm', 'flow', 'energy')
TOKEN_FAMILIES = ('bytes', 'spm')
BUDGETS = (5e12, 1.5e13, 4.5e13)


def concept_pipeline(head: str, budget_flops: float):
  """Stage 1 then the concept LM with `head`, `budget_flops` all in."""
  ae = study.autoencoder()
  # The workdir field is set by the pipeline (tasks/pipeline.py).
  lm = study.concept_lm(ae, ae_workdir='', head=head,
                        budget_flops=budget_flops)
  c = config_lib.ConfigDict()
  c.task = 'pipeline'
  c.seed = 0
  c.stages = config_lib.ConfigDict()
  c.stages.autoencoder = ae
  c.stages.concept_lm = lm
  # A few samples at the end, as every run shows; nothing measures them.
  c.samples = pipeline.samples_config()
  return c


def get_config(arg=None):
  args = config_lib.parse_args(arg, family='flow', budget=5e12)
  config_lib.choose('family', args.family, FAMILIES)
  if args.budget <= 0:
    raise UserError(f'budget={args.budget} must be a positive number of FLOPs')
  if args.family in TOKEN_FAMILIES:
    return token_baseline.get_config(
        f'tokens={args.family},match=flops,budget={args.budget:g}')
  return concept_pipeline(args.family, args.budget)
