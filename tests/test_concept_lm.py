"""Concept LM: sharded step, exact resume, KV-cached generation, bad workdirs."""

import functools
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from latentlm import tasks
from latentlm.core import sharding
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.sampling import concepts as concept_sampling
from latentlm.tasks import flops
from latentlm.training import checkpoint
from latentlm.training import loop as train_loop
from latentlm.training import runs
from latentlm.training import step as step_lib
from latentlm.training import trainer as trainer_lib

PAD, EOS, K, S = 256, 258, 4, 8
N = 3  # steps before the checkpoint; the uninterrupted run has 2N
TEXT = ('To be, or not to be, that is the question:\n'
        'Whether tis nobler in the mind to suffer\n') * 40


def _autoencoder_config(data_dir=''):
  c = helpers.load_config('autoencoder')
  c.model.update(d_model=32, mlp_dim=64, latent_dim=8, num_layers=1,
                 num_heads=2)
  c.data.update(name='files', files=f'{data_dir}/*.txt', data_dir=data_dir)
  return c


def _config(autoencoder_workdir='', data_dir='', input_kind='tokens'):
  c = helpers.load_config('concept_lm', f'size=nano,input={input_kind}')
  c.autoencoder_workdir = autoencoder_workdir
  c.data.update(name='files', files=f'{data_dir}/*.txt', data_dir=data_dir,
                seq_len=S)
  c.model.max_len = S
  c.head.update(hidden_dim=32, num_layers=1, num_samples=4, noise_dim=8)
  c.head_targets = 3
  c.train.update(batch_size=8, progress_bar=False)
  c.optimizer.warmup_steps = 2
  return c


def _random_chunks(rng, shape):
  """Byte chunks of 1..K tokens, then pads."""
  tokens = rng.integers(0, 256, (*shape, K), dtype=np.int32)
  lengths = rng.integers(1, K + 1, shape)
  return np.where(np.arange(K) < lengths[..., None], tokens, PAD)


def _task(input_kind='tokens'):
  """A task on a fresh autoencoder: no stage-1 workdir needed."""
  return tasks.get_task(_config(input_kind=input_kind),
                        autoencoder=_autoencoder_config())


def _random_like(abstract, seed=0):
  """Numpy draws shaped like `abstract`: no initialiser to compile.

  Matrices get unit-variance outputs; vectors (norm scales, biases, latent
  statistics) are positive, as a latent std must be.
  """
  rng = np.random.default_rng(seed)
  def draw(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    if len(x.shape) < 2:
      return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    return (rng.standard_normal(x.shape) / np.sqrt(x.shape[0])).astype(x.dtype)
  return jax.tree.map(draw, abstract)


@functools.cache
def _model(input_kind):
  """(task, params, frozen) of an untrained model, shared by tests."""
  task = _task(input_kind)
  params, frozen = _random_like(
      nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0))))
  return task, params, frozen


def untrained_run(config, devices=None):
  """A Run of `config`'s concept LM, initialised, on a fresh autoencoder
  (no stage-1 workdir), on `devices` (default: all)."""
  task = tasks.get_task(config, autoencoder=_autoencoder_config())
  trainer = trainer_lib.Trainer(config, task,
                          sharding.make_mesh(config.mesh, devices))
  return runs.Run(config=config, task=task, trainer=trainer,
                  state=trainer.init_state(), step=0)


# ------------------------------------------- train step, stage-1 workdir


def _fake_autoencoder_workdir(path, data_dir):
  """A stage-1 workdir holding random autoencoder params and statistics."""
  config = _autoencoder_config(data_dir)
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  task = tasks.get_task(config)
  trainer = trainer_lib.Trainer(config, task,
                          sharding.make_mesh(config.mesh, jax.devices()[:1]))
  state = jax.device_put(_random_like(trainer.abstract_state, seed=1),
                         trainer.state_shardings)
  write_workdir(path, config, task, state)
  return jax.device_get(state)


def write_workdir(path, config, task, state):
  """A workdir of `config` whose one checkpoint holds `state`."""
  workdir = workdir_lib.Workdir(path)
  workdir.prepare(config)
  ckpt = checkpoint.Checkpointer(workdir.checkpoints, 1, 1)
  ckpt.save(1, state, trainer_lib.make_data(config, task, 'train', 8, seed=0),
            force=True)
  ckpt.close()


