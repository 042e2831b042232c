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

One file per head; base.py holds what they share. A head class also
declares its config fields (its dataclass fields, with their defaults), what
values they may take (`check`), its FLOPs (`loss_weights`) and the unit of
its loss (`loss_unit`); HEADS names it for configs.
"""

import dataclasses

import flax.linen as nn
import ml_collections

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.models.heads.base import Head
from latentlm.models.heads.diffusion import cosine_alpha_bar
from latentlm.models.heads.diffusion import DiffusionHead
from latentlm.models.heads.energy import energy_score
from latentlm.models.heads.energy import EnergyHead
from latentlm.models.heads.flow import FlowHead
from latentlm.models.heads.flow import SOLVERS
from latentlm.models.heads.gmm import GMMHead
from latentlm.models.heads.mse import MSEHead

__all__ = ['DiffusionHead', 'EnergyHead', 'FlowHead', 'GMMHead', 'HEADS',
           'Head', 'MSEHead', 'SOLVERS', 'cosine_alpha_bar',
           'default_head_config', 'energy_score', 'head_class', 'head_config',
           'make_head', 'register_head']

# config.head.name -> its class. A new head is its file and one line here
# (or register_head, from outside the package); its fields and defaults are
# the class's dataclass fields, its FLOPs its `loss_weights`.
HEADS = {'mse': MSEHead, 'energy': EnergyHead, 'flow': FlowHead,
         'diffusion': DiffusionHead, 'gmm': GMMHead}
# Dataclass fields that no config sets: the latent size comes from stage 1,
# the rest is flax's.
_NOT_CONFIG_FIELDS = ('latent_dim', 'parent', 'name')


def register_head(name: str, head_class: type[Head]):
  """Makes `head_class` (a base.Head) the head `config.head.name=name`."""
  if name in HEADS and HEADS[name] is not head_class:
    raise ValueError(f'head {name!r} is already {HEADS[name].__name__}')
  HEADS[name] = head_class


def head_class(name: str) -> type[Head]:
  if name not in HEADS:
    raise UserError(f'unknown head {name!r}; choose one of {sorted(HEADS)}'
                    f'{config_lib.suggest(name, HEADS)}')
  return HEADS[name]


def _defaults(name: str) -> dict:
  """The config fields of head `name` with their defaults, in field order."""
  return {f.name: f.default for f in dataclasses.fields(head_class(name))
          if f.name not in _NOT_CONFIG_FIELDS}


def default_head_config(name: str) -> ml_collections.ConfigDict:
  """Every field of head `name`, with its defaults."""
  return ml_collections.ConfigDict(dict(name=name, **_defaults(name)))


def head_config(config) -> ml_collections.ConfigDict:
  """Every field of head `config.name`: the config's values, the defaults
  for those it leaves out; fields of other heads are ignored, so switching
  `name` alone on the command line works. A field no head knows, or a value
  the head cannot take, is a one-line UserError."""
  fields = default_head_config(config['name']).to_dict()
  known = {'name'}.union(*(_defaults(name) for name in HEADS))
  for key, value in config.items():
    if key not in known:
      raise UserError(f'unknown head config key {key!r}'
                      f'{config_lib.suggest(key, known)}')
    if key in fields:
      fields[key] = value
  head_class(fields['name']).check(fields)
  return ml_collections.ConfigDict(fields)


def make_head(config, latent_dim: int) -> nn.Module:
  """The head `config.name` over latents of size latent_dim (head_config
  says which fields it reads)."""
  fields = head_config(config).to_dict()
  return head_class(fields.pop('name'))(latent_dim=latent_dim, **fields)
