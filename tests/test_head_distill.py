"""Head distillation: only the head trains, the student matches the teacher
where their samplers agree, the sharded step and resume, FLOPs, bad input."""

import os
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import test_concept_lm as concept_lm_test
import test_flops as flops_test
from latentlm import tasks
from latentlm.core import config_lib
from latentlm.core import sharding
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.tasks import flops
from latentlm.training import checkpoint
from latentlm.training import loop as train_loop
from latentlm.training import runs
from latentlm.training import trainer as trainer_lib

S = concept_lm_test.S
N = 2  # steps before the checkpoint; the uninterrupted run has 2N
DISTILL = config_lib.load_module(
    os.path.join(helpers.REPO, 'configs', 'head_distill.py'))


def _teacher_config(autoencoder_workdir, data_dir, **head):
  c = helpers.load_config('concept_lm', 'size=nano,head=flow')
  c.autoencoder_workdir = autoencoder_workdir
  c.data.update(name='files', files=f'{data_dir}/*.txt', data_dir=data_dir,
                seq_len=S)
  c.model.max_len = S
  # The main job's kind of teacher: guided, Adams-Bashforth.
  c.head.update(hidden_dim=32, num_layers=1, num_steps=3, solver='ab2',
                cond_dropout=0.1, guidance_scale=3.0, **head)
  c.head_targets = 2
  c.train.update(batch_size=8, progress_bar=False)
  c.mesh.update(dict(data=1, fsdp=1, tensor=1))
  return c


def _fake_teacher_workdir(path, config):
  """A concept LM workdir holding random params on its stage 1."""
  task = runs.build_task(config)
  trainer = trainer_lib.Trainer(config, task,
                          sharding.make_mesh(config.mesh, jax.devices()[:1]))
  abstract = trainer.abstract_state
  state = abstract.replace(
      step=np.ones((), np.int32),
      params=concept_lm_test._random_like(abstract.params, seed=2),  # pylint: disable=protected-access
      opt_state=jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                             abstract.opt_state),
      frozen=jax.device_get(nn.meta.unbox(
          task.init_frozen(jax.random.key(0)))))
  state = jax.device_put(jax.tree.map(np.asarray, state),
                         trainer.state_shardings)
  concept_lm_test.write_workdir(path, config, task, state)
  return jax.device_get(state)


def _student_config(teacher_workdir, teacher_config, **head):
  c = DISTILL.student_config(teacher_config)
  c.teacher_workdir = teacher_workdir
  c.head.update(head)
  c.optimizer.warmup_steps = 1
  return c


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  ae_path, data_dir, _ = concept_lm_test.make_stage1(tmp_path_factory)
  path = str(tmp_path_factory.mktemp('teacher'))
  config = _teacher_config(ae_path, data_dir)
  state = _fake_teacher_workdir(path, config)
  return types.SimpleNamespace(path=path, config=config, state=state,
                               data_dir=data_dir, ae_path=ae_path)


@pytest.fixture(scope='module')
def eight_devices(teacher, tmp_path_factory):
  """2N distillation steps on 8 devices, checkpointed at step N."""
  config = _student_config(teacher.path, teacher.config)
  config.mesh.update(dict(data=2, fsdp=4, tensor=1))
  task = runs.build_task(config)  # the teacher's weights
  trainer = trainer_lib.Trainer(config, task, sharding.make_mesh(config.mesh))
  ckpt = checkpoint.Checkpointer(str(tmp_path_factory.mktemp('ckpt')), 1, N)
  data = trainer_lib.make_data(config, task, 'train', 8, seed=0)
  initial = trainer.init_state()
  initial_host = jax.device_get(initial)
  state, losses = concept_lm_test.train_saving_at(trainer, initial, data, ckpt,
                                                  N)
  yield types.SimpleNamespace(
      task=task, trainer=trainer, ckpt=ckpt,
      initial=initial_host, final=jax.device_get(state), losses=losses,
      make_data=lambda: trainer_lib.make_data(config, task, 'train', 8, seed=0))
  ckpt.close()


def test_only_the_head_trains_from_the_teachers_weights(teacher,
                                                        eight_devices):
  run = eight_devices
  chex.assert_trees_all_equal(run.initial.params, teacher.state.params)
  backbone = lambda params: {k: v for k, v in params.items() if k != 'head'}
  chex.assert_trees_all_equal(backbone(run.final.params),
                              backbone(teacher.state.params))
  chex.assert_trees_all_equal(run.final.frozen['teacher_head'],
                              teacher.state.params['head'])
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                         run.final.params['head'], teacher.state.params['head'])
  # All but the null condition: an unguided student never reads it.
  assert not changed['trunk'].pop('null_cond')
  assert all(jax.tree.leaves(changed))
  assert run.losses[-1] < run.losses[0]
  # Adam's two moments for the head's leaves and nothing for the backbone.
  head_size = sum(x.size for x in jax.tree.leaves(teacher.state.params['head']))
  state_size = sum(np.size(x) for x in jax.tree.leaves(run.final.opt_state))
  assert head_size * 2 <= state_size < head_size * 2 + 8


def test_step_on_8_devices_equals_1_device(eight_devices):
  concept_lm_test.check_one_device_equals(eight_devices)


def test_resume_equals_uninterrupted(eight_devices):
  concept_lm_test.check_resume_equals_uninterrupted(eight_devices, N)


def _loss_metrics(task, params, frozen, seed=0):
  tokens = concept_lm_test._random_chunks(  # pylint: disable=protected-access
      np.random.default_rng(seed), (4, S + 1))
  return jax.device_get(task.loss(params, frozen, {'tokens': tokens},
                                  jax.random.key(seed), True))


