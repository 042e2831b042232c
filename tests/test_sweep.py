"""launch/sweep.py: the grid's product, printed commands, sequential runs."""

import json
import os
import subprocess

import pytest

from latentlm.core import config_lib

import helpers

sweep = config_lib.load_module(
    os.path.join(helpers.REPO, 'launch', 'sweep.py'))

CONFIG = 'configs/token_lm.py:size=nano'
GRID = ['--grid=args.size=nano,tiny', '--grid=train.num_steps=5,10']


def test_the_grid_is_the_product_of_its_axes():
  axes = [sweep.parse_axis('args.size=nano,tiny'),
          sweep.parse_axis('optimizer.learning_rate=1e-3')]
  runs = sweep.runs(CONFIG, axes)
  assert runs == [  # a one-value axis does not name the runs
      ('size-nano',
       '--config=configs/token_lm.py:size=nano',
       ['--config.optimizer.learning_rate=1e-3']),
      ('size-tiny',
       '--config=configs/token_lm.py:size=tiny',
       ['--config.optimizer.learning_rate=1e-3'])]


def test_print_gives_one_command_line_per_run(capsys, tmp_path):
  sweep.main(['--config', CONFIG, *GRID, f'--root={tmp_path}',
              '--evaluate=brier', '--eval_flag=--block_bytes=64', '--print'])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  assert lines[3] == (
      'python -m latentlm.train --config=configs/token_lm.py:size=tiny '
      f'--config.train.num_steps=10 --workdir={tmp_path}/size-tiny_train.'
      'num_steps-10 && python -m latentlm.evaluate --workdir='
      f'{tmp_path}/size-tiny_train.num_steps-10 --metric=default '
      '--metric=brier --block_bytes=64')
  assert not os.listdir(tmp_path)  # nothing ran


def test_runs_go_one_after_another_and_finished_ones_are_skipped(
    monkeypatch, tmp_path, capsys):
  ran = []
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  def fake_run(command, cwd, env):
    ran.append(command[2:])
    assert env['JAX_COMPILATION_CACHE_DIR'] == f'{tmp_path}/.jax_cache'
    return subprocess.CompletedProcess(command, 0)
  monkeypatch.setattr(sweep.subprocess, 'run', fake_run)
  done = tmp_path / 'size-nano_train.num_steps-5'
  done.mkdir()
  (done / 'evaluations.jsonl').write_text(
      json.dumps({'metric': 'default'}) + '\n' +
      json.dumps({'metric': 'brier'}) + '\n')
  half_done = tmp_path / 'size-tiny_train.num_steps-5'
  half_done.mkdir()
  (half_done / 'evaluations.jsonl').write_text(json.dumps({'metric': 'brier'}))
  sweep.main(['--config', CONFIG, *GRID, f'--root={tmp_path}',
              '--evaluate=brier'])
  workdirs = [c[-1] for c in ran if c[0] == 'latentlm.train']
  assert workdirs == [f'--workdir={tmp_path}/{n}' for n in (
      'size-nano_train.num_steps-10', 'size-tiny_train.num_steps-5',
      'size-tiny_train.num_steps-10')]
  # One evaluate per run, for the metrics its workdir has not recorded.
  assert [c[0] for c in ran] == ['latentlm.train', 'latentlm.evaluate'] * 3
  assert [[a for a in c if a.startswith('--metric')] for c in ran[1::2]] == [
      ['--metric=default', '--metric=brier'], ['--metric=default'],
      ['--metric=default', '--metric=brier']]
  assert 'evaluated already, skipped' in capsys.readouterr().out


def test_a_failed_run_is_reported_in_one_line(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(sweep.subprocess, 'run', lambda command, cwd, env:
                      subprocess.CompletedProcess(command, 1))
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(['--config', CONFIG, '--grid=train.num_steps=5',
                f'--root={tmp_path}'])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == 'error: 1 run(s) failed: base\n'


@pytest.mark.parametrize('grid', ['size', 'size=', '=nano'])
def test_a_bad_axis_is_one_line(grid, tmp_path, capsys):
  with pytest.raises(SystemExit):
    sweep.main(['--config', CONFIG, f'--grid={grid}', f'--root={tmp_path}'])
  assert capsys.readouterr().err.startswith('error: --grid=')


def test_an_eval_text_is_evaluated_once_beside_the_split(
    monkeypatch, tmp_path, capsys):
  ran = []
  monkeypatch.setattr(sweep.subprocess, 'run', lambda command, cwd, env: (
      ran.append(command[2:]) or subprocess.CompletedProcess(command, 0)))
  text = tmp_path / 'prose.txt'
  text.write_text('Some modern prose.\n')
  root = tmp_path / 'runs'
  done = root / 'base'
  done.mkdir(parents=True)
  # The split fully evaluated; the text only by the default metrics.
  (done / 'evaluations.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in [
      {'metric': 'default', 'data': 'shakespeare:test'},
      {'metric': 'brier', 'data': 'shakespeare:test'},
      {'metric': 'default', 'data': str(text)}]))
  args = ['--config', CONFIG, '--grid=train.num_steps=5', f'--root={root}',
          '--evaluate=brier', f'--eval_text={text}']
  sweep.main(args)
  assert [c[0] for c in ran] == ['latentlm.train', 'latentlm.evaluate']
  assert ran[1][2:] == ['--metric=brier', f'--text={text}']
  with open(done / 'evaluations.jsonl', 'a') as f:
    f.write(json.dumps({'metric': 'brier', 'data': str(text)}) + '\n')
  ran.clear()
  sweep.main(args)
  assert not ran
  assert 'evaluated already, skipped' in capsys.readouterr().out
  with pytest.raises(SystemExit):
    sweep.main(args[:-1] + [f'--eval_text={tmp_path}/missing.txt'])
  assert 'is not a file' in capsys.readouterr().err
