"""Multi-process runs: their settings, and two processes x two CPU devices
that train like one process with four devices.

The processes run `python -m latentlm.train` on 127.0.0.1 with gloo
collectives; the reference runs here, on four of the eight test devices, on
the same global batches: each process's rows, process 0's first.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest

import helpers
from latentlm import tasks
from latentlm.core import distributed
from latentlm.core import sharding
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.training import checkpoint
from latentlm.training import runs
from latentlm.training import trainer as trainer_lib

N = 5  # steps before the interruption; the full run has 2N
PROCESSES, DEVICES_PER_PROCESS = 2, 2
TIMEOUT_S = 600


# ------------------------------------------------- settings, no processes

DISTRIBUTED_ENV = (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                   distributed.ENV_PROCESS_ID, distributed.ENV_DISTRIBUTED,
                   'TPU_WORKER_HOSTNAMES', 'MEGASCALE_NUM_SLICES')


@pytest.fixture
def clean_env(monkeypatch):
  for name in DISTRIBUTED_ENV:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_one_process_joins_nothing(clean_env):
  assert not distributed.initialize()
  clean_env.setenv('TPU_WORKER_HOSTNAMES', 'localhost')  # a one-host TPU VM
  assert not distributed.initialize()


@pytest.mark.parametrize('env, message', [
    (dict(LATENTLM_COORDINATOR='127.0.0.1:1234'),
     'needs the process count and id too'),
    (dict(LATENTLM_COORDINATOR='127.0.0.1:1234', LATENTLM_NUM_PROCESSES='2',
          LATENTLM_PROCESS_ID='2'), r'process id 2 is not in \[0, 2\)'),
    (dict(LATENTLM_COORDINATOR='127.0.0.1:1234', LATENTLM_NUM_PROCESSES='two',
          LATENTLM_PROCESS_ID='0'), "must be an integer, got 'two'"),
])
def test_a_bad_multi_process_setting_is_a_user_error(clean_env, env, message):
  for name, value in env.items():
    clean_env.setenv(name, value)
  with pytest.raises(UserError, match=message):
    distributed.initialize()


@pytest.mark.parametrize('hostnames, slices, expected', [
    ('10.0.0.1,10.0.0.2', '', True), ('localhost', '1', False),
    ('', '2', True), ('', '', False)])
def test_multihost_tpu_is_read_from_the_tpu_environment(clean_env, hostnames,
                                                         slices, expected):
  clean_env.setenv('TPU_WORKER_HOSTNAMES', hostnames)
  clean_env.setenv('MEGASCALE_NUM_SLICES', slices)
  assert distributed.on_multihost_tpu() == expected


def test_lockstep_on_one_process_stops_at_the_end_or_the_limit():
  pad = lambda item: -item
  assert list(distributed.lockstep(iter([1, 2, 3]), 2, pad)) == [1, 2]
  assert list(distributed.lockstep(iter([1, 2, 3]), 9, pad)) == [1, 2, 3]
  assert not list(distributed.lockstep(iter([]), 9, pad))


# ------------------------------------------------ processes on 127.0.0.1


def _start_processes(args, cache_dir):
  """Starts `python ARGS` as PROCESSES processes of one distributed run.

  They share a compilation cache in `cache_dir`: compiling is most of the
  time these small runs take.
  """
  port = portpicker.pick_unused_port()
  procs = []
  for i in range(PROCESSES):
    env = dict(
        os.environ, JAX_PLATFORMS='cpu',
        XLA_FLAGS=helpers.xla_flags(DEVICES_PER_PROCESS),
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
        **{distributed.ENV_COORDINATOR: f'127.0.0.1:{port}',
           distributed.ENV_NUM_PROCESSES: str(PROCESSES),
           distributed.ENV_PROCESS_ID: str(i)})
    procs.append(subprocess.Popen(
        [sys.executable, *args], cwd=helpers.REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  return procs


def _wait_for_processes(procs, timeout=TIMEOUT_S):
  """Their (stdout, stderr) once all exit 0; killed after `timeout`."""
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, (_, stderr)) in enumerate(zip(procs, outputs)):
    log = '\n'.join(line for line in stderr.splitlines()
                    if not line.startswith('[Gloo]'))
    assert p.returncode == 0, f'process {i}:\n{log[-6000:]}'
  return outputs


def _run_processes(args, cache_dir, timeout=TIMEOUT_S):
  """The stdout of each process of `python ARGS`, run to the end."""
  procs = _start_processes(args, cache_dir)
  return [stdout for stdout, _ in _wait_for_processes(procs, timeout)]


def _as_process(index, fn, *args, **kwargs):
  """fn(...) as process `index` of PROCESSES would call it."""
  with mock.patch.object(jax, 'process_index', return_value=index), \
       mock.patch.object(jax, 'process_count', return_value=PROCESSES):
    return fn(*args, **kwargs)


def _global_batches(*iterators):
  """The processes' batches, concatenated as the multi-process run sees them."""
  for batches in zip(*iterators):
    yield jax.tree.map(lambda *xs: np.concatenate(xs), *batches)


