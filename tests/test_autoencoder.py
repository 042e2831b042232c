"""The autoencoder task: pads, the loss, overfitting, latent statistics, CLI."""

import itertools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
import test_flops as flops_test
from latentlm import tasks
from latentlm.data import segment
from latentlm.metrics import reconstruction
from latentlm.tasks import autoencoder
from latentlm.tasks import flops
from latentlm.training import runs

K, PAD = 4, 256
# Starts with a newline so that its chunks repeat exactly in TEXT * n.
TEXT = (b'\nTo be, or not to be, that is the question:\n'
        b'Whether tis nobler in the mind to suffer\n'
        b'The slings and arrows of outrageous fortune.')


def _config(data_dir='', **train_fields):
  config = helpers.load_config('autoencoder', f'K={K},segment=words,Dz=16')
  config.data.data_dir = data_dir
  config.data.seq_len = 4
  config.model.update(d_model=32, mlp_dim=64, num_layers=1)
  config.train.update(batch_size=8, progress_bar=False, **train_fields)
  config.optimizer.warmup_steps = 2
  return config


def _batch():
  """{'tokens': [8, 4, K]}: word chunks of TEXT (pads inside chunks)."""
  chunks_MxK = segment.segment(np.frombuffer(TEXT, np.uint8), 'words', K, PAD)
  assert len(chunks_MxK) >= 32 and (chunks_MxK == PAD).any()
  return {'tokens': chunks_MxK[:32].reshape(8, 4, K)}


