"""Tests for configs/paper: they load, meet their all-in FLOPs budgets,
vary what their study varies, and the paper-scale ones have the stated
sizes."""

import os

import pytest

from latentlm.core import config_lib
from latentlm.core.errors import UserError
from latentlm.tasks import flops

import helpers

PAPER = os.path.join(helpers.REPO, 'configs', 'paper')
HELPERS = ('__init__.py', 'budget.py', 'study.py')  # shared code, not configs
# Study config -> (argument, its values).
STUDIES = {
    'chunk_size': ('K', (1, 2, 4, 8, 16)),
    'heads': ('head', ('mse', 'energy', 'flow', 'diffusion', 'gmm')),
    'segmentation': ('segment', ('fixed', 'words', 'sentences')),
    'robustness': ('robust', ('all', 'none', 'no_kl', 'no_dropout',
                              'no_mask')),
    'ar_input': ('input', ('tokens', 'latent')),
}


def _module(name):
  return config_lib.load_module(os.path.join(PAPER, f'{name}.py'))


budget = _module('budget')


def _config(name, arg=None):
  return helpers.load_config(f'paper/{name}', arg)


def _stages(name, arg):
  """(stage-1 config, stage-2 config) of a concept-LM study."""
  ae = _config(name, f'{arg},stage=autoencoder')
  return ae, _config(name, f'{arg},ae_root=/ae')


def test_every_paper_config_is_covered_and_documented():
  names = sorted(f[:-3] for f in os.listdir(PAPER)
                 if f.endswith('.py') and f not in HELPERS)
  assert names == sorted([*STUDIES, 'token_baseline', 'scaling', 'calm_m',
                          'lcm_1b6'])
  for name in names:
    doc = _module(name).__doc__
    assert 'python' in doc and 'Args:' in doc, name
    if name in STUDIES or name == 'token_baseline':
      assert 'launch/sweep.py' in doc and 'latentlm.report' in doc, name
      # Its figures live with the results, not in the code.
      assert 'docs/results/' in doc and 'Measured' not in doc, name
  scaling_doc = _module('scaling').__doc__
  assert 'launch/sweep.py' in scaling_doc and 'Decision rule' in scaling_doc
  assert 'docs/results/scaling.md' in scaling_doc


def test_the_scaling_study_meets_every_budget_all_in():
  scaling = _module('scaling')
  for family in scaling.FAMILIES:
    for flops_budget in scaling.BUDGETS:
      c = _config('scaling', f'family={family},budget={flops_budget:g}')
      if family in scaling.TOKEN_FAMILIES:
        spent = budget.budget_flops_of(c)
        assert c.task == 'token_lm'
      elif family in scaling.UNIT_FAMILIES:
        # The flow family's recipe on units of meaning; entropy units' byte
        # LM is a stage of the pipeline and counts.
        assert c.task == 'pipeline' and c.stages.concept_lm.head.name == 'flow'
        ae = c.stages.autoencoder
        assert ae.segment.kind == scaling.UNIT_FAMILIES[family]
        assert ae.train.num_steps == _module('study').AUTOENCODER_STEPS
        assert ('entropy' in c.stages) == (family == 'entropy')
        # Rows of as many concepts as fixed K=4's.
        assert c.stages.concept_lm.data.seq_len == _config(
            'scaling', f'family=flow,budget={flops_budget:g}'
        ).stages.concept_lm.data.seq_len
        spent = flops.pipeline_flops(c)
      else:
        # A pipeline whose stage 1 is the other studies' and counts.
        assert c.task == 'pipeline'
        ae, lm = c.stages.autoencoder, c.stages.concept_lm
        assert ae.to_json() == _config('heads', 'stage=autoencoder').to_json()
        assert lm.head.name == family
        spent = budget.budget_flops_of(lm, ae)
      assert abs(spent / flops_budget - 1) < 0.01, (family, flops_budget)
  # At the other studies' budget a token family is token_baseline's run.
  assert _config('scaling', 'family=spm,budget=6e12').to_json() == (
      _config('token_baseline', 'tokens=spm').to_json())
  with pytest.raises(UserError, match='budget'):
    _config('scaling', 'family=bytes,budget=0')


def test_steps_for_budget():
  config = helpers.load_config('token_lm', 'size=tiny')
  per_step = flops.train_flops_per_step(config)
  assert budget.steps_for_budget(config, 10 * per_step) == 10
  assert budget.steps_for_budget(config, 10.4 * per_step) == 10
  assert budget.steps_for_budget(config, 0.1 * per_step) == 1
  config = budget.set_budget(config, 90 * per_step)
  assert config.train.num_steps == 90
  assert config.train.eval_every == config.train.checkpoint_every == 30
  assert config.optimizer.warmup_steps == 9
  # 73 steps: evaluations at 25, 50 and the final 73 (train.py evaluates at
  # the last step anyway), not at 24, 48, 72 and then again at 73.
  config = budget.set_budget(config, 73 * per_step)
  evaluated = [s for s in range(1, 74)
               if s % config.train.eval_every == 0 or s == 73]
  assert evaluated == [25, 50, 73]


def test_a_concept_lms_budget_pays_for_its_stage_1_first():
  ae, lm = _stages('heads', 'head=flow')
  upstream = flops.upstream_flops(lm, ae)
  assert upstream == ae.train.num_steps * flops.train_flops_per_step(ae) > 0
  per_step = flops.train_flops_per_step(lm, ae)
  assert budget.steps_for_budget(lm, upstream + 10 * per_step, ae) == 10
  with pytest.raises(UserError, match='builds on take .* more than its budget'):
    budget.steps_for_budget(lm, upstream, ae)