def _reference(config):
  """Losses of steps 1..2N and eval metrics at N and 2N, on 4 devices here."""
  task = runs.build_task(config)  # on the stages' trained weights, as train
  mesh = sharding.make_mesh(config.mesh,
                            jax.devices()[:PROCESSES * DEVICES_PER_PROCESS])
  trainer = trainer_lib.Trainer(config, task, mesh)
  local_batch = config.train.batch_size // PROCESSES
  make = lambda split, **kw: _global_batches(*[
      _as_process(i, trainer_lib.make_data, config, task, split, local_batch,
                  seed=config.seed, **kw) for i in range(PROCESSES)])
  train_data = make('train')
  state, losses, evals = trainer.init_state(), [], {}
  for step in range(1, 2 * N + 1):
    state, metrics = trainer.train_step(state, next(train_data))
    losses.append(float(metrics['loss']))
    if step % N == 0:
      evals[step] = trainer.evaluate(
          state, make(config.data.eval_split, shuffle=False, num_epochs=1),
          config.train.eval_batches)
  return np.asarray(losses), evals


def _train_twice(config_name, config, workdir, cache_dir):
  """N steps on 2 processes, then resumed on 2 processes to 2N steps."""
  for num_steps, eval_every in ((N, N), (2 * N, 2 * N)):
    config.train.update(num_steps=num_steps, eval_every=eval_every)
    _run_processes(['-m', 'latentlm.train', f'--config=configs/{config_name}',
                    *helpers.config_flags(config), f'--workdir={workdir}'],
                   cache_dir)
  return workdir_lib.read_metrics(workdir_lib.Workdir(workdir))


def _check_against_reference(records, reference_losses, reference_evals):
  losses = {r['step']: r['train/loss'] for r in records if 'train/loss' in r}
  # Process 0 logs MFU against the measured matmul (these CPUs have no table).
  assert all(r['train/mfu'] > 0 for r in records if 'train/loss' in r)
  assert sorted(losses) == list(range(1, 2 * N + 1))  # no gaps, no repeats
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             reference_losses, rtol=1e-5)
  evals = {r['step']: r for r in records if 'eval/loss' in r}
  # The first run's eval at step N survives only if the second resumed
  # from its checkpoint: from scratch, eval_every=2N would not log it.
  assert sorted(evals) == [N, 2 * N]
  for step, reference in reference_evals.items():
    np.testing.assert_allclose(evals[step]['eval/loss'], reference['loss'],
                               rtol=1e-5)
    assert evals[step]['eval/num_bytes'] == reference['num_bytes']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('jax_cache'))


def _small_run(config):
  config.train.update(log_every=1, checkpoint_every=N, eval_batches=3)
  config.optimizer.decay_steps = 2 * N  # the same schedule for every run
  return config


