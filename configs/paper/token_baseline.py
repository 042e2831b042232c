"""Study (f): the token baseline. Does the concept LM beat a token LM at
equal training FLOPs, and at equal parameters, over byte tokens and over a
SentencePiece BPE vocabulary trained on the training split (so a win for
concepts is not just a win over byte-level tokens)?

tokens in {bytes, spm} (spm: data.tokenizer='spm:1024',
latentlm/data/sentencepiece_tokenizer.py), match in {flops, params}:
- flops: the tiny token LM (configs/token_lm.py) trained for
  budget.CPU_BUDGET_FLOPS, the stage-2 budget of every concept-LM study;
- params: the tiny token LM deepened to the parameter count of the
  reference concept LM (flow head, K=4: study.concept_lm; 1.99M parameters
  with its head and token readout: 9 layers over bytes, 8 over BPE), trained
  for as many steps on 16 rows a step; over bytes it sees the same text and
  spends about 3.3x the concept LM's FLOPs.
Rows hold 256 tokens either way: 256 bytes, or about 580 bytes of BPE
tokens (2.26 bytes a token on the Shakespeare test plays at vocabulary
1024). So the BPE model sees more context than the concept LMs' 256-byte
rows, which favours the baseline, and BrierLM's 128-byte blocks fit its
half-window of 128 tokens. Bits/byte and BrierLM count bytes of text, so
all four runs and the concept LMs compare directly. Run the whole study,
then report it with the concept LMs:

  python launch/sweep.py --config=configs/paper/token_baseline.py:match=flops \\
      --grid=args.tokens=bytes,spm --root=/tmp/paper/token_baseline/flops \\
      --evaluate=brier --eval_flag=--split=test
  python launch/sweep.py --config=configs/paper/token_baseline.py:match=params \\
      --grid=args.tokens=bytes,spm --root=/tmp/paper/token_baseline/params \\
      --evaluate=brier --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/token_baseline/*/* \\
      /tmp/paper/heads/lm/* --out=/tmp/paper/token_baseline/report

Measured on 2 CPU cores (commit e5eb0f9, idle, budget 3e12), with
evaluation: match=flops 3.1 and 4.0 minutes (bytes and BPE: 60 and 55
steps of about 2.1 s), match=params 8.3 and 8.5 (180 steps of 2.2-2.3 s):
24.2 minutes for the four runs (the two sweeps above: 7.3 and 17.0). At
the old 5e12 budget they took about 45. Training the BPE vocabulary takes
seconds, once.

Args: tokens (bytes), match (flops), vocab (1024, for tokens=spm).
"""

from latentlm import config_lib

study = config_lib.module_beside(__file__, 'study')
budget = study.budget

TOKENS = ('bytes', 'spm')
MATCHES = ('flops', 'params')
# Tokens a row, BPE or bytes: 256 bytes of text as bytes.
ROW_TOKENS = 256


def get_config(arg=None):
  args = config_lib.parse_args(arg, tokens='bytes', match='flops', vocab=1024)
  config_lib.choose('tokens', args.tokens, TOKENS)
  config_lib.choose('match', args.match, MATCHES)
  c = budget.config_file('token_lm', 'size=tiny')
  if args.tokens == 'spm':
    c.data.tokenizer = f'spm:{args.vocab}'
    c.model.vocab_size = args.vocab  # for the FLOPs of the output head
  c.data.seq_len = ROW_TOKENS
  c.model.max_len = c.data.seq_len
  if args.match == 'flops':
    return budget.set_budget(c, budget.CPU_BUDGET_FLOPS)
  ae = study.autoencoder()
  reference = study.concept_lm(ae, ae_workdir='')
  c.model.num_layers = budget.layers_for_params(
      c, budget.concept_lm_params(reference, ae))
  c.train.batch_size = study.BATCH_SIZE  # the concept LMs'
  steps = reference.train.num_steps
  # set_budget with the FLOPs of `steps`: the same schedule fields.
  return budget.set_budget(c, steps * budget.flops.train_flops_per_step(c))
