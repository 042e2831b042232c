"""Study (c): segmentation. Do concepts cut at word or sentence boundaries
beat fixed K-byte chunks, for the same training FLOPs?

segment in {fixed, words, sentences}, each with chunks of at most K=16 bytes
(words and sentences pack whole words up to K, latentlm/data/segment.py),
so rows hold 16 concepts (256 bytes when chunks are full; fewer when word
and sentence chunks are padded, which the bits/byte and BrierLM count per
byte of text, so runs stay comparable). Stage 1 per segmentation; each
concept LM gets the same stage-2 FLOPs. Run the whole study:

  python launch/sweep.py --config=configs/paper/segmentation.py:stage=autoencoder \\
      --grid=args.segment=fixed,words,sentences \\
      --root=/tmp/paper/segmentation/ae && \\
  python launch/sweep.py \\
      --config=configs/paper/segmentation.py:ae_root=/tmp/paper/segmentation/ae \\
      --grid=args.segment=fixed,words,sentences \\
      --root=/tmp/paper/segmentation/lm --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/segmentation/lm/* \\
      --out=/tmp/paper/segmentation/report

Expected cost on 2 CPU cores (an estimate from the documented times of
configs/autoencoder.py and configs/shakespeare.py, scaled by FLOPs): about
2 minutes of stage 1 and 3 of stage 2 a segmentation, plus evaluation: 15
minutes in all on an idle machine.

Args: segment (fixed), K (16), stage (concept_lm | autoencoder), ae_root.
"""

from latentlm import config_lib

study = config_lib.module_beside(__file__, 'study')

SEGMENTS = ('fixed', 'words', 'sentences')


def get_config(arg=None):
  args = config_lib.parse_args(arg, segment='fixed', K=16, **study.STUDY_ARGS)
  config_lib.choose('segment', args.segment, SEGMENTS)
  ae = study.autoencoder(K=args.K, segment=args.segment)
  return study.stage_config(args, ae, f'segment-{args.segment}')
