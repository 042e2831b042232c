"""Generative heads: p(z_next | h) for a latent z of size Z, given a hidden h.

Every head is a Linen module used through `module.apply(..., method=...)`:

  loss(h_NxD, z_NxMxZ, rng) -> loss_N   float32 per-position loss against
                                         M >= 1 target samples (heads that
                                         score one target average over M)
  sample(h_NxD, rng, temperature) -> z_NxZ
  sample_constants() -> what sample needs that depends on the params alone
                        (None for most heads); a sampler that samples many
                        times computes it once and passes it as sample's
                        `constants` (flow, diffusion: the step times'
                        embedding and the null condition's modulations)

Initialise with `method='loss'`: it creates every parameter `sample` uses.

Temperature: >= 0, where 0 is the deterministic limit (energy, flow and
diffusion start from zero noise; gmm takes its most likely component's mean).
A negative Python or NumPy temperature raises ValueError in every head, mse
included (which ignores the value), so a caller's bug does not depend on the
head; a traced temperature is not checked.

Heads compute in float32 whatever the backbone's dtype: they are small, and
their losses and likelihoods need the precision. Params carry logical axis
names: 'embed' for h's dim, 'mlp' for hidden dims (each kernel shards one dim,
Megatron style, so the residual stream stays whole), 'latent' for Z dims.

One file per head; base.py holds what they share.
"""

import flax.linen as nn
import ml_collections

from latentlm import config_lib
from latentlm.errors import UserError
from latentlm.models.heads.diffusion import cosine_alpha_bar
from latentlm.models.heads.diffusion import DiffusionHead
from latentlm.models.heads.energy import energy_score
from latentlm.models.heads.energy import EnergyHead
from latentlm.models.heads.flow import FlowHead
from latentlm.models.heads.flow import SOLVERS
from latentlm.models.heads.flow import TIME_SAMPLING
from latentlm.models.heads.gmm import GMMHead
from latentlm.models.heads.mse import MSEHead

__all__ = ['DiffusionHead', 'EnergyHead', 'FlowHead', 'GMMHead', 'HEADS',
           'MSEHead', 'SOLVERS', 'cosine_alpha_bar', 'default_head_config',
           'energy_score', 'make_head']

_SHARED = dict(hidden_dim=256, num_layers=3)
_DEFAULTS = {
    'mse': {},
    # CALM: 8 model samples per position for the pairwise term.
    'energy': dict(num_samples=8, noise_dim=64),
    # Steps and solver when sampling; the distribution of training times.
    # Guidance is off by default (no null condition: old runs still load).
    'flow': dict(num_steps=10, solver='euler', time_sampling='logit_normal',
                 guidance_scale=1.0, cond_dropout=0.0),
    # LCM samples with 40 DDIM steps and guidance 3; 1 is plain conditional.
    'diffusion': dict(num_steps=1000, sample_steps=40, guidance_scale=1.0,
                      cond_dropout=0.1),
    'gmm': dict(num_components=8, min_std=1e-3),
}


HEADS = {'mse': MSEHead, 'energy': EnergyHead, 'flow': FlowHead,
         'diffusion': DiffusionHead, 'gmm': GMMHead}


def _check_name(name):
  if name not in HEADS:
    raise UserError(f'unknown head {name!r}; choose one of {sorted(HEADS)}'
                    f'{config_lib.suggest(name, HEADS)}')


def default_head_config(name: str) -> ml_collections.ConfigDict:
  """Every field of head `name`, with its defaults."""
  _check_name(name)
  return ml_collections.ConfigDict(dict(name=name, **_SHARED,
                                        **_DEFAULTS[name]))


def make_head(head_config, latent_dim: int) -> nn.Module:
  """The head `head_config.name` over latents of size latent_dim.

  Fields the config leaves out take their defaults, and fields of other heads
  are ignored, so switching `name` alone on the command line works; a field no
  head knows is an error.
  """
  _check_name(head_config['name'])
  fields = default_head_config(head_config['name']).to_dict()
  known = set(_SHARED).union(*_DEFAULTS.values(), ['name'])
  for key, value in head_config.items():
    if key not in known:
      raise UserError(f'unknown head config key {key!r}'
                      f'{config_lib.suggest(key, known)}')
    if key in fields:
      fields[key] = value
  name = fields.pop('name')
  if name == 'energy' and fields['num_samples'] < 2:
    raise UserError('head.num_samples must be >= 2 for the energy score')
  if name == 'flow' and fields['time_sampling'] not in TIME_SAMPLING:
    raise UserError(f'head.time_sampling={fields["time_sampling"]!r} is not '
                    f'one of {TIME_SAMPLING}')
  if name == 'flow' and fields['solver'] not in SOLVERS:
    raise UserError(f'head.solver={fields["solver"]!r} is not one of '
                    f'{SOLVERS}')
  if name == 'diffusion' and not 1 <= fields['sample_steps'] <= fields[
      'num_steps']:
    raise UserError('head.sample_steps must be in [1, head.num_steps]')
  if name in ('flow', 'diffusion'):
    if not 0 <= fields['cond_dropout'] < 1:
      raise UserError('head.cond_dropout must be in [0, 1)')
    if fields['guidance_scale'] != 1.0 and fields['cond_dropout'] == 0:
      raise UserError('head.guidance_scale needs a null condition to guide '
                      'from: train with head.cond_dropout > 0 (e.g. 0.1)')
  return HEADS[name](latent_dim=latent_dim, **fields)