def make_stage1(tmp_path_factory):
  """(workdir, data dir, state) of a fake stage 1 on a data dir of TEXT."""
  data_dir = str(tmp_path_factory.mktemp('data'))
  with open(f'{data_dir}/hamlet.txt', 'w') as f:
    f.write(TEXT)
  path = str(tmp_path_factory.mktemp('autoencoder'))
  return path, data_dir, _fake_autoencoder_workdir(path, data_dir)


@pytest.fixture(scope='module')
def stage1(tmp_path_factory):
  return make_stage1(tmp_path_factory)


@pytest.fixture(scope='module')
def eight_devices(stage1, tmp_path_factory):
  """2N steps on 8 devices from a stage-1 workdir, checkpointed at step N."""
  path, data_dir, ae_state = stage1
  config = _config(path, data_dir)
  config.mesh.update(dict(data=2, fsdp=4, tensor=1))
  task = runs.build_task(config)  # handed the stage-1 weights
  trainer = trainer_lib.Trainer(config, task, sharding.make_mesh(config.mesh))
  ckpt = checkpoint.Checkpointer(str(tmp_path_factory.mktemp('ckpt')), 1, N)
  data = trainer_lib.make_data(config, task, 'train', 8, seed=0)
  abstract = trainer.abstract_state  # random params: no init to compile
  initial = step_lib.TrainState(
      step=np.zeros((), np.int32), params=_random_like(abstract.params),
      opt_state=jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                             abstract.opt_state),
      frozen=jax.device_get(nn.meta.unbox(
          task.init_frozen(jax.random.key(0)))))
  state = jax.device_put(initial, trainer.state_shardings)
  state, losses = train_saving_at(trainer, state, data, ckpt, N)
  result = types.SimpleNamespace(
      task=task, trainer=trainer, ckpt=ckpt, ae_state=ae_state,
      initial=initial, final=jax.device_get(state), losses=losses,
      make_data=lambda: trainer_lib.make_data(config, task, 'train', 8, seed=0))
  yield result
  ckpt.close()


def test_frozen_params_are_the_stage1_workdir_and_stay_so(eight_devices):
  run = eight_devices
  expected = dict(autoencoder=run.ae_state.params, **run.ae_state.frozen)
  chex.assert_trees_all_equal(run.initial.frozen, expected)
  chex.assert_trees_all_equal(run.final.frozen, expected)
  assert run.losses[-1] < run.losses[0]  # the rest trains


def train_saving_at(trainer, state, data, ckpt, saved_step):
  """2 * saved_step steps from `state`, checkpointed after saved_step:
  (the last state, the losses)."""
  losses = []
  for step in range(1, 2 * saved_step + 1):
    state, metrics = trainer.train_step(state, next(data))
    losses.append(float(metrics['loss']))
    if step == saved_step:
      ckpt.save(step, state, data, force=True)
  ckpt.wait()
  return state, np.asarray(losses)


def check_one_device_equals(run):
  """The steps of `run` (an eight_devices fixture) again on one device."""
  config = run.task.config.copy_and_resolve_references()
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  trainer = trainer_lib.Trainer(config, run.task, sharding.make_mesh(
      config.mesh, jax.devices()[:1]))
  state = jax.device_put(run.initial, trainer.state_shardings)
  data = run.make_data()
  losses = []
  for _ in range(len(run.losses)):
    state, metrics = trainer.train_step(state, next(data))
    losses.append(float(metrics['loss']))
  np.testing.assert_allclose(losses, run.losses, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(state.params), run.final.params,
                              rtol=1e-4, atol=1e-6)


def check_resume_equals_uninterrupted(run, saved_step):
  """`run`'s steps after its checkpoint at `saved_step`, restored."""
  state, data = run.ckpt.restore(saved_step, run.trainer.abstract_state,
                                 run.make_data())
  losses = []
  for _ in range(len(run.losses) - saved_step):
    state, metrics = run.trainer.train_step(state, next(data))
    losses.append(float(metrics['loss']))
  np.testing.assert_array_equal(losses, run.losses[saved_step:])
  chex.assert_trees_all_equal(jax.device_get(state), run.final)


