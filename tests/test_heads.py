"""Generative heads: numerics against numpy references, and learning toys.

The toy: 2-D targets with two modes, (-2, 0) and (+2, 0). h is a one-hot of
three kinds: 0 says nothing (30% left, 70% right), 1 means left, 2 right. One
short jitted training per head serves every test that needs a trained head.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.models import heads
from latentlm.models.heads import base

MODES = np.array([[-2.0, 0.0], [2.0, 0.0]], np.float32)
P_RIGHT = 0.7
MODE_STD = 0.1
NUM_KINDS = 3
TRAIN_STEPS = 300
BATCH = 128
TINY = dict(hidden_dim=32, num_layers=2)
# Few Euler steps bias flow samples toward the bigger mode (10 steps: ~+3%).
TOY_FIELDS = {'flow': dict(num_steps=32)}
GENERATIVE = ('energy', 'flow', 'diffusion', 'gmm')
# Every sampling test uses these rows, so each head compiles `sample` once.
EVAL_COUNTS = (3000, 500, 500)
EVAL_H = np.repeat(np.eye(NUM_KINDS, dtype=np.float32), EVAL_COUNTS, axis=0)
UNINFORMED, LEFT, RIGHT = np.split(np.arange(len(EVAL_H)),
                                   np.cumsum(EVAL_COUNTS)[:2])


def _head(name, **overrides):
  config = heads.default_head_config(name)
  config.update(TINY, **overrides)
  return heads.make_head(config, latent_dim=2)


def _toy_batch(rng, shape, m=2):
  """h: shape x 3 one-hots; z: shape x m x 2 targets drawn given the kind."""
  kind = rng.integers(0, NUM_KINDS, shape)
  right = np.where(kind[..., None] == 0, rng.random(shape + (m,)) < P_RIGHT,
                   kind[..., None] == 2)
  z = MODES[right.astype(int)] + MODE_STD * rng.normal(size=right.shape + (2,))
  return np.eye(NUM_KINDS, dtype=np.float32)[kind], z.astype(np.float32)


@functools.cache
def _trained(name):
  """(head, params) after TRAIN_STEPS Adam steps on the toy."""
  head = _head(name, **TOY_FIELDS.get(name, {}))
  # One flat optimizer state and rbg keys: the same training, compiled faster.
  optimizer = optax.flatten(
      optax.adam(optax.cosine_decay_schedule(3e-3, TRAIN_STEPS)))

  def step(carry, batch):
    params, opt_state = carry
    h, z, key = batch
    loss_fn = lambda p: jnp.mean(head.apply(
        {'params': p}, h, z, key, method='loss'))
    updates, opt_state = optimizer.update(
        jax.grad(loss_fn)(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  @jax.jit
  def fit(key, h_TxNx3, z_TxNxMx2):
    params = nn.unbox(head.init(key, h_TxNx3[0], z_TxNxMx2[0], key,
                                method='loss')['params'])
    keys = jax.random.split(key, TRAIN_STEPS)
    (params, _), _ = jax.lax.scan(
        step, (params, optimizer.init(params)), (h_TxNx3, z_TxNxMx2, keys))
    return params

  h, z = _toy_batch(np.random.default_rng(0), (TRAIN_STEPS, BATCH))
  return head, fit(jax.random.key(1, impl='rbg'), h, z)


@functools.cache
def _sample_fn(name):
  head, params = _trained(name)
  sample = jax.jit(lambda p, key, t: head.apply(
      {'params': p}, EVAL_H, key, t, method='sample'))
  return lambda key, t: np.asarray(sample(params, key, t))


def _samples(name, seed=2, temperature=1.0):
  """Samples of the trained head for the rows of EVAL_H."""
  return _sample_fn(name)(jax.random.key(seed), temperature)


@pytest.mark.parametrize('name', GENERATIVE)
def test_samples_cover_both_modes_in_proportion(name):
  x_Nx2 = _samples(name)[UNINFORMED]
  assert abs(np.mean(x_Nx2[:, 0] > 0) - P_RIGHT) < 0.05
  # Mass sits on the modes, not smeared between them.
  dist_N = np.min(np.linalg.norm(x_Nx2[:, None] - MODES, axis=-1), axis=1)
  assert np.mean(dist_N < 0.5) > 0.85


@pytest.mark.parametrize('name', GENERATIVE)
def test_samples_follow_h(name):
  x_Nx2 = _samples(name)
  assert np.mean(x_Nx2[LEFT, 0] < 0) > 0.97
  assert np.mean(x_Nx2[RIGHT, 0] > 0) > 0.97


def test_mse_predicts_the_mean():
  pred_Nx2 = _samples('mse')
  expected_mean = (1 - P_RIGHT) * MODES[0] + P_RIGHT * MODES[1]
  for rows, expected in ((UNINFORMED, expected_mean), (LEFT, MODES[0]),
                         (RIGHT, MODES[1])):
    np.testing.assert_allclose(pred_Nx2[rows], np.broadcast_to(
        expected, (len(rows), 2)), atol=0.05)
  # No distribution: rng and temperature change nothing.
  np.testing.assert_array_equal(_samples('mse', 3, 0.0), pred_Nx2)
  np.testing.assert_array_equal(_samples('mse', 4, 5.0), pred_Nx2)


@pytest.mark.parametrize('name', ('energy', 'flow', 'diffusion'))
def test_zero_temperature_is_deterministic(name):
  x_Nx2 = _samples(name, 5, 0.0)
  np.testing.assert_array_equal(x_Nx2, _samples(name, 6, 0.0))
  assert np.all(np.isfinite(x_Nx2))
  assert not np.allclose(_samples(name, 5), _samples(name, 6))


def _perturbed_params(head, h_NxD):
  """Initial params plus noise, so that the zero-initialised modulations and
  gates matter."""
  params = nn.unbox(head.init(jax.random.key(0), h_NxD,
                              jnp.zeros((len(h_NxD), 1, 2)),
                              jax.random.key(1), method='loss')['params'])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(tree, [
      leaf + 0.3 * jax.random.normal(key, leaf.shape)
      for leaf, key in zip(leaves, keys)])


# 5 steps run unrolled, 20 as a while loop (heads.base.MAX_UNROLLED_STEPS).
@pytest.mark.parametrize('solver', heads.SOLVERS)
@pytest.mark.parametrize('num_steps,guidance_scale', ((5, 1.0), (20, 1.0),
                                                      (5, 2.5)))
def test_flow_sample_is_solver_steps_over_the_velocity(num_steps,
                                                       guidance_scale, solver):
  # The sampler conditions all steps at once and runs both conditions in one
  # stream; the reference calls the training-time velocity at each step's
  # time, once per condition.
  head = _head('flow', num_steps=num_steps, guidance_scale=guidance_scale,
               cond_dropout=0.1, solver=solver)
  h_Nx3 = EVAL_H[::500]
  params = {'params': _perturbed_params(head, h_Nx3)}
  key, temperature = jax.random.key(4), 0.7
  x_Nx2 = temperature * jax.random.normal(key, (len(h_Nx3), 2))
  dt = 1.0 / num_steps

  def velocity(x_Nx2, i):
    t_N = jnp.full(len(h_Nx3), i * dt)
    v_Nx2 = head.apply(params, x_Nx2, h_Nx3, t_N, False, method='velocity')
    if guidance_scale == 1.0:
      return v_Nx2
    uncond_Nx2 = head.apply(params, x_Nx2, h_Nx3, t_N, True,
                            method='velocity')
    return uncond_Nx2 + guidance_scale * (v_Nx2 - uncond_Nx2)

  last_v_Nx2 = None
  for i in range(num_steps):
    v_Nx2 = step_v_Nx2 = velocity(x_Nx2, i)
    if solver == 'heun' and i < num_steps - 1:  # the last step is Euler's
      step_v_Nx2 = (v_Nx2 + velocity(x_Nx2 + dt * v_Nx2, i + 1)) / 2
    if solver == 'ab2' and i > 0:  # the first step is Euler's
      step_v_Nx2 = 1.5 * v_Nx2 - 0.5 * last_v_Nx2
    x_Nx2 = x_Nx2 + dt * step_v_Nx2
    last_v_Nx2 = v_Nx2
  for constants in _with_and_without_sample_constants(head, params):
    chex.assert_trees_all_close(
        head.apply(params, h_Nx3, key, temperature, constants,
                   method='sample'), x_Nx2, atol=1e-4)


def _with_and_without_sample_constants(head, params):
  """None (the head computes its constants) and the constants a sampler
  precomputes once (ConceptSampler): both must sample the same."""
  return None, head.apply(params, method='sample_constants')


def test_flow_heun_and_ab2_converge_at_second_order():
  # Against the exact end point (256 Euler steps), doubling the steps halves
  # Euler's error and cuts Heun's and Adams-Bashforth's by more than 2.5x;
  # both at 8 steps (15 and 8 velocities) beat Euler at 16. The field is
  # made smooth in t, which the random params' sinusoidal time features (up
  # to 1000 rad per unit t) are not, with a gentle output layer.
  h_Nx3 = EVAL_H[::500]
  params = _perturbed_params(_head('flow'), h_Nx3)
  params['trunk']['time'] = jax.tree.map(jnp.zeros_like,
                                         params['trunk']['time'])
  params['out'] = jax.tree.map(lambda x: 0.3 * x, params['out'])
  key = jax.random.key(7)

  def end_point(num_steps, solver):
    head = _head('flow', num_steps=num_steps, solver=solver)
    return np.asarray(head.apply({'params': params}, h_Nx3, key,
                                 method='sample'))
  exact_Nx2 = end_point(256, 'euler')
  error = {(steps, solver): np.abs(end_point(steps, solver) - exact_Nx2).max()
           for steps in (8, 16) for solver in heads.SOLVERS}
  assert error[16, 'euler'] > error[8, 'euler'] / 2.5, error
  for solver in ('heun', 'ab2'):
    assert error[16, solver] < error[8, solver] / 2.5, error
    assert error[8, solver] < error[16, 'euler'] / 2, error


@pytest.mark.parametrize('time_sampling', ('logit_normal', 'uniform'))
def test_flow_loss_is_velocity_regression_on_the_linear_path(time_sampling):
  head = _head('flow', time_sampling=time_sampling)
  h_Nx3, z_NxMx2 = _toy_batch(np.random.default_rng(5), (6,), m=3)
  params = {'params': _perturbed_params(head, h_Nx3)}
  key = jax.random.key(6)
  # The head's draws, remade: t from its distribution, x0 ~ N(0, I).
  t_rng, noise_rng = jax.random.split(key)
  if time_sampling == 'logit_normal':  # the sigmoid, in numpy
    t_NxM = 1 / (1 + np.exp(-np.asarray(jax.random.normal(t_rng, (6, 3)))))
  else:
    t_NxM = np.asarray(jax.random.uniform(t_rng, (6, 3)))
  x0_NxMx2 = np.asarray(jax.random.normal(noise_rng, z_NxMx2.shape))
  xt_NxMx2 = (1 - t_NxM[..., None]) * x0_NxMx2 + t_NxM[..., None] * z_NxMx2
  v_NxMx2 = np.asarray(head.apply(params, jnp.asarray(xt_NxMx2),
                                  h_Nx3[:, None], jnp.asarray(t_NxM),
                                  method='velocity'))
  expected_N = np.mean((v_NxMx2 - (z_NxMx2 - x0_NxMx2))**2, axis=(1, 2))
  np.testing.assert_allclose(
      head.apply(params, h_Nx3, z_NxMx2, key, method='loss'), expected_N,
      rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('guidance_scale', (1.0, 2.5))
def test_diffusion_sample_is_ddim_steps_over_the_denoiser(guidance_scale):
  steps = 6
  head = _head('diffusion', sample_steps=steps, guidance_scale=guidance_scale)
  h_Nx3 = EVAL_H[::500]
  params = {'params': _perturbed_params(head, h_Nx3)}
  key, temperature = jax.random.key(4), 0.7
  x_Nx2 = temperature * jax.random.normal(key, (len(h_Nx3), 2))
  for i in range(steps):
    t, t_next = 1 - i / steps, 1 - (i + 1) / steps
    t_N = jnp.full(len(h_Nx3), t)
    x0_Nx2 = head.apply(params, x_Nx2, h_Nx3, t_N, False, method='denoise')
    uncond_Nx2 = head.apply(params, x_Nx2, h_Nx3, t_N, True, method='denoise')
    x0_Nx2 = uncond_Nx2 + guidance_scale * (x0_Nx2 - uncond_Nx2)
    alpha_bar, alpha_bar_next = (heads.cosine_alpha_bar(t),
                                 heads.cosine_alpha_bar(t_next))
    eps_Nx2 = (x_Nx2 - np.sqrt(alpha_bar) * x0_Nx2) / np.sqrt(1 - alpha_bar)
    x_Nx2 = (np.sqrt(alpha_bar_next) * x0_Nx2 +
             np.sqrt(1 - alpha_bar_next) * eps_Nx2)
  # Guidance and 1/sqrt(1 - alpha_bar) amplify float32 rounding (~1e-4).
  for constants in _with_and_without_sample_constants(head, params):
    chex.assert_trees_all_close(
        head.apply(params, h_Nx3, key, temperature, constants,
                   method='sample'), x_Nx2, atol=2e-3, rtol=2e-3)


def test_gmm_zero_temperature_is_the_top_component_mean():
  head, params = _trained('gmm')
  log_weights_NxK, mean_NxKxZ, _ = jax.jit(functools.partial(
      head.apply, method='mixture'))({'params': params}, EVAL_H)
  top_N = np.argmax(log_weights_NxK, axis=1)
  np.testing.assert_allclose(_samples('gmm', 5, 0.0),
                             np.asarray(mean_NxKxZ)[np.arange(len(top_N)),
                                                    top_N])


@pytest.mark.parametrize('name', sorted(heads.HEADS))
def test_negative_temperature_raises(name):
  head, params = _trained(name)
  with pytest.raises(ValueError, match='temperature'):
    head.apply({'params': params}, EVAL_H, jax.random.key(0), -0.5,
               method='sample')


def _np_log_prob(log_weights_K, mean_KxZ, std_KxZ, z_Z):
  log_normal_K = np.sum(
      -0.5 * ((z_Z - mean_KxZ) / std_KxZ) ** 2 - np.log(std_KxZ)
      - 0.5 * np.log(2 * np.pi), axis=1)
  a_K = log_weights_K + log_normal_K
  return a_K.max() + np.log(np.sum(np.exp(a_K - a_K.max())))


def test_gmm_log_prob_and_loss_match_numpy():
  head, params = _trained('gmm')
  rng = np.random.default_rng(1)
  h_Nx3, z_NxMx2 = _toy_batch(rng, (6,), m=3)
  z_NxMx2 += rng.normal(scale=0.3, size=z_NxMx2.shape).astype(np.float32)

  @jax.jit
  def evaluate(h_Nx3, z_NxMx2):
    apply = functools.partial(head.apply, {'params': params})
    log_prob_NxM = jnp.stack([apply(h_Nx3, z_NxMx2[:, m], method='log_prob')
                              for m in range(z_NxMx2.shape[1])], axis=1)
    return (apply(h_Nx3, method='mixture'), log_prob_NxM,
            apply(h_Nx3, z_NxMx2, jax.random.key(0), method='loss'))

  (log_weights, mean, std), log_prob_NxM, loss_N = jax.tree.map(
      np.asarray, evaluate(h_Nx3, z_NxMx2))
  assert np.ptp(mean[0, :, 0]) > 1.0 and np.ptp(std) > 0.01  # non-trivial
  expected_NxM = np.array(
      [[_np_log_prob(log_weights[n], mean[n], std[n], z) for z in z_NxMx2[n]]
       for n in range(6)])
  np.testing.assert_allclose(log_prob_NxM, expected_NxM, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(loss_N, -expected_NxM.mean(1), rtol=1e-5,
                             atol=1e-4)


def _np_energy_score(x_SxZ, y_MxZ):
  s = len(x_SxZ)
  fit = np.mean([np.linalg.norm(x - y) for x in x_SxZ for y in y_MxZ])
  spread = sum(np.linalg.norm(x_SxZ[i] - x_SxZ[j])
               for i in range(s) for j in range(s) if i != j) / (s * (s - 1))
  return fit - 0.5 * spread


def test_energy_score_matches_numpy():
  rng = np.random.default_rng(0)
  x_NxSxZ = rng.normal(size=(3, 4, 5)).astype(np.float32)
  y_NxMxZ = rng.normal(size=(3, 2, 5)).astype(np.float32)
  np.testing.assert_allclose(
      heads.energy_score(x_NxSxZ, y_NxMxZ),
      [_np_energy_score(x, y) for x, y in zip(x_NxSxZ, y_NxMxZ)], rtol=1e-5)


def test_energy_score_gradient_is_finite_for_equal_samples():
  x_1x3x2 = jnp.array([[[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]]])
  grad = jax.jit(jax.grad(lambda x: heads.energy_score(x, x[:, :1]).sum()))(
      x_1x3x2)
  assert np.all(np.isfinite(grad))


def test_energy_loss_scores_the_generator_samples():
  head, params = _trained('energy')
  h_Nx3, z_NxMx2 = _toy_batch(np.random.default_rng(2), (4,), m=3)

  @jax.jit
  def evaluate(key):
    apply = functools.partial(head.apply, {'params': params})
    return (apply(h_Nx3, key, head.num_samples, method='sample_many'),
            apply(h_Nx3, z_NxMx2, key, method='loss'))

  x_NxSx2, loss_N = evaluate(jax.random.key(3))
  np.testing.assert_allclose(
      loss_N, [_np_energy_score(x, y) for x, y in zip(np.asarray(x_NxSx2),
                                                      z_NxMx2)],
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', sorted(heads.HEADS))
def test_shapes_and_logical_axes(name):
  n, m, z, d = 3, 2, 5, 7
  head = heads.make_head(dict(name=name, hidden_dim=8, num_layers=1,
                              guidance_scale=2.0, cond_dropout=0.1),
                         latent_dim=z)
  h = jax.ShapeDtypeStruct((n, d), jnp.bfloat16)
  targets = jax.ShapeDtypeStruct((n, m, z), jnp.bfloat16)
  key = jax.eval_shape(jax.random.key, 0)
  variables = jax.eval_shape(functools.partial(head.init, method='loss'),
                             key, h, targets, key)
  loss = jax.eval_shape(functools.partial(head.apply, method='loss'),
                        variables, h, targets, key)
  chex.assert_shape(loss, (n,))
  assert loss.dtype == jnp.float32
  temperature = jax.ShapeDtypeStruct((), jnp.float32)  # traced: unchecked
  sample = jax.eval_shape(functools.partial(head.apply, method='sample'),
                          variables, h, key, temperature)
  chex.assert_shape(sample, (n, z))
  names = jax.tree.leaves(nn.get_partition_spec(variables['params']))
  assert {a for spec in names for a in spec} <= {'embed', 'mlp', 'latent',
                                                 None}
  # Maps onto a mesh (flax rejects a name used twice in one param).
  sharding.logical_shardings(variables, _mesh(), _rules())


def _mesh():
  return sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))


def _rules():
  return sharding.logical_rules(('embed=fsdp', 'mlp=tensor', 'latent='))


def test_trunk_norm_is_layer_norm_without_scale_or_bias():
  # One reduction for both moments; a constant row has variance 0.
  x_3xH = np.random.default_rng(8).normal(3.0, 2.0, (3, 64)).astype(
      np.float32)
  x_3xH[1] = 5.0
  expected_3xH = nn.LayerNorm(use_scale=False, use_bias=False).apply(
      {}, x_3xH)
  chex.assert_trees_all_close(base.norm(x_3xH), expected_3xH, atol=1e-6)
  chex.assert_trees_all_equal(base.norm(x_3xH)[1], np.zeros(64, np.float32))


def test_sharded_loss_matches_unsharded():
  head, params = _trained('mse')
  h_Nx3, z_NxMx2 = _toy_batch(np.random.default_rng(3), (16,))
  boxed = jax.eval_shape(functools.partial(head.init, method='loss'),
                         jax.random.key(0), h_Nx3, z_NxMx2, None)['params']
  # h's dim (3) does not split over fsdp=2, so shard only the hidden dims.
  mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=2))
  sharded = jax.device_put(
      params, sharding.logical_shardings(boxed, mesh, _rules()))
  assert sharded['trunk']['cond']['kernel'].sharding.spec == (
      jax.sharding.PartitionSpec('fsdp', 'tensor'))
  loss = jax.jit(lambda p: head.apply({'params': p}, h_Nx3, z_NxMx2, None,
                                      method='loss'))
  with jax.set_mesh(mesh):
    sharded_loss = loss(sharded)
  np.testing.assert_allclose(sharded_loss, loss(params), rtol=1e-5,
                             atol=1e-6)


def test_unknown_head_suggests_a_name():
  with pytest.raises(UserError, match="did you mean 'energy'"):
    heads.make_head(dict(name='energi'), latent_dim=2)
  with pytest.raises(UserError, match="did you mean 'gmm'"):
    heads.default_head_config('gmn')


def test_config_fields():
  config = heads.default_head_config('diffusion')
  assert set(config) == {'name', 'hidden_dim', 'num_layers', 'num_steps',
                         'sample_steps', 'guidance_scale', 'cond_dropout'}
  assert heads.default_head_config('energy').num_samples == 8
  # Switching only the name keeps working: other heads' fields are ignored.
  config = heads.default_head_config('energy')
  config.name = 'flow'
  head = heads.make_head(config, latent_dim=4)
  assert isinstance(head, heads.FlowHead) and head.num_steps == 10
  with pytest.raises(UserError, match="'num_layers'"):
    heads.make_head(dict(name='mse', num_layer=2), latent_dim=2)
  with pytest.raises(UserError, match='num_samples'):
    heads.make_head(dict(name='energy', num_samples=1), latent_dim=2)
  assert head.time_sampling == 'logit_normal'
  with pytest.raises(UserError, match="time_sampling='normal' is not one of"):
    heads.make_head(dict(name='flow', time_sampling='normal'), latent_dim=2)
  assert head.solver == 'euler'
  with pytest.raises(UserError, match="solver='rk4' is not one of"):
    heads.make_head(dict(name='flow', solver='rk4'), latent_dim=2)
  # Guidance needs the null condition that dropout trains; flow has neither
  # by default, so its runs from before guidance still load.
  assert 'null_cond' not in jax.eval_shape(
      functools.partial(head.init, method='loss'), jax.random.key(0),
      jnp.zeros((1, 3)), jnp.zeros((1, 1, 4)), jax.random.key(0))['params'][
          'trunk']
  for name in ('flow', 'diffusion'):
    with pytest.raises(UserError, match='train with head.cond_dropout > 0'):
      heads.make_head(dict(name=name, guidance_scale=3.0, cond_dropout=0.0),
                      latent_dim=2)
