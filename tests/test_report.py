"""latentlm.report on small fake run directories with known contents."""

import json
import os
import sys

import pytest

import helpers
from latentlm import flops
from latentlm import report
from latentlm import workdir as workdir_lib
from latentlm.errors import UserError


def _fake_run(path, config, records, evaluations=()):
  workdir = workdir_lib.Workdir(str(path))
  workdir.prepare(config)
  with open(workdir.metrics_path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  with open(os.path.join(workdir.path, 'evaluations.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in evaluations)
  return workdir.path


@pytest.fixture(scope='module')
def run_dirs(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('runs')
  token = helpers.tiny_token_lm(str(tmp_path))
  token_dir = _fake_run(
      tmp_path / 'tok', token,
      [{'step': 10, 'train/loss': 3.0},
       {'step': 10, 'eval/bits_per_byte': 3.5},
       {'step': 20, 'eval/bits_per_byte': 2.5}],
      [{'metric': 'brier', 'step': 10, 'brier_lm': 1.5},
       {'metric': 'brier', 'step': 20, 'brier_lm': 4.25},
       {'metric': 'brier', 'step': 20, 'brier_lm': 0.5, 'brier_1': 0.25,
        'ci_low': 0.0, 'ci_high': 1.5, 'data': 'shakespeare:test'},
       {'metric': 'brier', 'step': 20, 'brier_lm': 4.25, 'ci_low': 3.0,
        'ci_high': 5.0, 'data': 'shakespeare:validation'}])
  ae = helpers.load_config('autoencoder', 'Dz=8')
  ae_dir = _fake_run(
      tmp_path / 'ae', ae, [{'step': 5, 'eval/token_acc': 0.75}],
      [{'metric': 'default', 'step': 5, 'token_acc': 0.9,
        'token_acc_noise_0.1': 0.8, 'token_acc_noise_0.5': 0.25}])
  concept = helpers.load_config('concept_lm', 'size=nano,head=gmm')
  concept.autoencoder_workdir = ae_dir
  concept_dir = _fake_run(tmp_path / 'clm', concept,
                          [{'step': 3, 'eval/latent_l2': 1.25}])
  return token_dir, ae_dir, concept_dir


def test_table_has_one_row_per_run_with_known_values(run_dirs):
  runs = [report.load_run(d) for d in run_dirs]
  token, ae, concept = runs
  # All evaluations at step 20 count; the last written wins.
  assert token['final'] == {'bits_per_byte': 2.5, 'brier_lm': 4.25,
                            'brier_1': 0.25, 'ci_low': 3.0, 'ci_high': 5.0}
  assert token['train_flops'] == 20 * flops.train_flops_per_step(
      token['config'])
  assert token['params'] > 0 and concept['params'] > 0
  assert ae['final']['token_acc'] == 0.9  # evaluate's, over the train eval
  assert report.noise_series(ae) == [(0.0, 0.9), (0.1, 0.8), (0.5, 0.25)]
  assert report.brier_series(token) == [
      (10 * token['flops_per_step'], 1.5),
      (20 * token['flops_per_step'], 4.25, (3.0, 5.0))]
  table = report.markdown_table(runs).splitlines()
  assert len(table) == 2 + 3
  assert table[0].startswith(
      '| run | config | params | steps | train FLOPs | evaluated at |')
  assert '| 20 | 2.5 | 4.25 | 0.25 |' in table[2]
  assert f"| 3 | {concept['train_flops']:.3g} | - |" in table[4]  # no evaluate
  assert 'concept_lm head=gmm input=tokens' in table[4]


def test_cli_writes_table_and_plots(run_dirs, tmp_path):
  pytest.importorskip('matplotlib')
  out = tmp_path / 'out'
  written = report.write_report(run_dirs, str(out))
  assert set(written) == {'table', 'brier', 'brier_1', 'bits_per_byte',
                          'reconstruction'}
  for key in ('brier', 'brier_1', 'bits_per_byte', 'reconstruction'):
    with open(written[key], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_plots_without_matplotlib_fail_in_one_line(run_dirs, tmp_path,
                                                   monkeypatch):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails
  with pytest.raises(UserError, match='plots need matplotlib'):
    report.write_report(run_dirs, str(tmp_path / 'out'))
  written = report.write_report(run_dirs, str(tmp_path / 'out'), plots=False)
  assert set(written) == {'table'}


def test_a_directory_that_is_no_run_is_one_line(tmp_path):
  result = helpers.run_module('report', str(tmp_path), f'--out={tmp_path}/o',
                              '--noplots')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f'error: {tmp_path} is not a latentlm workdir (no config.json); train '
      'into it first with python -m latentlm.train']


def test_split_keeps_only_that_splits_evaluations(run_dirs):
  token = report.load_run(run_dirs[0], split='test')
  assert token['final'] == {'brier_lm': 0.5, 'brier_1': 0.25, 'ci_low': 0.0,
                            'ci_high': 1.5}
  assert token['evaluated_step'] == 20
  x = 20 * token['flops_per_step']
  assert report.brier_series(token) == [(x, 0.5, (0.0, 1.5))]  # interval
  assert report.brier_1_series(token) == [(x, 0.25)]
  assert report.load_run(run_dirs[1], split='test')['final'] == {}


def test_legend_labels_stay_distinct_when_run_names_collide(run_dirs):
  runs = [report.load_run(d) for d in run_dirs]
  assert list(report.run_labels(runs).values()) == ['tok', 'ae', 'clm']
  twins = [dict(r, name='same') for r in runs]  # one name, three tasks
  assert list(report.run_labels(twins).values()) == [
      'same (token_lm)', 'same (autoencoder)', 'same (concept_lm)']
  twins = [dict(runs[2], name='same', path=f'/paper/{study}/lm/same')
           for study in ('heads', 'chunk_size')]  # one name and task twice
  assert list(report.run_labels(twins).values()) == [
      'heads/lm/same', 'chunk_size/lm/same']