@pytest.mark.slow
def test_token_lm_on_two_processes_equals_one(tmp_path, data_dir, cache_dir):
  config = _small_run(helpers.tiny_token_lm(data_dir))
  reference_losses, reference_evals = _reference(config)  # builds the data
  assert reference_losses[-1] < reference_losses[0]
  records = _train_twice('token_lm.py:size=nano', config, str(tmp_path),
                         cache_dir)
  _check_against_reference(records, reference_losses, reference_evals)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step(tmp_path, data_dir,
                                                       cache_dir):
  """A preempted host is one SIGTERM on one process: every process must save
  the same step and exit 0, and none may wait forever in a collective."""
  config = _small_run(helpers.tiny_token_lm(data_dir))
  config.train.update(num_steps=100000, checkpoint_every=100000,
                      eval_every=100000)
  next(trainer_lib.make_data(config, tasks.get_task(config), 'train', 1,
                       seed=0))  # builds the data before two processes race
  procs = _start_processes(
      ['-m', 'latentlm.train', '--config=configs/token_lm.py:size=nano',
       *helpers.config_flags(config), f'--workdir={tmp_path}'], cache_dir)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  outputs = _wait_for_processes(procs, timeout=240)
  stopped = [re.findall(r'stopped at step (\d+)', stderr)
             for _, stderr in outputs]
  assert stopped[0] and stopped[0] == stopped[1], stopped
  step = int(stopped[0][0])
  assert step >= 3
  kept = [int(n) for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit()]
  assert max(kept) == step, kept


def _fake_autoencoder_workdir(path, data_dir):
  """A stage-1 workdir holding a freshly initialised nano autoencoder."""
  config = helpers.load_config('autoencoder')
  config.model.update(d_model=32, mlp_dim=64, latent_dim=8)
  config.data.data_dir = data_dir
  config.mesh.update(data=1, fsdp=1, tensor=1)
  task = tasks.get_task(config)
  trainer = trainer_lib.Trainer(config, task,
                          sharding.make_mesh(config.mesh, jax.devices()[:1]))
  state = trainer.init_state()
  state = state.replace(frozen=dict(latent_mean=jnp.full((8,), 0.5),
                                    latent_std=jnp.full((8,), 2.0)))
  workdir = workdir_lib.Workdir(path)
  workdir.prepare(config)
  ckpt = checkpoint.Checkpointer(workdir.checkpoints, 1, 1)
  ckpt.save(1, state, trainer_lib.make_data(config, task, 'train', 8, seed=0),
            force=True)
  ckpt.close()


@pytest.mark.slow
def test_concept_lm_on_two_processes_equals_one(tmp_path, data_dir,
                                                cache_dir):
  autoencoder = str(tmp_path / 'autoencoder')
  _fake_autoencoder_workdir(autoencoder, data_dir)
  config = helpers.load_config('concept_lm', 'size=nano,head=energy')
  config.autoencoder_workdir = autoencoder
  config.data.update(data_dir=data_dir, seq_len=8)
  config.model.max_len = 8
  config.head.update(hidden_dim=32, num_layers=1, num_samples=4, noise_dim=8)
  config.head_targets = 3
  config.train.update(batch_size=8, progress_bar=False)
  config.optimizer.warmup_steps = 2
  config = _small_run(config)
  reference_losses, reference_evals = _reference(config)
  records = _train_twice('concept_lm.py:size=nano,head=energy', config,
                         str(tmp_path / 'concept_lm'), cache_dir)
  _check_against_reference(records, reference_losses, reference_evals)


# ----------------------------------------- evaluation with unequal shares

EVAL_BATCHES = (3, 1)  # batches each process holds
LOCAL_BATCH = 2


def _eval_batches(data_dir):
  """Each process's batches, and the token LM config they are scored with."""
  config = helpers.tiny_token_lm(data_dir, batch_size=LOCAL_BATCH * PROCESSES)
  rng = np.random.default_rng(0)
  row_len = config.data.seq_len + 1
  batches = [[{'tokens': rng.integers(0, 256, (LOCAL_BATCH, row_len),
                                      dtype=np.int32)}
              for _ in range(count)] for count in EVAL_BATCHES]
  return config, batches


