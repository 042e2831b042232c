"""Study (c): segmentation. Do concepts cut at word or sentence boundaries
beat fixed K-byte chunks, for the same training FLOPs?

segment in {fixed, words, sentences}, each with chunks of at most K=16 bytes
(words and sentences pack whole words up to K, latentlm/data/segment.py),
so rows hold 16 concepts (256 bytes when chunks are full; fewer when word
and sentence chunks are padded, which the bits/byte and BrierLM count per
byte of text, so runs stay comparable). Stage 1 per segmentation; each
concept LM gets the same all-in FLOPs, its own stage 1 included. Run the whole study:

  python launch/sweep.py --config=configs/paper/segmentation.py:stage=autoencoder \\
      --grid=args.segment=fixed,words,sentences \\
      --root=/tmp/paper/segmentation/ae && \\
  python launch/sweep.py \\
      --config=configs/paper/segmentation.py:ae_root=/tmp/paper/segmentation/ae \\
      --grid=args.segment=fixed,words,sentences \\
      --root=/tmp/paper/segmentation/lm --evaluate=brier \\
      --eval_flag=--split=test --eval_flag=--block_bytes=64
  python -m latentlm.report --split=test /tmp/paper/segmentation/lm/* \\
      --out=/tmp/paper/segmentation/report

BrierLM uses 64-byte contexts here, not the default 128: the sampler reads
at most half its 16-concept window, 8 chunks, and 128 bytes of word or
sentence chunks (shorter than K when padded) are more than 8.

Sized to run in under 30 minutes on 2 CPU cores; its cost and results are
in docs/results/segmentation.md.

Args: segment (fixed), K (16), stage (concept_lm | autoencoder), ae_root.
"""

from latentlm.core import config_lib

from configs.paper import study


SEGMENTS = ('fixed', 'words', 'sentences')


def get_config(arg=None):
  args = config_lib.parse_args(arg, segment='fixed', K=16, **study.STUDY_ARGS)
  config_lib.choose('segment', args.segment, SEGMENTS)
  ae = study.autoencoder(K=args.K, segment=args.segment)
  return study.stage_config(args, ae, f'segment-{args.segment}')