def _with_pad_rows(batch, num_rows):
  pads = np.full((num_rows, *batch['tokens'].shape[1:]), PAD, np.int32)
  return {'tokens': np.concatenate([batch['tokens'], pads])}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A tiny autoencoder trained by the train command on a text of a handful
  of distinct chunks (TEXT, repeated), on one device."""
  tmp_path = tmp_path_factory.mktemp('ae')
  text_file = tmp_path / 'corpus.txt'
  text_file.write_bytes(TEXT * 40)
  config = _config(str(tmp_path / 'tfds'), num_steps=150, eval_every=150,
                   checkpoint_every=150)
  config.ae.update(random_token_prob=0.0, random_truncate_prob=0.0)
  config.data.update(name='files', files=str(text_file))
  workdir = str(tmp_path / 'run')
  result = helpers.run_module(
      'train', f'--config=configs/autoencoder.py:K={K},segment=words',
      *helpers.config_flags(config), f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir, str(text_file), result.stdout


@pytest.fixture(scope='module')
def trained(workdir):
  return runs.load(workdir[0])


@pytest.fixture(scope='module')
def untrained(trained):
  """Initial params (a loss far from 0) and the jitted eval-mode loss."""
  task, state = trained.task, trained.trainer.init_state()
  eval_loss = jax.jit(lambda params, batch: task.loss(
      params, state.frozen, batch, jax.random.key(1), False))
  return task, state.params, eval_loss


def test_all_pad_chunks_count_in_no_loss_or_metric(untrained):
  _, params, eval_loss = untrained
  expected = eval_loss(params, _batch())
  padded = eval_loss(params, _with_pad_rows(_batch(), 3))
  chex.assert_trees_all_close(padded, expected, rtol=1e-5, atol=1e-6)


def _log_softmax(logits):
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_kl_with_free_bits_matches_numpy():
  rs = np.random.RandomState(0)
  # Dims 0-1 sit near the prior (KL below the free bits), dims 2-3 far off.
  mean_NxZ = rs.normal(0, [0.1, 0.1, 2.0, 3.0], (6, 4))
  std_NxZ = np.exp(rs.normal(0, [0.05, 0.05, 1.0, 1.0], (6, 4)))
  weights_N = np.array([1, 1, 0, 1, 0, 1], np.float32)  # 0: all-pad chunks
  kl_NxZ = np.log(1 / std_NxZ) + (std_NxZ**2 + mean_NxZ**2) / 2 - 0.5
  kl_Z = kl_NxZ[weights_N > 0].mean(0)
  assert (kl_Z < 0.5).any() and (kl_Z > 0.5).any()
  clamped, raw = autoencoder.kl_with_free_bits(
      jnp.asarray(mean_NxZ), jnp.log(jnp.asarray(std_NxZ)),
      jnp.asarray(weights_N), free_bits=0.5)
  np.testing.assert_allclose(clamped, np.maximum(kl_Z, 0.5).sum(), rtol=1e-5)
  np.testing.assert_allclose(raw, kl_Z.sum(), rtol=1e-5)


def test_eval_loss_and_metrics_match_numpy(untrained):
  task, params, eval_loss = untrained
  batch = _with_pad_rows(_batch(), 3)
  loss, metrics = eval_loss(params, batch)

  tokens_NxK = batch['tokens'].reshape(-1, K)
  mean_NxZ, logstd_NxZ = map(np.asarray,
                             jax.jit(task.encode)(params, tokens_NxK))
  logits_NxKxV = np.asarray(jax.jit(task.decode)(params, mean_NxZ),
                            np.float64)
  real_N = (tokens_NxK != PAD).any(-1)
  real_NxK = tokens_NxK != PAD
  log_p_NxK = np.take_along_axis(_log_softmax(logits_NxKxV),
                                 tokens_NxK[..., None], -1)[..., 0]
  ce = -log_p_NxK.sum(-1)[real_N].mean()
  std_NxZ = np.exp(logstd_NxZ)
  kl_Z = (np.log(1 / std_NxZ) + (std_NxZ**2 + mean_NxZ**2) / 2 - 0.5)[
      real_N].mean(0)
  ae = task.config.ae
  np.testing.assert_allclose(
      loss, ce + ae.kl_weight * np.maximum(kl_Z, ae.free_bits).sum(),
      rtol=1e-5)
  right_NxK = logits_NxKxV.argmax(-1) == tokens_NxK
  np.testing.assert_allclose(metrics['token_acc'], right_NxK[real_NxK].mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(metrics['chunk_exact'],
                             right_NxK.all(-1)[real_N].mean(), rtol=1e-6)
  assert metrics['num_bytes'] == real_NxK.sum()


def test_random_tokens_replace_only_real_tokens():
  tokens_NxK = np.tile(_batch()['tokens'].reshape(-1, K), (20, 1))
  out_NxK = np.asarray(jax.jit(autoencoder.substitute_tokens, static_argnums=2)(
      tokens_NxK, jax.random.key(0), 0.5, np.arange(256), PAD))
  real_NxK = tokens_NxK != PAD
  np.testing.assert_array_equal(out_NxK[~real_NxK], PAD)
  assert 0.4 < (out_NxK != tokens_NxK)[real_NxK].mean() < 0.6  # about half
  assert out_NxK[real_NxK].max() < 256


def test_truncation_keeps_a_nonempty_prefix():
  tokens_NxK = np.tile(_batch()['tokens'].reshape(-1, K), (20, 1))
  out_NxK = np.asarray(jax.jit(autoencoder.truncate_chunks, static_argnums=2)(
      tokens_NxK, jax.random.key(0), 0.5, PAD))
  kept_NxK = out_NxK != PAD
  assert kept_NxK[:, 0].all()
  assert (kept_NxK[:, :-1] >= kept_NxK[:, 1:]).all()  # pads only at the end
  np.testing.assert_array_equal(out_NxK[kept_NxK], tokens_NxK[kept_NxK])
  lengths_N = (tokens_NxK != PAD).sum(1)
  expected = 0.5 * np.mean((lengths_N - 1) / K)  # P(cut) * P(L < length)
  assert abs(np.mean(kept_NxK.sum(1) < lengths_N) - expected) < 0.05


def test_an_extension_is_the_text_after_the_chunk_up_to_k():
  # Word-like chunks of lengths 1..K, tokens first, pads after, and a row
  # of padding at the end.
  rng = np.random.default_rng(0)
  lengths_N = np.append(rng.integers(1, K + 1, 300), 0)
  tokens_NxK = np.full((301, K), PAD, np.int32)
  for n, length in enumerate(lengths_N):
    tokens_NxK[n, :length] = rng.integers(0, 256, length)
  text = [t for t in tokens_NxK.reshape(-1) if t != PAD]
  starts_N = np.cumsum(lengths_N) - lengths_N
  out_NxK = np.asarray(jax.jit(autoencoder.extend_chunks, static_argnums=2)(
      tokens_NxK, jax.random.key(0), 0.5, PAD))
  extended_lengths = []
  for n in range(301):
    new_length = int((out_NxK[n] != PAD).sum())
    if new_length == lengths_N[n]:  # not extended (or drawn its own length)
      np.testing.assert_array_equal(out_NxK[n], tokens_NxK[n])
      continue
    assert lengths_N[n] < new_length <= K
    after = text[starts_N[n]:starts_N[n] + new_length]
    np.testing.assert_array_equal(out_NxK[n, :new_length], after)
    np.testing.assert_array_equal(out_NxK[n, new_length:], PAD)
    extended_lengths.append(new_length)
  # Half the chunks are drawn; one of length L grows unless it draws L
  # among L..K. Every length up to K occurs.
  grows = np.mean((K - lengths_N[:-1]) / (K - lengths_N[:-1] + 1))
  assert abs(len(extended_lengths) / 300 - 0.5 * grows) < 0.07
  assert set(extended_lengths) == set(range(2, K + 1))
  np.testing.assert_array_equal(out_NxK[-1], PAD)  # padding stays padding


def test_overfits_a_handful_of_chunks(trained):
  """TEXT's first 32 chunks, as the trained run's Trainer evaluates them."""
  metrics = trained.trainer.evaluate(trained.state, iter([_batch()]), 1)
  assert metrics['token_acc'] == 1.0
  assert metrics['chunk_exact'] == 1.0


def test_reconstruction_metrics_agree_with_the_eval_step(trained):
  batches = [_with_pad_rows(_batch(), 3)] * 2
  metrics = reconstruction.reconstruction_metrics(trained, batches)
  eval_metrics = trained.trainer.evaluate(trained.state, iter(batches), 2)
  assert metrics['token_acc'] == eval_metrics['token_acc'] == 1.0
  assert metrics['num_bytes'] == 2 * (_batch()['tokens'] != PAD).sum()
  # Pad rows are no concepts: the mean is over the real chunks only.
  real_chunks_NxK = _batch()['tokens'].reshape(-1, K)
  lengths_N = (real_chunks_NxK != PAD).sum(1)
  assert metrics['bytes_per_concept'] == pytest.approx(
      lengths_N[lengths_N > 0].mean())
  for sigma in reconstruction.NOISE_STDS:
    assert 0 <= metrics[f'token_acc_noise_{sigma}'] <= 1
    assert metrics[f'chunk_exact_noise_{sigma}'] <= metrics[
        f'token_acc_noise_{sigma}']


def test_finalize_stores_latent_statistics(trained):
  batch = _with_pad_rows(_batch(), 3)  # the pad chunks must not count
  state = trained.task.finalize(trained.trainer, trained.state,
                                lambda: itertools.repeat(batch), num_batches=2)
  tokens_NxK = batch['tokens'].reshape(-1, K)
  real_N = (tokens_NxK != PAD).any(-1)
  mean_NxZ = np.asarray(trained.task.encode(jax.device_get(state.params),
                                            tokens_NxK[real_N])[0])
  np.testing.assert_allclose(state.frozen['latent_mean'], mean_NxZ.mean(0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state.frozen['latent_std'], mean_NxZ.std(0),
                             rtol=1e-3, atol=1e-5)


def test_round_trip_text(trained):
  prompt = '\nTo be, or not to be, that is the question:\n'  # whole chunks
  texts = reconstruction.autoencoder_texts(trained, prompt, 2,
                                           jax.random.key(0))
  assert texts[0] == prompt
  assert len(texts) == 2


@pytest.mark.parametrize('encoder', ['mlp', 'transformer'])
def test_train_flops_match_xla_cost_analysis(encoder):
  """d_model 256: matmuls dominate XLA's count of the lowered train step."""
  config = helpers.load_config('autoencoder', f'K={K},encoder={encoder}')
  config.model.update(d_model=256, mlp_dim=768, num_layers=1)  # 1: no scan
  config.train.batch_size = 2
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  xla_flops = flops_test.xla_train_flops(config, tasks.get_task(config),
                                         (2, config.data.seq_len, K))
  assert flops.train_flops_per_step(config) == pytest.approx(xla_flops,
                                                             rel=0.05)


