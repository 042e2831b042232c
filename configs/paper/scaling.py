"""The decisive study: concept LMs against token LMs at equal all-in
training FLOPs, at three budgets a factor of 3 apart (9x in all).

Families, each at budget in {5e12, 1.5e13, 4.5e13} all-in FLOPs:
- bytes: the tiny token LM over bytes (token_baseline.py, match=flops);
- spm: the tiny token LM over a SentencePiece BPE vocabulary of 1024,
  trained on the training split (token_baseline.py, tokens=spm);
- flow: the K=4 concept LM with the flow head (study.py);
- energy: the K=4 concept LM with the energy head (CALM's choice);
- word: the flow concept LM over word units, one word and the whitespace
  before it a concept (a spaced word, data/segment.py), words longer than
  K=8 split;
- entropy: the flow concept LM over entropy units (data/entropy.py, as in
  the Byte Latent Transformer): spaced words that a small byte LM splits
  further where it finds the next byte hard to predict, at most K=8 bytes,
  4.5 bytes on average (BLT's patch length). The byte LM is the pipeline's
  first stage (configs/entropy_units.py), and its training and its passes
  over the text count in the budget.
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

The units of meaning (word, entropy) joined the study after its verdict,
with this rule, written before any of their runs (the commit that added
them has no results of theirs in it):
- They are concept families under the rule above: the verdict is
  recomputed with them, and the page says so if it changed.
- Segmentation, on its own page (docs/results/units.md): at each budget,
  the paired 95% interval of (word - flow) and of (entropy - flow) on
  BrierLM, flow being fixed K=4 with the same head, stage-1 recipe and
  budget. A unit kind beats fixed K=4 at a budget if its interval lies
  above 0, loses if below, otherwise not resolved. Its verdict: the side
  that wins the top budget and at least one other, else not resolved;
  Brier-1 decides in the same way when BrierLM does not.
- A unit's last partial chunk is completed by rejection (docs/
  measurement.md); a run whose partial_fallback_rate is above 1% is not
  ranked by either metric, since its samples are not exactly the model's.

Run the whole study (one run after another; a rerun resumes):

  python launch/sweep.py --config=configs/paper/scaling.py \\
      --grid=args.budget=5e12,1.5e13,4.5e13 \\
      --grid=args.family=bytes,spm,flow,energy,word,entropy \\
      --root=/tmp/paper/scaling --evaluate=brier --eval_flag=--split=test \\
      --eval_text=/usr/share/common-licenses/GPL-3
  python launch/scaling_table.py --root=/tmp/paper/scaling \\
      --ngram=/tmp/paper/ngram --out=docs/results
  python launch/units_table.py --root=/tmp/paper/scaling --out=docs/results

Each run's own command (train, evaluate, its row) is in
docs/results/scaling.json; the cost and results are in
docs/results/scaling.md, and the segmentation's in docs/results/units.md.

Args: family (flow), budget (5e12 all-in FLOPs).
"""

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.tasks import pipeline

from configs import entropy_units
from configs.paper import study
from configs.paper import token_baseline

budget = study.budget

FAMILIES = ('bytes', 'spm', 'flow', 'energy', 'word', 'entropy')
TOKEN_FAMILIES = ('bytes', 'spm')
# The units of meaning: family -> segment kind, at most UNIT_K bytes a unit.
UNIT_FAMILIES = {'word': 'word', 'entropy': 'entropy'}
UNIT_K = 8
BUDGETS = (5e12, 1.5e13, 4.5e13)


def concept_pipeline(head: str, budget_flops: float, segment='fixed'):
  """Stage 1 then the concept LM with `head`, `budget_flops` all in; for
  entropy units the byte LM that cuts them first."""
  c = config_lib.ConfigDict()
  c.task = 'pipeline'
  c.seed = 0
  c.stages = config_lib.ConfigDict()
  entropy = None
  if segment == 'entropy':
    entropy = c.stages.entropy = entropy_units.entropy_model()
  ae = (study.autoencoder() if segment == 'fixed' else
        study.autoencoder(K=UNIT_K, segment=segment))
  # The workdir fields are set by the pipeline (tasks/pipeline.py).
  lm = study.concept_lm(ae, ae_workdir='', head=head,
                        budget_flops=budget_flops, entropy=entropy)
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
  if args.family in UNIT_FAMILIES:
    return concept_pipeline('flow', args.budget, UNIT_FAMILIES[args.family])
  return concept_pipeline(args.family, args.budget)