def test_step_on_8_devices_equals_1_device(eight_devices):
  check_one_device_equals(eight_devices)


def test_resume_equals_uninterrupted(eight_devices):
  check_resume_equals_uninterrupted(eight_devices, N)


def test_all_pad_targets_count_nowhere(eight_devices):
  run = eight_devices
  tokens = _random_chunks(np.random.default_rng(1), (8, S + 1))
  padded = tokens.copy()
  padded[1, 1:] = PAD  # row 1 predicts only pads
  other = padded.copy()
  other[1, 0] = tokens[0, 0]  # ... from another input chunk

  def metrics(batch):
    state = jax.device_put(run.initial, run.trainer.state_shardings)
    return jax.device_get(run.trainer.train_step(state, {'tokens': batch})[1])

  padded_metrics = metrics(padded)
  assert padded_metrics['loss'] == metrics(other)['loss']
  assert padded_metrics['loss'] != metrics(tokens)['loss']
  real = np.delete(tokens, 1, axis=0)[:, 1:]
  assert padded_metrics['num_bytes'] == (real != PAD).sum()
  assert padded_metrics['num_concepts'] == 7 * S


def test_bad_autoencoder_workdir_is_one_line_user_error(tmp_path, stage1):
  _, data_dir, _ = stage1
  with pytest.raises(UserError, match='autoencoder_workdir is required'):
    runs.build_task(_config('', data_dir))
  with pytest.raises(UserError, match='not a latentlm workdir'):
    runs.build_task(_config(str(tmp_path / 'missing'), data_dir))
  token_lm = workdir_lib.Workdir(str(tmp_path / 'token_lm'))
  token_lm.prepare(helpers.load_config('token_lm', 'size=nano'))
  with pytest.raises(UserError, match="'token_lm' run, not an autoencoder"):
    runs.build_task(_config(token_lm.path, data_dir))
  untrained = workdir_lib.Workdir(str(tmp_path / 'untrained'))
  untrained.prepare(_autoencoder_config(data_dir))
  with pytest.raises(UserError, match='no checkpoint yet') as error:
    runs.build_task(_config(untrained.path, data_dir))
  assert '\n' not in str(error.value)


def test_metrics_log_all_in_flops_from_stage_1_on_and_resume_them(
    stage1, tmp_path, capsys):
  """Every logged step's train/flops_all_in is stage 1's training plus this
  run's steps so far, the frozen encoder included; a resumed run goes on
  counting from its checkpoint. Each ends with its summary."""
  path, data_dir, _ = stage1
  config = _config(path, data_dir)
  config.train.update(num_steps=2, log_every=1, eval_every=2,
                      checkpoint_every=2, eval_batches=1)
  run_dir = str(tmp_path / 'run')
  train_loop.train(config, run_dir)
  config.train.num_steps = 3
  train_loop.train(config, run_dir)  # resumes at step 2
  helpers.check_summary(capsys.readouterr().out, run_dir,
                                'energy score/concept', 'l2/concept')

  records = [r for r in workdir_lib.read_metrics(workdir_lib.Workdir(run_dir))
             if 'train/loss' in r]
  assert [r['step'] for r in records] == [1, 2, 3]
  autoencoder = workdir_lib.Workdir(path).load_config()
  stage1_flops = autoencoder.train.num_steps * flops.train_flops_per_step(
      autoencoder)
  per_step = flops.train_flops_per_step(config)
  encoder = flops.encoder_flops_per_chunk(autoencoder.model)['forward']
  assert per_step > config.train.batch_size * (S + 1) * encoder > 0
  for record in records:
    assert record['train/flops_per_step'] == per_step
    assert record['train/flops_all_in'] == pytest.approx(
        stage1_flops + record['step'] * per_step, rel=1e-12)
    assert record['train/flops_all_in'] == pytest.approx(
        flops.all_in_flops(config, record['step']), rel=1e-12)


# -------------------------------------------------------------- generation


