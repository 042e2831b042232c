"""Study (d): autoencoder robustness. What do CALM's robust-latent terms
(KL with free bits, dropout on z, masking of input tokens) buy: reconstruction
under noise on z, and the BrierLM of the concept LM trained on top?

robust in {all, none, no_kl, no_dropout, no_mask}: all three on (the
configs/autoencoder.py recipe), all off, or one of them off. Stage 1 per
variant, evaluated by latentlm.evaluate (reconstruction at noise sigma in
latentlm.metrics.reconstruction.NOISE_STDS); stage 2 at the same all-in FLOPs on
each (its stage 1 included), evaluated with BrierLM. Run the whole study:

  python launch/sweep.py --config=configs/paper/robustness.py:stage=autoencoder \\
      --grid=args.robust=all,none,no_kl,no_dropout,no_mask \\
      --root=/tmp/paper/robustness/ae --eval_flag=--split=test && \\
  python launch/sweep.py \\
      --config=configs/paper/robustness.py:ae_root=/tmp/paper/robustness/ae \\
      --grid=args.robust=all,none,no_kl,no_dropout,no_mask \\
      --root=/tmp/paper/robustness/lm --evaluate=brier \\
      --eval_flag=--split=test
  python -m latentlm.report --split=test /tmp/paper/robustness/ae/* /tmp/paper/robustness/lm/* \\
      --out=/tmp/paper/robustness/report

Sized to run in under 30 minutes on 2 CPU cores; its cost and results are
in docs/results/robustness.md. Its "all" concept LM is the heads study's
flow run and the chunk-size study's K=4 run.

Args: robust (all), stage (concept_lm | autoencoder), ae_root.
"""

from latentlm.core import config_lib

from configs.paper import study


# Variant -> the robustness terms it turns off.
VARIANTS = {
    'all': (),
    'none': ('kl', 'dropout', 'mask'),
    'no_kl': ('kl',),
    'no_dropout': ('dropout',),
    'no_mask': ('mask',),
}


def get_config(arg=None):
  args = config_lib.parse_args(arg, robust='all', **study.STUDY_ARGS)
  off = VARIANTS[config_lib.choose('robust', args.robust, VARIANTS)]
  ae = study.autoencoder()
  if 'kl' in off:
    ae.ae.kl_weight = 0.0
  if 'dropout' in off:
    ae.ae.z_dropout = 0.0
  if 'mask' in off:
    ae.model.token_mask_prob = 0.0
  return study.stage_config(args, ae, f'robust-{args.robust}')
