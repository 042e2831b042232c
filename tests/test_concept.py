"""Concept autoencoder: sharded shapes, KL, token masking, overfitting."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from latentlm.core import config_lib
from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.data import segment
from latentlm.models import concept

PAD, K = 256, 4


def _model(**overrides):
  c = concept.default_autoencoder_model_config()
  c.update(d_model=32, mlp_dim=64, latent_dim=16, num_layers=1, num_heads=2,
           chunk_len=K, **overrides)
  return concept.Autoencoder(concept.AutoencoderConfig.from_config(c))


def _chunks(num, seed=0):
  """Random byte chunks of random lengths 1..K, padded."""
  rs = np.random.RandomState(seed)
  lengths_B = rs.randint(1, K + 1, num)
  tokens_BxK = rs.randint(0, 256, (num, K))
  tokens_BxK[np.arange(K) >= lengths_B[:, None]] = PAD
  return jnp.asarray(tokens_BxK, jnp.int32)


def test_kl_per_dim_matches_numerical_integral():
  mean, logstd = np.array([0.0, 1.5, -0.7]), np.array([0.0, -1.0, 0.4])
  kl = concept.kl_per_dim(jnp.asarray(mean), jnp.asarray(logstd))
  chex.assert_shape(kl, (3,))
  for m, s, got in zip(mean, np.exp(logstd), np.asarray(kl)):
    x = np.linspace(m - 12 * s, m + 12 * s, 200_001)
    log_q = -0.5 * ((x - m) / s)**2 - np.log(s * np.sqrt(2 * np.pi))
    log_p = -0.5 * x**2 - np.log(np.sqrt(2 * np.pi))
    expected = np.trapezoid(np.exp(log_q) * (log_q - log_p), x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@functools.cache
def _sharded_init(encoder):
  """Params initialised under jit straight into their 8-device shardings.

  Shared by the tests below: initialisation is most of their compile time.
  """
  model = _model(encoder=encoder)
  mesh = sharding.make_mesh(dict(data=8, fsdp=1, tensor=1))
  rules = sharding.logical_rules(config_lib.base_config().sharding.rules)
  tokens_BxK = _chunks(2)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens_BxK)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = jax.jit(model.init,
                   out_shardings=sharding.logical_shardings(boxed, mesh, rules))
    variables = init(jax.random.key(0), tokens_BxK)
  return mesh, rules, variables


def _local_params(encoder):
  """The shared params, unboxed, as host arrays."""
  return jax.device_get(nn.unbox(_sharded_init(encoder)[2]))['params']


@pytest.mark.parametrize('encoder', concept.ENCODERS)
def test_sharded_shapes_match_single_device(encoder):
  model = _model(encoder=encoder)
  mesh, rules, variables = _sharded_init(encoder)
  tokens_BxK = _chunks(16)
  rng = jax.random.key(1)
  apply = jax.jit(model.apply, static_argnames='train')
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sharded_tokens = jax.device_put(tokens_BxK,
                                    sharding.batch_sharding(mesh, 2))
    outputs = apply(variables, sharded_tokens, rng, train=True)
  logits_BxKxV, mean_BxZ, logstd_BxZ = outputs
  chex.assert_shape(logits_BxKxV, (16, K, 259))
  chex.assert_shape([mean_BxZ, logstd_BxZ], (16, 16))
  chex.assert_type(outputs, jnp.float32)
  assert logits_BxKxV.sharding.is_equivalent_to(
      sharding.batch_sharding(mesh, 3), 3)

  # The same numbers from host params on one device.
  expected = apply({'params': _local_params(encoder)}, tokens_BxK, rng,
                   train=True)
  chex.assert_trees_all_close(jax.device_get(outputs), expected,
                              rtol=1e-4, atol=1e-4)


def test_token_masking_hides_tokens_but_not_length():
  model = _model(token_mask_prob=0.9999)
  variables = {'params': _local_params('mlp')}

  @jax.jit
  def encode_both_ways(tokens_BxK):
    encode = functools.partial(model.apply, variables, tokens_BxK,
                               rng=jax.random.key(2), method='encode')
    return encode(train=True)[0], encode(train=False)[0]

  # Rows 0, 1: same length, other tokens; row 2: another length.
  masked_BxZ, clear_BxZ = encode_both_ways(
      jnp.array([[1, 2, PAD, PAD], [7, 9, PAD, PAD], [1, 2, 3, PAD]]))
  np.testing.assert_allclose(masked_BxZ[0], masked_BxZ[1], atol=1e-6)
  assert not np.allclose(masked_BxZ[2], masked_BxZ[0])
  assert not np.allclose(clear_BxZ[0], clear_BxZ[1])


@pytest.fixture(scope='module')
def overfit():
  """An mlp autoencoder trained (z sampled, tokens masked) on 16 chunks."""
  model, tokens_BxK = _model(encoder='mlp'), _chunks(16)
  params = _local_params('mlp')
  optimizer = optax.adam(3e-3)

  def loss_fn(params, rng):
    logits_BxKxV, _, _ = model.apply({'params': params}, tokens_BxK, rng, True)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_BxKxV, tokens_BxK).mean()

  def step(carry, rng):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  rngs = jax.random.split(jax.random.key(1), 200)
  (params, _), _ = jax.jit(lambda p: jax.lax.scan(
      step, (p, optimizer.init(p)), rngs))(params)

  @jax.jit
  def reconstruct(params):
    variables = {'params': params}
    mean_BxZ, _ = model.apply(variables, tokens_BxK, method='encode')
    return model.apply(variables, mean_BxZ, method='decode').argmax(-1)

  return np.asarray(tokens_BxK), np.asarray(reconstruct(params))


def test_overfits_to_full_token_accuracy(overfit):
  tokens_BxK, decoded_BxK = overfit
  np.testing.assert_array_equal(decoded_BxK, tokens_BxK)


def test_padded_chunks_decode_to_their_exact_length(overfit):
  tokens_BxK, decoded_BxK = overfit
  lengths_B = (tokens_BxK != PAD).sum(1)
  assert len(set(lengths_B.tolist())) > 1  # The batch mixes lengths.
  for tokens_K, decoded_K in zip(tokens_BxK, decoded_BxK):
    np.testing.assert_array_equal(segment.join(decoded_K[None], PAD),
                                  segment.join(tokens_K[None], PAD))


def test_config_errors_name_the_problem():
  c = dict(concept.default_autoencoder_model_config())
  with pytest.raises(UserError, match="did you mean 'transformer'"):
    concept.AutoencoderConfig.from_config(dict(c, encoder='transfomer'))
  with pytest.raises(UserError, match="did you mean 'latent_dim'"):
    concept.AutoencoderConfig.from_config(dict(c, latent_dims=8))
