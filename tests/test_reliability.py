"""Failures survived: SIGTERM, corrupt checkpoints, NaNs, concurrent runs."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

import helpers
from latentlm.core import reliability
from latentlm.core.errors import UserError
from latentlm.training import runs


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _flags(data_dir, num_steps, **overrides):
  config = helpers.tiny_token_lm(data_dir, num_steps=num_steps, log_every=1,
                                 eval_every=1000, checkpoint_every=5)
  config.optimizer.decay_steps = 1000
  for key, value in overrides.items():
    config.update_from_flattened_dict({key: value})
  return ['--config=configs/token_lm.py:size=nano',
          *helpers.config_flags(config)]


def _train(workdir, data_dir, num_steps, **overrides):
  return helpers.run_module('train', *_flags(data_dir, num_steps, **overrides),
                            f'--workdir={workdir}')


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _losses(workdir):
  return {r['step']: r['train/loss'] for r in _records(workdir)
          if 'train/loss' in r}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 12-step run."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  result = _train(workdir, data_dir, 12)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def test_same_seed_gives_bit_identical_metrics(reference, data_dir, tmp_path):
  result = _train(tmp_path / 'again', data_dir, 12)
  assert result.returncode == 0, result.stderr[-2000:]
  timed = lambda k: 'per_s' in k or k.endswith('/mfu')  # clock readings
  strip = lambda rs: [{k: v for k, v in r.items() if not timed(k)}
                      for r in rs]
  assert strip(_records(tmp_path / 'again')) == strip(_records(reference))


def test_corrupt_latest_checkpoint_falls_back(reference, data_dir, tmp_path):
  workdir = tmp_path / 'corrupt'
  assert _train(workdir, data_dir, 10).returncode == 0
  # Truncate every file of the newest checkpoint (step 10) to half its size.
  for root, _, files in os.walk(workdir / 'checkpoints' / '10'):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  result = _train(workdir, data_dir, 12)
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [l for l in result.stderr.splitlines() if 'checkpoint 10' in l]
  assert len(warnings) == 1 and 'unreadable' in warnings[0], result.stderr
  assert (workdir / 'checkpoints' / 'corrupt-10').exists()
  resumed, full = _losses(workdir), _losses(reference)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(6, 13)],
                             [full[s] for s in range(6, 13)], rtol=1e-6)


def test_sigterm_saves_and_resumes_exactly(reference, data_dir, tmp_path):
  workdir = tmp_path / 'preempted'
  env = helpers.subprocess_env()
  process = subprocess.Popen(
      [sys.executable, '-m', 'latentlm.train', *_flags(data_dir, 100000),
       f'--workdir={workdir}'], cwd=helpers.REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-2000:]
  stopped_at = max(_losses(workdir))
  assert stopped_at >= 3 and f'stopped at step {stopped_at}' in stderr
  # The checkpoint is at the step it stopped; the restart continues from it.
  assert (workdir / 'checkpoints' / str(stopped_at)).exists()
  if stopped_at >= 12:
    pytest.skip('the machine ran 12 steps before the signal arrived')
  result = _train(workdir, data_dir, 12, **{'train.num_steps': 12})
  assert result.returncode == 0, result.stderr[-2000:]
  resumed, full = _losses(workdir), _losses(reference)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)],
                             [full[s] for s in range(1, 13)], rtol=1e-6)


def test_nonfinite_loss_stops_with_step_and_checkpoint(data_dir, tmp_path):
  result = _train(tmp_path / 'nan', data_dir, 12,
                  **{'optimizer.learning_rate': 1e30,
                     'optimizer.warmup_steps': 0})
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'non-finite loss or gradient at or after step' in (
      lines[0]), result.stderr
  checkpoints = os.listdir(tmp_path / 'nan' / 'checkpoints')
  assert 'last good checkpoint is step' in lines[0] or not checkpoints


def test_nonfinite_updates_can_be_skipped(data_dir, tmp_path):
  result = _train(tmp_path / 'skip', data_dir, 8,
                  **{'optimizer.learning_rate': 1e30,
                     'optimizer.warmup_steps': 0,
                     'train.skip_nonfinite_updates': True})
  assert result.returncode == 0, result.stderr[-2000:]
  skipped = [r['train/skipped_updates'] for r in _records(tmp_path / 'skip')
             if 'train/skipped_updates' in r]
  assert sum(skipped) >= 1


def test_second_trainer_on_a_workdir_is_refused(data_dir, tmp_path):
  workdir = tmp_path / 'locked'
  lock = reliability.WorkdirLock(str(workdir))
  with pytest.raises(UserError, match='is being trained by process'):
    reliability.WorkdirLock(str(workdir))
  result = _train(workdir, data_dir, 2)
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) == 1
  assert 'is being trained by process' in lines[0]
  assert not (workdir / 'config.json').exists()
  lock.release()


def test_stale_lock_of_a_dead_process_does_not_block(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; '
       'from latentlm.core import reliability; '
       f'lock = reliability.WorkdirLock({str(tmp_path)!r}); '
       'print("locked", flush=True); '
       'time.sleep(600)'], stdout=subprocess.PIPE, text=True, cwd=helpers.REPO)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(UserError):
    reliability.WorkdirLock(str(tmp_path))
  holder.kill()
  holder.wait()
  reliability.WorkdirLock(str(tmp_path)).release()  # no error


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(
    reference, data_dir, tmp_path):
  """Kills during steps, async checkpoint writes and evals; nothing is lost."""
  workdir = tmp_path / 'killed'
  flags = _flags(data_dir, 12, **{'train.eval_every': 3,
                                  'train.checkpoint_every': 2})
  env = helpers.subprocess_env()
  rng = np.random.default_rng(0)
  metrics = workdir / 'metrics.jsonl'
  for _ in range(3):
    process = subprocess.Popen(
        [sys.executable, '-m', 'latentlm.train', *flags,
         f'--workdir={workdir}'], cwd=helpers.REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines_before = (len(metrics.read_text().splitlines())
                    if metrics.exists() else 0)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
      if metrics.exists() and len(metrics.read_text().splitlines()) > (
          lines_before):
        break
      time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))  # land anywhere: a step, a save, an eval
    process.kill()
    process.wait()
  result = helpers.run_module('train', *flags, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-2000:]
  records = _records(workdir)
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  assert train_steps == list(range(1, 13))  # none missing, none twice
  eval_steps = [r['step'] for r in records if 'eval/loss' in r]
  assert eval_steps == sorted(set(eval_steps))
  resumed, full = _losses(workdir), _losses(reference)
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)],
                             [full[s] for s in range(1, 13)], rtol=1e-6)
  chex.assert_trees_all_equal(runs.load(str(workdir)).state.params,
                              runs.load(reference).state.params)
