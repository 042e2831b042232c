"""Study (f): the token baseline. Does the concept LM beat a token LM at
equal training FLOPs, and at equal parameters, over byte tokens and over a
SentencePiece BPE vocabulary trained on the training split (so a win for
concepts is not just a win over byte-level tokens)?

tokens in {bytes, spm} (spm: data.tokenizer='spm:1024',
latentlm/data/sentencepiece_tokenizer.py), match in {flops, params}:
- flops: the tiny token LM (configs/token_lm.py) trained for
  budget.CPU_BUDGET_FLOPS, the all-in budget of every concept-LM study, so
  it gets the compute a concept LM splits between its stage 1 and stage 2;
- params: the tiny token LM deepened to the parameter count of the
  reference concept LM (flow head, K=4: study.concept_lm, with its head and
  token readout), trained for as many steps on 16 rows a step, so over
  bytes it reads the same text (at more FLOPs than the concept LM).
Rows hold 256 tokens either way: 256 bytes, or more bytes of BPE tokens. So
the BPE model sees more context than the concept LMs' 256-byte rows, which
favours the baseline, and BrierLM's 128-byte blocks fit its half-window of
128 tokens. Bits/byte and BrierLM count bytes of text, so all four runs and
the concept LMs compare directly. Run the whole study,
then report it with the concept LMs:

  python launch/sweep.py --config=configs/paper/token_baseline.py:match=flops \\
      --grid=args.tokens=bytes,spm --root=/tmp/paper/token_baseline/flops \\
      --evaluate=brier --eval_flag=--split=test
  python launch/sweep.py --config=configs/paper/token_baseline.py:match=params \\
      --grid=args.tokens=bytes,spm --root=/tmp/paper/token_baseline/params \\
      --evaluate=brier --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/token_baseline/*/* \\
      /tmp/paper/heads/lm/* --out=/tmp/paper/token_baseline/report

Sized to run in under 30 minutes on 2 CPU cores; its cost and results
are in docs/results/equal_flops.md (match=flops) and
docs/results/token_params.md (match=params). Training the BPE vocabulary is
not counted: like any tokenizer, it is no model FLOPs.

Args: tokens (bytes), match (flops), vocab (1024, for tokens=spm), budget
(budget.CPU_BUDGET_FLOPS all-in FLOPs, for match=flops; scaling.py sets it).
"""

from latentlm.core import config_lib

from configs import token_lm as token_lm_config
from configs.paper import study

budget = study.budget

TOKENS = ('bytes', 'spm')
MATCHES = ('flops', 'params')
# Tokens a row, BPE or bytes: 256 bytes of text as bytes.
ROW_TOKENS = 256


def get_config(arg=None):
  args = config_lib.parse_args(arg, tokens='bytes', match='flops', vocab=1024,
                               budget=budget.CPU_BUDGET_FLOPS)
  config_lib.choose('tokens', args.tokens, TOKENS)
  config_lib.choose('match', args.match, MATCHES)
  c = token_lm_config.get_config('size=tiny')
  if args.tokens == 'spm':
    c.data.tokenizer = f'spm:{args.vocab}'
    c.model.vocab_size = args.vocab  # for the FLOPs of the output head
  c.data.seq_len = ROW_TOKENS
  c.model.max_len = c.data.seq_len
  if args.match == 'flops':
    return budget.set_budget(c, args.budget)
  ae = study.autoencoder()
  reference = study.concept_lm(ae, ae_workdir='')
  c.model.num_layers = budget.layers_for_params(
      c, budget.concept_lm_params(reference, ae))
  c.train.batch_size = study.BATCH_SIZE  # the concept LMs'
  steps = reference.train.num_steps
  # set_budget with the FLOPs of `steps`: the same schedule fields.
  return budget.set_budget(c, budget.flops.all_in_flops(c, steps))
