"""The train loop through the command line: resume, restore, evaluate, errors."""

import json
import os

import chex
import jax
import numpy as np
import pytest

import helpers
from latentlm.training import runs

N = 6  # steps before the interruption; the full run has 2N
EIGHT_DEVICES = {'XLA_FLAGS': helpers.xla_flags(8)}


def _train_flags(tmp_data_dir, num_steps, **extra):
  config = helpers.tiny_token_lm(tmp_data_dir, num_steps=num_steps,
                                 log_every=1, eval_every=N, checkpoint_every=N)
  config.optimizer.decay_steps = 2 * N  # the same schedule for every run
  for key, value in extra.items():
    config.update_from_flattened_dict({key: value})
  return ['--config=configs/token_lm.py:size=nano',
          *helpers.config_flags(config)]


def _train(workdir, data_dir, num_steps, env=None, **extra):
  result = helpers.run_module('train', *_train_flags(data_dir, num_steps,
                                                     **extra),
                              f'--workdir={workdir}', env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, data_dir):
  """2N uninterrupted steps on 8 devices (data x fsdp)."""
  workdir = str(tmp_path_factory.mktemp('full'))
  _train(workdir, data_dir, 2 * N, env=EIGHT_DEVICES,
         **{'mesh.data': 4, 'mesh.fsdp': 2})
  return workdir


def test_resume_equals_uninterrupted(tmp_path, data_dir, full_run):
  workdir = str(tmp_path / 'resumed')
  _train(workdir, data_dir, N, env=EIGHT_DEVICES,
         **{'mesh.data': 4, 'mesh.fsdp': 2})
  assert max(_losses(workdir)) == N
  finished = _train(workdir, data_dir, 2 * N, env=EIGHT_DEVICES,
                    **{'mesh.data': 4, 'mesh.fsdp': 2})
  helpers.check_summary(finished.stdout, workdir, 'bits/byte', '% tokens')
  resumed, full = _losses(workdir), _losses(full_run)
  assert sorted(resumed) == list(range(1, 2 * N + 1))  # no duplicates, no gaps
  np.testing.assert_allclose([resumed[s] for s in range(1, 2 * N + 1)],
                             [full[s] for s in range(1, 2 * N + 1)],
                             rtol=1e-6)
  assert full[2 * N] < full[1]


def test_checkpoint_from_8_devices_restores_on_1(full_run):
  on_one = runs.load(full_run)  # one device
  on_eight = runs.load(full_run, devices=jax.devices())
  assert on_one.step == 2 * N
  leaf = jax.tree.leaves(on_one.state.params)[0]
  assert len(leaf.sharding.device_set) == 1
  chex.assert_trees_all_equal(jax.device_get(on_one.state.params),
                              jax.device_get(on_eight.state.params))


def test_readers_leave_a_live_trainers_partial_checkpoint_alone(full_run):
  # What an async save in progress looks like to a reader beside the trainer.
  partial = os.path.join(full_run, 'checkpoints',
                         f'{2 * N + 1}.orbax-checkpoint-tmp-0')
  os.makedirs(partial)
  try:
    assert runs.load(full_run).step == 2 * N
    assert os.path.isdir(partial)
  finally:
    os.rmdir(partial)


def test_evaluate_reports_bits_per_byte(full_run, tmp_path):
  result = helpers.run_module('evaluate', f'--workdir={full_run}')
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = helpers.last_json_line(result.stdout)
  assert 0 < metrics['bits_per_byte'] < 9
  assert metrics['num_bytes'] > 1000
  bad_utf8 = tmp_path / 'latin1.txt'
  bad_utf8.write_bytes('caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n'.encode('latin-1') * 20)
  result = helpers.run_module('evaluate', f'--workdir={full_run}',
                              f'--text={bad_utf8}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'not valid UTF-8' in result.stderr
  metrics = helpers.last_json_line(result.stdout)
  assert metrics['num_bytes'] == len(bad_utf8.read_bytes())


def test_generate_streams_text(full_run):
  result = helpers.run_module('generate', f'--workdir={full_run}',
                              '--prompt=ROMEO', '--max_bytes=40', '--seed=3')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith('ROMEO')
  again = helpers.run_module('generate', f'--workdir={full_run}',
                             '--prompt=ROMEO', '--max_bytes=40', '--seed=3')
  assert again.stdout == result.stdout  # seeded


def _snapshot(path):
  """Every file under `path` with its size and mtime."""
  return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)),
                               os.path.getmtime(os.path.join(d, f)))
          for d, _, files in os.walk(path) for f in files}


@pytest.mark.parametrize('args, message, existing', [
    (['--config.model.d_modle=64'],
     "unknown config key 'model.d_modle'; did you mean 'model.d_model'?", True),
    (['--config.model.d_model=64'],
     'was made by a different config (model.d_model', True),
    (['--config.data.name=files', '--config.data.files=EMPTY'],
     'matches only empty files', False),
])
def test_bad_train_input_fails_in_one_line(full_run, data_dir, tmp_path, args,
                                           message, existing):
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  args = [a.replace('EMPTY', str(empty)) for a in args]
  workdir = full_run if existing else str(tmp_path / 'new')
  before = _snapshot(full_run)
  result = helpers.run_module(
      'train', *_train_flags(data_dir, 2 * N, **{'mesh.data': 4,
                                                  'mesh.fsdp': 2}),
      *args, f'--workdir={workdir}', env=EIGHT_DEVICES)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr
  assert _snapshot(full_run) == before
  assert existing or not os.path.exists(workdir)


def test_evaluate_missing_text_file_fails_in_one_line(full_run, tmp_path):
  result = helpers.run_module('evaluate', f'--workdir={full_run}',
                              f'--text={tmp_path}/nope.txt')
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'does not exist' in lines[0], result.stderr