def test_train_ends_with_a_summary_naming_stage_2(workdir):
  run_dir, text_file, stdout = workdir
  helpers.check_summary(stdout, run_dir, '% tokens', '% chunks',
                                'nats/chunk')
  # Stage 2 on the same text: the data fields this run set.
  stage2 = ('python -m latentlm.train --config=configs/concept_lm.py '
            f'--config.autoencoder_workdir={run_dir} ')
  assert stage2 in stdout
  assert f'--config.data.files={text_file}' in stdout


def test_train_stores_latent_statistics_and_samples(workdir, trained):
  frozen = jax.device_get(trained.state.frozen)
  assert np.all(frozen['latent_std'] > 0)
  assert not np.allclose(frozen['latent_std'], 1.0)  # finalize has run
  with open(os.path.join(workdir[0], 'samples.txt')) as f:
    assert 'sample 0' in f.read()


def test_evaluate_and_generate_commands(workdir):
  run_dir, text_file, _ = workdir
  result = helpers.run_module('evaluate', f'--workdir={run_dir}',
                              f'--text={text_file}')
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = helpers.last_json_line(result.stdout)
  assert metrics['token_acc'] > 0.99  # the file's last chunk is not trained
  assert metrics['num_bytes'] == len(TEXT * 40) + 1  # with the EOS
  for name in ('chunk_exact', 'token_acc_noise_0.1', 'token_acc_noise_0.3',
               'token_acc_noise_0.5'):
    assert 0.5 < metrics[name] <= 1.0, name

  prompt = 'The slings and arrows of outrageous fortune.'
  result = helpers.run_module('generate', f'--workdir={run_dir}',
                              f'--prompt={prompt}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == prompt