@pytest.mark.parametrize('input_kind', ['tokens', 'latent'])
def test_kv_cached_generation_equals_full_recompute(input_kind):
  task, params, frozen = _model(input_kind)
  sampler = concept_sampling.ConceptSampler(task, params, frozen)
  context = _random_chunks(np.random.default_rng(3), (2, 1))
  rng = jax.random.key(4)
  steps = list(sampler.stream(context, rng, S - 1, 1.0))

  @jax.jit
  def recompute(history_BxSxK, t, step_rng):
    """The whole prefix without a cache; causal, so the tail is unread."""
    h_BxSxD, _ = task.model.apply({'params': params},
                                  task.model_inputs(frozen, history_BxSxK))
    return task.model.apply({'params': params}, h_BxSxD[:, t], step_rng, 1.0,
                            method='sample')

  history = np.concatenate(
      [context, np.stack([chunks for _, chunks in steps], axis=1)], axis=1)
  for i, (z_BxZ, _) in enumerate(steps):
    expected = recompute(history[:, :S], i, jax.random.fold_in(rng, i))
    np.testing.assert_allclose(z_BxZ, expected, rtol=1e-4, atol=1e-5)
  assert not np.allclose(steps[0][0], steps[1][0])  # it moves on


def test_stream_past_a_full_window_equals_recomputing_what_it_holds():
  task, params, frozen = _model('tokens')
  sampler = concept_sampling.ConceptSampler(task, params, frozen)
  context = _random_chunks(np.random.default_rng(3), (2, 3))
  rng, steps = jax.random.key(4), 2 * S + 3  # two refills
  streamed = list(sampler.stream(context, rng, steps, 1.0))

  @jax.jit
  def sample(window_BxLxK, step_rng):
    h_BxLxD, _ = task.model.apply({'params': params},
                                  task.model_inputs(frozen, window_BxLxK))
    return task.model.apply({'params': params}, h_BxLxD[:, -1], step_rng, 1.0,
                            method='sample')

  # The chunks the model reads: the cached ones and the newest; when the
  # cache is full, the last half window of them.
  window_BxLxK = context
  for i, (z_BxZ, chunks_BxK) in enumerate(streamed):
    if window_BxLxK.shape[1] > S:
      window_BxLxK = window_BxLxK[:, -(S // 2):]
    np.testing.assert_allclose(
        z_BxZ, sample(window_BxLxK, jax.random.fold_in(rng, i)),
        rtol=1e-4, atol=1e-5)
    window_BxLxK = np.concatenate([window_BxLxK, chunks_BxK[:, None]], 1)


def test_stream_is_the_same_with_the_layer_scan_unrolled_or_not():
  task, params, frozen = _model('tokens')
  assert task.model_config.scan_layers  # the sampler unrolls it on CPU
  context = _random_chunks(np.random.default_rng(3), (2, 3))
  unrolled, scanned = (
      list(concept_sampling.ConceptSampler(
          task, params, frozen, unroll_layers=unroll).stream(
              context, jax.random.key(4), S + 2, 1.0))
      for unroll in (True, False))
  assert len(unrolled) == len(scanned) == S + 2
  for (z_BxZ, chunks_BxK), (expected_z, expected_chunks) in zip(unrolled,
                                                                scanned):
    np.testing.assert_allclose(z_BxZ, expected_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(chunks_BxK, expected_chunks)


def test_stream_dispatches_each_step_before_yielding_the_last():
  # So that the host's work of a step overlaps the device's; a caller that
  # stops early leaves one step unread, not more.
  task, params, frozen = _model('tokens')
  sampler = concept_sampling.ConceptSampler(task, params, frozen)
  dispatched = []
  step_fn = sampler.step_fn
  sampler.step_fn = lambda *args: dispatched.append(args[4]) or step_fn(*args)
  stream = sampler.stream(_random_chunks(np.random.default_rng(3), (1, 2)),
                          jax.random.key(4), 3, 1.0)
  for expected in ([0, 1], [0, 1, 2], [0, 1, 2], None):
    if expected is None:
      with pytest.raises(StopIteration):
        next(stream)
    else:
      next(stream)
      assert dispatched == expected


def test_next_chunks_of_shared_contexts_equal_a_stream_of_copies():
  task, params, frozen = _model('tokens')
  sampler = concept_sampling.ConceptSampler(task, params, frozen)
  context_BxLxK = _random_chunks(np.random.default_rng(5), (2, 3))
  rng = jax.random.key(6)
  z_BxDxZ, chunks_BxDxK = sampler.next_chunks(context_BxLxK, 4, rng, 1.0)
  z_RxZ = z_BxDxZ.reshape(8, -1)
  chunks_RxK = chunks_BxDxK.reshape(8, -1)
  expected_z, expected_chunks = next(sampler.stream(
      np.repeat(context_BxLxK, 4, axis=0), rng, 1, 1.0))
  chex.assert_shape(z_RxZ, expected_z.shape)
  np.testing.assert_allclose(z_RxZ, expected_z, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(chunks_RxK, expected_chunks)
  assert not np.allclose(z_RxZ[0], z_RxZ[1])  # rows draw apart


def test_prompt_chunks_start_a_document_and_keep_the_last_chunk_apart():
  task, _, _ = _model('tokens')
  context, partial = concept_sampling.prompt_chunks(task, 'To be, or')
  np.testing.assert_array_equal(context[0], [EOS, PAD, PAD, PAD])
  assert bytes(context[1:].reshape(-1).astype(np.uint8)) == b'To be, o'
  np.testing.assert_array_equal(partial, [ord('r'), PAD, PAD, PAD])
  context, partial = concept_sampling.prompt_chunks(task, '')
  assert context.shape == (1, K) and partial is None


def test_generated_texts_stop_at_max_bytes():
  task, params, frozen = _model('tokens')
  run = types.SimpleNamespace(
      task=task, state=types.SimpleNamespace(params=params, frozen=frozen))
  pieces = []
  texts = concept_sampling.concept_lm_texts(  # no prompt: nothing to prefill
      run, '', 2, jax.random.key(0), max_bytes=12, on_text=pieces.append)
  assert len(texts) == 2
  # A byte decodes to at most one character; the last chunk may overshoot.
  assert all(len(t) < 12 + K for t in texts)
  assert any(len(t) >= 12 for t in texts)  # random chunks rarely hold EOS
  assert texts[0].startswith(''.join(pieces))


def test_vocabulary_fraction_counts_words_not_punctuation():
  vocabulary = {'to', 'be', "o'er", 'or'}
  fraction = concept_sampling.vocabulary_fraction(
      ["To be, or O'er NOT", 'be!'], vocabulary)
  assert fraction == 5 / 6


# ------------------------------------- CALM's likelihood-free temperature
CANDIDATES_1x6xK = np.array([[[1] * K, [2] * K, [2] * K, [3] * K, [3] * K,
                              [3] * K]])  # chunk counts 1, 2, 3


@pytest.mark.parametrize('temperature', [1.0, 0.5, 2.0])
def test_frequency_choice_weighs_each_chunk_by_count_to_the_one_over_t(
    temperature):
  keys = jax.random.split(jax.random.key(0), 20_000)
  index_D = jax.vmap(lambda key: concept_sampling.choose_by_frequency(
      jnp.asarray(CANDIDATES_1x6xK), key, temperature)[0])(keys)
  chunk_D = CANDIDATES_1x6xK[0, np.asarray(index_D), 0]
  observed = np.bincount(chunk_D, minlength=4)[1:] / len(chunk_D)
  weights = np.array([1.0, 2.0, 3.0]) ** (1 / temperature)  # numpy reference
  np.testing.assert_allclose(observed, weights / weights.sum(), atol=0.015)


def test_frequency_choice_at_zero_temperature_keeps_the_most_frequent():
  for seed in range(20):
    index = concept_sampling.choose_by_frequency(
        jnp.asarray(CANDIDATES_1x6xK), jax.random.key(seed), 0.0)
    assert int(index[0]) in (3, 4, 5)


def test_generation_with_candidates_emits_decoded_candidates():
  task, params, frozen = _model('tokens')
  run = types.SimpleNamespace(
      task=task, state=types.SimpleNamespace(params=params, frozen=frozen))
  texts = concept_sampling.concept_lm_texts(
      run, '', 2, jax.random.key(0), temperature=0.5, max_bytes=12,
      num_candidates=4)
  assert len(texts) == 2 and any(len(t) >= 12 for t in texts)
  with pytest.raises(UserError, match='num_candidates=0'):
    concept_sampling.ConceptSampler(task, params, frozen, num_candidates=0)
