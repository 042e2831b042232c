"""Transformer and token LM: cache, masks, sharding, remat, RoPE, GQA."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from latentlm.core import config_lib
from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.models import transformer
from latentlm.models.token_lm import TokenLM
from latentlm.models.transformer import TransformerConfig


def tiny_config(**overrides):
  fields = dict(d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=8, mlp_dim=32, vocab_size=11, max_len=16)
  return TransformerConfig(**{**fields, **overrides})


def random_tokens(cfg, batch, length, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0,
                            cfg.vocab_size)


def init_params(module, *args, **kwargs):
  """Random params of the module's shapes, without compiling its initializers.

  Compiling the random initializers takes seconds on CPU; the tests need
  params, not the init distribution (test_init_ checks that).
  """
  boxed = jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), jnp.float32),
      nn.unbox(boxed)['params'])


# ----------------------------------------------------------------- config


def test_from_config_reads_the_token_lm_config_and_rejects_bad_keys():
  from configs import token_lm  # pylint: disable=g-import-not-at-top
  model = token_lm.get_config('size=tiny').model
  cfg = TransformerConfig.from_config(model, num_layers=2, causal=False)
  assert (cfg.d_model, cfg.num_layers, cfg.causal) == (128, 2, False)
  with pytest.raises(UserError, match="'num_layer'.*did you mean 'num_layers'"):
    TransformerConfig.from_config(model, num_layer=2)
  with pytest.raises(UserError, match="missing 'mlp_dim'"):
    TransformerConfig.from_config({k: v for k, v in model.items()
                                   if k != 'mlp_dim'})
  with pytest.raises(UserError, match='num_kv_heads=3'):
    tiny_config(num_kv_heads=3)
  with pytest.raises(UserError, match='remat_policy'):
    tiny_config(remat_policy='some')


def test_param_count_matches_the_architecture():
  cfg = tiny_config()
  D, H, N, K, F = 16, 4, 2, 8, 32
  V = 128  # vocab_size 11, padded so that the vocab axis shards evenly
  assert cfg.padded_vocab_size == V
  per_layer = D * H * K + 2 * D * N * K + H * K * D + 3 * D * F + 2 * D
  expected = cfg.num_layers * per_layer + 2 * V * D + D
  tokens = random_tokens(cfg, 1, 4)
  assert transformer.param_count(init_params(TokenLM(cfg), tokens)) == expected
  abstract = jax.eval_shape(TokenLM(cfg).init, jax.random.key(0), tokens)
  assert transformer.param_count(abstract) == expected
  tied = tiny_config(tie_embeddings=True)
  assert transformer.param_count(
      init_params(TokenLM(tied), tokens)) == expected - V * D


# ----------------------------------------------------------------- KV cache


@pytest.mark.parametrize('scan_layers', [True, False])
def test_cached_decoding_matches_the_full_forward_pass(scan_layers):
  cfg = tiny_config(scan_layers=scan_layers)
  model = TokenLM(cfg)
  tokens_BxL = random_tokens(cfg, 2, 8)
  params = init_params(model, tokens_BxL)
  apply = jax.jit(lambda t, c: model.apply({'params': params}, t, cache=c))

  full_BxLxV, no_cache = apply(tokens_BxL, None)
  assert no_cache is None
  cache = transformer.init_cache(cfg, batch_size=2, max_len=12)
  pieces = []
  # Prefill 3, then a block of 2 (causal inside it), then single tokens.
  for start, end in [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]:
    logits, cache = apply(tokens_BxL[:, start:end], cache)
    pieces.append(logits)
  assert int(cache.index) == 8
  chex.assert_trees_all_close(jnp.concatenate(pieces, axis=1), full_BxLxV,
                              atol=1e-5, rtol=1e-5)


def test_unrolled_layers_compute_the_scanned_stack_with_per_layer_params():
  cfg = tiny_config()
  model = TokenLM(cfg)
  tokens_BxL = random_tokens(cfg, 2, 6)
  params = init_params(model, tokens_BxL)
  unrolled_model, unrolled = transformer.unrolled_layers(model, params)
  assert not unrolled_model.cfg.scan_layers
  layers = params['transformer']['layers']
  for i in range(cfg.num_layers):
    chex.assert_trees_all_equal(unrolled['transformer'][f'layers_{i}'],
                                jax.tree.map(lambda x, i=i: x[i], layers))
  assert 'layers' not in unrolled['transformer']
  chex.assert_trees_all_equal(unrolled['embed'], params['embed'])

  def decode(module, module_params):
    cache = transformer.init_cache(cfg, batch_size=2, max_len=8)
    prefill, cache = module.apply({'params': module_params},
                                  tokens_BxL[:, :5], cache=cache)
    step, cache = module.apply({'params': module_params}, tokens_BxL[:, 5:],
                               cache=cache)
    return prefill, step, cache

  chex.assert_trees_all_close(jax.jit(decode, static_argnums=0)(
      unrolled_model, unrolled), jax.jit(decode, static_argnums=0)(
          model, params), atol=1e-6, rtol=1e-6)
  # A model without the scan is already unrolled.
  plain = TokenLM(tiny_config(scan_layers=False))
  assert transformer.unrolled_layers(plain, unrolled) == (plain, unrolled)


# ----------------------------------------------------------------- masking


def test_causal_logits_ignore_future_tokens():
  cfg = tiny_config()
  model = TokenLM(cfg)
  tokens_BxL = random_tokens(cfg, 2, 8)
  changed_BxL = tokens_BxL.at[:, 5].set((tokens_BxL[:, 5] + 1) % cfg.vocab_size)
  params = init_params(model, tokens_BxL)
  apply = jax.jit(lambda t: model.apply({'params': params}, t)[0])
  before, after = apply(tokens_BxL), apply(changed_BxL)
  chex.assert_trees_all_close(after[:, :5], before[:, :5], atol=1e-6)
  assert np.abs(after[:, 5:] - before[:, 5:]).min(axis=-1).max() > 1e-4


def test_bidirectional_attention_ignores_padding_only():
  cfg = tiny_config(causal=False)
  model = transformer.Transformer(cfg)
  x_BxLxD = jax.random.normal(jax.random.key(1), (2, 6, cfg.d_model))
  mask_BxL = jnp.arange(6)[None, :] < jnp.array([[4], [2]])
  params = init_params(model, x_BxLxD, mask_BxL)
  run = jax.jit(lambda x: model.apply({'params': params}, x, mask_BxL)[0])
  y_BxLxD = run(x_BxLxD)

  noise_BxLxD = 3.0 * jax.random.normal(jax.random.key(2), x_BxLxD.shape)
  padded = run(jnp.where(mask_BxL[..., None], x_BxLxD, noise_BxLxD))
  chex.assert_trees_all_close(padded[0, :4], y_BxLxD[0, :4], atol=1e-6)
  chex.assert_trees_all_close(padded[1, :2], y_BxLxD[1, :2], atol=1e-6)
  # A later valid position does reach the first one.
  moved = run(x_BxLxD.at[:, 1].add(1.0))
  assert np.abs(moved[:, 0] - y_BxLxD[:, 0]).max() > 1e-3


# ----------------------------------------------------------------- sharding


def test_sharded_forward_and_prefill_match_one_device():
  assert len(jax.devices()) == 8
  cfg = tiny_config()
  model = TokenLM(cfg)
  tokens_BxL = random_tokens(cfg, 4, 8)
  apply = jax.jit(lambda p, t, c: model.apply({'params': p}, t, cache=c))
  params = jax.device_put(init_params(model, tokens_BxL), jax.devices()[0])
  expected, _ = apply(params, tokens_BxL, None)
  assert expected.shape == (4, 8, cfg.vocab_size)

  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = sharding.logical_rules(config_lib.base_config().sharding.rules)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens_BxL)['params']
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  sharded_params = jax.device_put(params, shardings)
  query = sharded_params['transformer']['layers']['attn']['query']
  assert query.sharding.spec == P(None, 'fsdp', 'tensor', None)
  sharded_tokens = jax.device_put(tokens_BxL, sharding.batch_sharding(mesh, 2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    logits, _ = apply(sharded_params, sharded_tokens, None)
    prefill, _ = apply(sharded_params, sharded_tokens[:, :5],
                       transformer.init_cache(cfg, 4))
  assert logits.sharding.spec[0] == ('data', 'fsdp')
  chex.assert_trees_all_close(logits, expected, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(prefill, expected[:, :5], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- remat


def remat_loss_and_grad(scan_layers, policy, tokens_BxL):
  model = TokenLM(tiny_config(scan_layers=scan_layers, remat_policy=policy))

  def loss(params):
    logits, _ = model.apply({'params': params}, tokens_BxL[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         tokens_BxL[:, 1:, None], -1))

  return jax.jit(jax.value_and_grad(loss))


def test_remat_policies_give_the_same_loss_and_gradients():
  # With scan only: each policy costs a gradient compile of seconds.
  tokens_BxL = random_tokens(tiny_config(), 2, 8)
  params = init_params(TokenLM(tiny_config()), tokens_BxL)
  results = {}
  for policy in transformer.REMAT_POLICIES:
    traced = remat_loss_and_grad(True, policy, tokens_BxL).trace(params)
    assert ('remat' in str(traced.jaxpr)) == (policy != 'none')
    results[policy] = traced.lower().compile()(params)
  chex.assert_trees_all_close(results['full'], results['none'],
                              atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(results['dots'], results['none'],
                              atol=1e-6, rtol=1e-6)


def test_remat_wraps_the_unscanned_layers_too():
  tokens_BxL = random_tokens(tiny_config(), 2, 8)
  params = init_params(TokenLM(tiny_config(scan_layers=False)), tokens_BxL)
  for policy in transformer.REMAT_POLICIES:
    jaxpr = remat_loss_and_grad(False, policy, tokens_BxL).trace(params).jaxpr
    wrapped_layers = 0 if policy == 'none' else tiny_config().num_layers
    assert str(jaxpr).count('remat') == wrapped_layers


# ----------------------------------------------------------------- RoPE, GQA


def rope_np(x_LxHxK, positions_L, base=10000.0):
  """Rotation of each pair (i, i + K/2) as an explicit 2x2 matrix."""
  half = x_LxHxK.shape[-1] // 2
  out = np.empty_like(x_LxHxK, dtype=np.float64)
  for l, pos in enumerate(positions_L):
    for i in range(half):
      theta = pos * base ** (-i / half)
      rot = np.array([[np.cos(theta), -np.sin(theta)],
                      [np.sin(theta), np.cos(theta)]])
      pair = np.stack([x_LxHxK[l, :, i], x_LxHxK[l, :, i + half]])
      out[l, :, i], out[l, :, i + half] = rot @ pair
  return out


def test_rope_matches_rotation_matrices_and_scores_are_relative():
  rng = np.random.default_rng(0)
  q_LxHxK, k_LxHxK = rng.normal(size=(2, 5, 1, 8))
  positions_L = np.array([0, 1, 4, 9, 30])
  rotated = transformer.apply_rope(jnp.asarray(q_LxHxK[None]), positions_L,
                                   10000.0)[0]
  np.testing.assert_allclose(rotated, rope_np(q_LxHxK, positions_L), atol=1e-5)

  def score(m, n):
    q = transformer.apply_rope(jnp.asarray(q_LxHxK[None, :1]), m, 10000.0)
    k = transformer.apply_rope(jnp.asarray(k_LxHxK[None, :1]), n, 10000.0)
    return float(jnp.sum(q * k))

  for m, n in [(0, 0), (3, 1), (1, 3), (7, 2)]:
    relative = np.sum(q_LxHxK[0] * rope_np(k_LxHxK[:1], [n - m])[0])
    for shift in (0, 5, 100):
      np.testing.assert_allclose(score(m + shift, n + shift), relative,
                                 atol=1e-4)


@pytest.mark.parametrize('causal', [True, False])
def test_grouped_query_attention_matches_repeated_kv_heads(causal):
  cfg = tiny_config(num_heads=4, num_kv_heads=2, causal=causal)
  attention = transformer.Attention(cfg)
  x_BxLxD = jax.random.normal(jax.random.key(1), (2, 5, cfg.d_model))
  mask_BxL = jnp.arange(5)[None, :] < jnp.array([[5], [3]])
  mask_BxL = None if causal else mask_BxL
  index = jnp.zeros((), jnp.int32)
  params = init_params(attention, x_BxLxD, index, mask_BxL, None)
  y_BxLxD, _ = jax.jit(attention.apply)({'params': params}, x_BxLxD, index,
                                        mask_BxL, None)

  p = jax.tree.map(np.asarray, params)
  x = np.asarray(x_BxLxD, np.float64)
  for b in range(2):
    q = rope_np(np.einsum('LD,DHK->LHK', x[b], p['query']), range(5))
    k = rope_np(np.einsum('LD,DNK->LNK', x[b], p['key']), range(5))
    v = np.einsum('LD,DNK->LNK', x[b], p['value'])
    k, v = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    scores = np.einsum('LHK,SHK->HLS', q, k) / np.sqrt(cfg.head_dim)
    allowed = (np.tril(np.ones((5, 5), bool)) if causal
               else np.asarray(mask_BxL[b])[None, :].repeat(5, 0))
    scores = np.where(allowed, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum('HLS,SHK->LHK', probs, v)
    np.testing.assert_allclose(y_BxLxD[b], np.einsum('LHK,HKD->LD', out,
                                                      p['out']), atol=1e-5)


# ----------------------------------------------------------------- init, dtype


def test_init_gives_float32_params_and_bfloat16_compute_float32_logits():
  cfg = tiny_config()
  tokens_BxL = random_tokens(cfg, 2, 6)
  # An rbg key: threefry's bits take seconds to compile on CPU.
  key = jax.random.key(0, impl='rbg')
  params = nn.unbox(jax.jit(TokenLM(cfg).init)(key, tokens_BxL))['params']
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))

  def logits(dtype):
    model = TokenLM(tiny_config(dtype=dtype))
    return jax.jit(model.apply)({'params': params}, tokens_BxL)[0]

  logits32, logits16 = logits('float32'), logits('bfloat16')
  assert 0.3 < float(jnp.std(logits32)) < 3.0  # fan-in init: unit scale
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.1)
  assert np.abs(logits16 - logits32).max() > 0  # bf16 was really used