def test_a_student_sampled_like_its_teacher_matches_it_exactly(teacher):
  """Same sampler, same weights: the shared noise gives the same latents."""
  head = teacher.config.head
  config = _student_config(teacher.path, teacher.config,
                           num_steps=head.num_steps, solver=head.solver,
                           guidance_scale=head.guidance_scale)
  task = tasks.get_task(config)
  params, frozen = jax.tree.map(jnp.asarray, (teacher.state.params, dict(
      teacher.state.frozen, teacher_head=teacher.state.params['head'])))
  loss, metrics = _loss_metrics(task, params, frozen)
  assert metrics['latent_se'] == 0.0 and metrics['chunk_agreement'] == 1.0
  # The one-step student of the same weights does not (its loss is > 0).
  one_step = tasks.get_task(_student_config(teacher.path, teacher.config))
  assert _loss_metrics(one_step, params, frozen)[1]['latent_se'] > 0.1
  # The cross-entropy part is the decoder's, against the teacher's tokens.
  assert loss == pytest.approx(metrics['token_ce'], rel=1e-6)


def test_one_step_student_is_the_noise_plus_one_velocity(teacher):
  """The student's sample, computed another way: x0 + v(x0, h, t=0)."""
  task = tasks.get_task(_student_config(teacher.path, teacher.config))
  head_params = {'params': teacher.state.params['head']}
  h_NxD = jax.random.normal(jax.random.key(1), (5, task.model_config.d_model))
  x_NxZ = 0.3 * jax.random.normal(jax.random.key(2), (5, task.latent_dim))
  sample_NxZ = task.head.apply(head_params, h_NxD, x_NxZ,
                               method='sample_from_noise')
  velocity_NxZ = task.head.apply(head_params, x_NxZ, h_NxD, jnp.zeros(5),
                                 method='velocity')
  chex.assert_trees_all_close(sample_NxZ, x_NxZ + velocity_NxZ, atol=1e-6)


@pytest.mark.parametrize('input_kind', ['tokens', 'latent'])
def test_flops_match_xla_cost_analysis(teacher, tmp_path, input_kind):
  """A teacher as wide as test_flops.py's matmul-heavy model, so matmuls
  dominate XLA's count; with latent input the step also runs the frozen
  encoder on its inputs."""
  teacher_config = _teacher_config(teacher.ae_path, teacher.data_dir)
  teacher_config.head.hidden_dim = 256
  teacher_config.model.update(d_model=256, num_heads=4, num_kv_heads=4,
                              head_dim=64, mlp_dim=768, input=input_kind,
                              scan_layers=False)  # XLA counts a scan once
  _fake_teacher_workdir(str(tmp_path), teacher_config)
  config = _student_config(str(tmp_path), teacher_config)
  xla_flops = flops_test.xla_train_flops(
      config, tasks.get_task(config),
      (config.train.batch_size, S + 1, concept_lm_test.K))
  assert flops.train_flops_per_step(config) == pytest.approx(xla_flops,
                                                              rel=0.1)


def test_all_in_flops_count_the_teacher_and_its_stage_1(teacher):
  config = _student_config(teacher.path, teacher.config)
  ae = workdir_lib.Workdir(teacher.ae_path).load_config()
  stage1 = ae.train.num_steps * flops.train_flops_per_step(ae)
  teacher_all_in = stage1 + teacher.config.train.num_steps * (
      flops.train_flops_per_step(teacher.config))
  assert flops.upstream_flops(config) == pytest.approx(teacher_all_in)
  assert flops.all_in_flops(config, 3) == pytest.approx(
      teacher_all_in + 3 * flops.train_flops_per_step(config))
  # The same from the configs alone, as a budget would count it.
  assert flops.upstream_flops(config, ae, teacher.config) == pytest.approx(
      teacher_all_in)


def test_train_ends_with_a_summary(teacher, tmp_path, capsys):
  config = _student_config(teacher.path, teacher.config)
  config.train.update(num_steps=1, log_every=1, eval_every=1,
                      checkpoint_every=1, eval_batches=1)
  config.mesh.data = -1  # every device
  run_dir = str(tmp_path / 'student')
  train_loop.train(config, run_dir)
  helpers.check_summary(capsys.readouterr().out, run_dir, '% concepts',
                        'nats/concept')


def test_bad_teacher_is_one_line_user_error(teacher, tmp_path):
  with pytest.raises(UserError, match='teacher_workdir is required'):
    tasks.get_task(_student_config('', teacher.config))
  with pytest.raises(UserError, match="'autoencoder' run, not a concept_lm"):
    tasks.get_task(_student_config(teacher.ae_path, teacher.config))
  energy = _teacher_config(teacher.ae_path, teacher.data_dir)
  energy.head = helpers.load_config('concept_lm', 'head=energy').head
  energy_workdir = workdir_lib.Workdir(str(tmp_path / 'energy'))
  energy_workdir.prepare(energy)
  with pytest.raises(UserError, match="'energy' head; distillation needs"):
    tasks.get_task(_student_config(energy_workdir.path, teacher.config))
  with pytest.raises(UserError, match='differs') as error:
    # Checked against the teacher's weights, which training hands it.
    runs.build_task(_student_config(teacher.path, teacher.config,
                                    hidden_dim=64))
  assert '\n' not in str(error.value)
  assert 'set --config.head.hidden_dim=32 as in' in str(error.value)
  config = _student_config(teacher.path, teacher.config)
  config.distill.temperature_min = 0.5
  config.distill.temperature_max = 0.2
  with pytest.raises(UserError, match='temperature_min <= temperature_max'):
    tasks.get_task(config)
