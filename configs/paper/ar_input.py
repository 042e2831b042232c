"""Study (e): autoregressor input. Does the concept LM learn more from the
previous chunk's tokens (CALM) or from the previous latent vector?

input in {tokens, latent} (latentlm/models/concept_lm.py INPUTS), one shared
stage-1 autoencoder, the same all-in FLOPs for both (stage 1 included). Run the whole study:

  python launch/sweep.py --config=configs/paper/ar_input.py:stage=autoencoder \\
      --root=/tmp/paper/ar_input/ae && \\
  python launch/sweep.py \\
      --config=configs/paper/ar_input.py:ae_root=/tmp/paper/ar_input/ae \\
      --grid=args.input=tokens,latent --root=/tmp/paper/ar_input/lm \\
      --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/ar_input/lm/* \\
      --out=/tmp/paper/ar_input/report

Sized to run in under 30 minutes on 2 CPU cores; its cost and results are
in docs/results/ar_input.md.

Args: input (tokens), stage (concept_lm | autoencoder), ae_root.
"""

from latentlm.core import config_lib
from latentlm.models import concept_lm

from configs.paper import study



def get_config(arg=None):
  args = config_lib.parse_args(arg, input='tokens', **study.STUDY_ARGS)
  config_lib.choose('input', args.input, concept_lm.INPUTS)
  return study.stage_config(args, study.autoencoder(), 'base',
                            input=args.input)