def _padded_shares(shares, pad_id):
  """Each process's batches, all-pad ones added up to the longest share:
  what lockstep evaluation feeds."""
  pad = lambda b: {'tokens': np.full_like(b['tokens'], pad_id)}
  return [share + [pad(share[0])] * (max(EVAL_BATCHES) - len(share))
          for share in shares]


def _eval_worker(data_dir):
  """One process of the unequal-shares run: prints the eval metrics."""
  distributed.initialize()
  config, batches = _eval_batches(data_dir)
  trainer = trainer_lib.Trainer(config, tasks.get_task(config),
                          sharding.make_mesh(config.mesh))
  metrics = trainer.evaluate(trainer.init_state(),
                             iter(batches[jax.process_index()]), 10)
  print(json.dumps(metrics))


@pytest.mark.slow
def test_eval_with_unequal_shares_pads_instead_of_hanging(data_dir,
                                                           cache_dir):
  config, batches = _eval_batches(data_dir)
  pad_id = tasks.get_task(config).tokenizer.pad_id
  padded = _padded_shares(batches, pad_id)
  trainer = trainer_lib.Trainer(
      config, tasks.get_task(config), sharding.make_mesh(
          config.mesh, jax.devices()[:PROCESSES * DEVICES_PER_PROCESS]))
  expected = trainer.evaluate(trainer.init_state(),
                              _global_batches(*padded), 10)
  assert expected['num_bytes'] == (
      sum(EVAL_BATCHES) * LOCAL_BATCH * config.data.seq_len)
  outputs = _run_processes(
      [__file__, 'eval_worker', data_dir], cache_dir, timeout=300)
  for stdout in outputs:  # every process has the global metrics
    got = helpers.last_json_line(stdout)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)



def _concept_run(devices=None):
  """An untrained nano concept LM on a fresh autoencoder, as a Run."""
  import test_concept_lm as clm  # pylint: disable=g-import-not-at-top
  config = clm._config()  # pylint: disable=protected-access
  config.train.batch_size = LOCAL_BATCH * PROCESSES
  return clm.untrained_run(config, devices)


def _concept_batches():
  """Each process's batches of S + 1 chunks (EVAL_BATCHES of them)."""
  import test_concept_lm as clm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  return [[{'tokens': clm._random_chunks(rng, (LOCAL_BATCH, clm.S + 1))}  # pylint: disable=protected-access
           for _ in range(count)] for count in EVAL_BATCHES]


def _concept_metrics_worker():
  """One process of the unequal-shares concept LM evaluation."""
  from latentlm.metrics import concept_lm as concept_metrics  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  run = _concept_run()
  print(json.dumps(concept_metrics.concept_lm_metrics(
      run, _concept_batches()[jax.process_index()])))


@pytest.mark.slow
def test_concept_lm_metrics_with_unequal_shares(cache_dir):
  """evaluate's concept LM metrics (and, through the same lockstep, the
  autoencoder's) pad a process that runs out instead of hanging, and equal
  one process reading every batch."""
  from latentlm.metrics import concept_lm as concept_metrics  # pylint: disable=g-import-not-at-top
  run = _concept_run(jax.devices()[:PROCESSES * DEVICES_PER_PROCESS])
  pad_id = run.task.pad_id
  padded = _padded_shares(_concept_batches(), pad_id)
  expected = concept_metrics.concept_lm_metrics(run, _global_batches(*padded))
  real = sum((b['tokens'][:, 1:] != pad_id).any(-1).sum()
             for share in padded for b in share)
  assert expected['num_concepts'] == real
  outputs = _run_processes([__file__, 'concept_metrics_worker'], cache_dir,
                           timeout=300)
  for stdout in outputs:
    got = helpers.last_json_line(stdout)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-4, err_msg=name)

if __name__ == '__main__':
  if sys.argv[1:2] == ['eval_worker']:
    _eval_worker(sys.argv[2])
  elif sys.argv[1:2] == ['concept_metrics_worker']:
    _concept_metrics_worker()