@pytest.mark.parametrize('name, arg, value', [
    (name, arg, value) for name, (arg, values) in STUDIES.items()
    for value in values])
def test_concept_studies_spend_the_budget_all_in(name, arg, value):
  ae, lm = _stages(name, f'{arg}={value}')
  assert ae.task == 'autoencoder' and lm.task == 'concept_lm'
  # Stage 1, then every stage-2 step, the frozen encoder and the token
  # readout included: within one step of the budget.
  spent = flops.all_in_flops(lm, lm.train.num_steps, ae)
  assert spent == budget.budget_flops_of(lm, ae)
  per_step = flops.train_flops_per_step(lm, ae)
  assert abs(spent - budget.CPU_BUDGET_FLOPS) <= per_step
  assert flops.upstream_flops(lm, ae) == pytest.approx(
      ae.train.num_steps * flops.train_flops_per_step(ae))
  assert lm.train.num_steps >= 20  # enough to evaluate along the way
  # Rows of the same text whatever K: 256 bytes when chunks are full.
  K = ae.segment.chunk_len
  assert lm.data.seq_len * K == 256 and lm.model.max_len == lm.data.seq_len
  assert lm.autoencoder_workdir.startswith('/ae/')


def test_each_study_varies_its_variable():
  for K in STUDIES['chunk_size'][1]:
    ae, lm = _stages('chunk_size', f'K={K}')
    assert ae.segment.chunk_len == K
    assert ae.copy_and_resolve_references().model.chunk_len == K
    assert lm.autoencoder_workdir == f'/ae/K-{K}'  # launch/sweep.py's name
  for head in STUDIES['heads'][1]:
    ae, lm = _stages('heads', f'head={head}')
    assert lm.head.name == head and lm.autoencoder_workdir == '/ae/base'
  for segment in STUDIES['segmentation'][1]:
    ae, lm = _stages('segmentation', f'segment={segment}')
    assert ae.segment.kind == segment
    assert lm.autoencoder_workdir == f'/ae/segment-{segment}'
  for kind in STUDIES['ar_input'][1]:
    _, lm = _stages('ar_input', f'input={kind}')
    assert lm.model.input == kind
  on = _config('robustness', 'robust=all,stage=autoencoder')
  assert on.ae.kl_weight > 0 and on.ae.z_dropout > 0
  assert on.model.token_mask_prob > 0
  off = _config('robustness', 'robust=none,stage=autoencoder')
  assert (off.ae.kl_weight, off.ae.z_dropout, off.model.token_mask_prob) == (
      0, 0, 0)
  no_kl = _config('robustness', 'robust=no_kl,stage=autoencoder')
  assert no_kl.ae.kl_weight == 0 and no_kl.ae.z_dropout == on.ae.z_dropout
  # Only the varied field differs between the variants' stage-2 configs.
  a, b = _config('heads', 'head=mse,ae_root=/ae'), _config(
      'heads', 'head=gmm,ae_root=/ae')
  assert a.model == b.model and a.data == b.data


def test_token_baseline_matches_flops_or_params():
  reference = _config('heads', 'head=flow,ae_root=/ae')
  reference_params = budget.concept_lm_params(
      reference, _config('heads', 'stage=autoencoder'))
  for tokens in ('bytes', 'spm'):
    by_flops = _config('token_baseline', f'tokens={tokens},match=flops')
    assert abs(budget.budget_flops_of(by_flops) - budget.CPU_BUDGET_FLOPS) <= (
        flops.train_flops_per_step(by_flops))
    by_params = _config('token_baseline', f'tokens={tokens},match=params')
    assert by_params.model.d_model == reference.model.d_model
    assert budget.token_lm_params(by_params) == pytest.approx(
        reference_params, rel=0.06)
    assert by_params.train.num_steps == reference.train.num_steps
    assert by_params.train.batch_size == reference.train.batch_size
  spm = _config('token_baseline', 'tokens=spm')
  assert spm.data.tokenizer == 'spm:1024' and spm.model.vocab_size == 1024
  assert spm.data.seq_len == 256 == spm.model.max_len
  assert _config('token_baseline', 'tokens=bytes').data.tokenizer == 'bytes'


@pytest.mark.parametrize('name, arg, message', [
    ('heads', '', 'needs ae_root'),
    ('chunk_size', 'K=3,ae_root=/ae', "K=3 is not one of"),
    ('heads', 'head=vae,ae_root=/ae', 'is not one of'),
    ('robustness', 'robust=some,ae_root=/ae', 'is not one of'),
    ('token_baseline', 'tokens=words', 'is not one of'),
    ('segmentation', 'stage=both', 'is not one of'),
])
def test_bad_study_arguments_are_user_errors(name, arg, message):
  with pytest.raises(UserError, match=message):
    _config(name, arg)


@pytest.mark.parametrize('name, autoencoder_arg, head, expected', [
    ('calm_m', 'K=4,Dz=128', 'energy', 370e6),
    ('lcm_1b6', 'segment=sentences,K=64,Dz=256', 'diffusion', 1.6e9),
])
def test_paper_scale_sizes(name, autoencoder_arg, head, expected):
  config = _config(name)
  assert config.task == 'concept_lm' and config.head.name == head
  assert config.model.dtype == 'bfloat16' and config.model.scan_layers
  assert config.mesh.fsdp > 1 and config.data.name != 'shakespeare'
  autoencoder = helpers.load_config('autoencoder', autoencoder_arg)
  assert budget.concept_lm_params(config, autoencoder) == pytest.approx(
      expected, rel=0.05)
  baseline = _config(name, 'baseline=true')
  assert baseline.task == 'token_lm'
  assert baseline.model.d_model == config.model.d_model
