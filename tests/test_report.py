"""latentlm.report on small fake run directories with known contents."""

import json
import math
import os
import sys

import numpy as np
import pytest

import helpers
from latentlm import report
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.metrics import intervals
from latentlm.tasks import flops


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
  # All evaluations at step 20 count; the last written wins. The old
  # records' BrierLM interval (ci_low, ci_high) reads under today's names.
  assert token['final'] == {'bits_per_byte': 2.5, 'brier_lm': 4.25,
                            'brier_1': 0.25, 'brier_lm_ci_low': 3.0,
                            'brier_lm_ci_high': 5.0}
  assert token['all_in_flops'] == flops.all_in_flops(token['config'], 20)
  assert concept['all_in_flops'] == flops.all_in_flops(concept['config'], 3)
  assert concept['all_in_flops'] > 3 * flops.train_flops_per_step(
      concept['config'])  # its stage 1 counts too
  assert token['params'] > 0 and concept['params'] > 0
  assert ae['final']['token_acc'] == 0.9  # evaluate's, over the train eval
  assert report.noise_series(ae) == [(0.0, 0.9), (0.1, 0.8), (0.5, 0.25)]
  assert report.brier_series(token) == [
      (flops.all_in_flops(token['config'], 10), 1.5),
      (flops.all_in_flops(token['config'], 20), 4.25, (3.0, 5.0))]
  table = report.markdown_table(runs).splitlines()
  assert len(table) == 2 + 3
  assert table[0].startswith(
      '| run | config | params | steps | all-in FLOPs | evaluated at |')
  assert '| 20 | 2.5 | 4.25 [3, 5] | 0.25 |' in table[2]
  assert f"| 3 | {concept['all_in_flops']:.3g} | - |" in table[4]  # no evaluate
  assert 'concept_lm head=gmm input=tokens' in table[4]


def test_cli_writes_table_and_plots(run_dirs, tmp_path):
  pytest.importorskip('matplotlib')
  out = tmp_path / 'out'
  written = report.write_report(run_dirs, str(out))
  assert set(written) == {'table', 'json', 'brier', 'brier_1',
                          'bits_per_byte', 'reconstruction'}
  for key in ('brier', 'brier_1', 'bits_per_byte', 'reconstruction'):
    with open(written[key], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_plots_without_matplotlib_fail_in_one_line(run_dirs, tmp_path,
                                                   monkeypatch):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails
  with pytest.raises(UserError, match='plots need matplotlib'):
    report.write_report(run_dirs, str(tmp_path / 'out'))
  written = report.write_report(run_dirs, str(tmp_path / 'out'), plots=False)
  assert set(written) == {'table', 'json'}


def test_a_directory_that_is_no_run_is_one_line(tmp_path):
  result = helpers.run_module('report', str(tmp_path), f'--out={tmp_path}/o',
                              '--noplots')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f'error: {tmp_path} is not a latentlm workdir (no config.json); train '
      'into it first with python -m latentlm.train']


def test_split_keeps_only_that_splits_evaluations(run_dirs):
  token = report.load_run(run_dirs[0], split='test')
  assert token['final'] == {'brier_lm': 0.5, 'brier_1': 0.25,
                            'brier_lm_ci_low': 0.0, 'brier_lm_ci_high': 1.5}
  assert token['evaluated_step'] == 20
  x = flops.all_in_flops(token['config'], 20)
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


# --------------------------------------------------------- paired differences
NUM_POSITIONS = 64


def _brier_record(terms_PxN, step, positions_key='k0',
                  data='shakespeare:test', **extra):
  """A BrierLM record as `evaluate --metric=brier` writes it."""
  return dict(metric='brier', step=step, data=data, block_bytes=128,
              max_new_bytes=16, ngram_unit='bytes',
              positions_key=positions_key, brier_terms=terms_PxN.tolist(),
              **intervals.summarize(terms_PxN), **extra)


def _fake_reference(path, order, evaluations):
  """An n-gram reference directory as `python -m latentlm.ngram` writes it."""
  os.makedirs(path)
  with open(os.path.join(path, 'reference.json'), 'w') as f:
    json.dump(dict(family=f'ngram-{order}', order=order,
                   smoothing='kneser-ney', data='shakespeare:train'), f)
  with open(os.path.join(path, 'evaluations.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in evaluations)
  return str(path)


@pytest.fixture(scope='module')
def terms():
  """{run: its per-position terms}: `better` scores 1 everywhere, at least
  the baseline's; `twin` equals it; `ngram-3` is at most it; `close`
  redraws some of its terms."""
  rng = np.random.default_rng(0)
  draw = lambda p, shape: rng.choice([-1, 0, 1], shape, p=p)
  base_PxN = draw([0.1, 0.3, 0.6], (NUM_POSITIONS, 4))
  redrawn = rng.random(base_PxN.shape) < 0.3
  return dict(base=base_PxN, better=np.ones_like(base_PxN), twin=base_PxN,
              close=np.where(redrawn, draw([0.3, 0.3, 0.4], base_PxN.shape),
                             base_PxN),
              other=base_PxN, ngram=np.minimum(base_PxN, 0))


@pytest.fixture(scope='module')
def paired_dirs(tmp_path_factory, terms):
  """Runs and a reference scored on the same positions (`positions_key`
  k0), one on others, one evaluated before per-position terms."""
  tmp_path = tmp_path_factory.mktemp('paired')
  config = helpers.tiny_token_lm(str(tmp_path))
  bits = [{'step': 20, 'eval/bits_per_byte': 2.5}]
  dirs = dict(
      base=_fake_run(tmp_path / 'base', config, bits, [
          _brier_record(terms['better'], 10),  # an earlier checkpoint's
          _brier_record(terms['base'], 20)]),
      better=_fake_run(tmp_path / 'better', config, bits,
                       [_brier_record(terms['better'], 20)]),
      twin=_fake_run(tmp_path / 'twin', config, bits,
                     [_brier_record(terms['twin'], 30)]),
      close=_fake_run(tmp_path / 'close', config, bits, [
          _brier_record(terms['close'], 20, partial_fallback_rate=0.125)]),
      other=_fake_run(tmp_path / 'other', config, bits, [
          _brier_record(terms['other'], 20, 'k1', 'shakespeare:validation')]),
      old=_fake_run(tmp_path / 'old', config, bits, [
          {'metric': 'brier', 'step': 20, 'brier_lm': 4.25, 'ci_low': 3.0,
           'ci_high': 5.0, 'data': 'shakespeare:test'}]))
  dirs['ngram'] = _fake_reference(tmp_path / 'ngram-3', 3, [
      {'metric': 'default', 'step': 0, 'data': 'shakespeare:test',
       'bits_per_byte': 3.25, 'num_bytes': 1000},
      _brier_record(terms['ngram'], 0)])
  return dirs


def _report(paired_dirs, tmp_path, **kwargs):
  written = report.write_report(list(paired_dirs.values()),
                                str(tmp_path / 'out'), plots=False, **kwargs)
  with open(written['json']) as f:
    runs = {r['name']: r for r in json.load(f)['runs']}
  with open(written['table']) as f:
    return runs, f.read()


def _verdicts(run) -> set:
  return {d['verdict'] for d in run['paired']['differences'].values()}


def test_paired_differences_rank_only_what_the_intervals_resolve(
    paired_dirs, terms, tmp_path):
  runs, table = _report(paired_dirs, tmp_path)
  assert runs['base']['paired'] is None  # the baseline: the first given
  assert _verdicts(runs['better']) == {'better'}  # above it everywhere
  assert _verdicts(runs['ngram-3']) == {'worse'}  # below it everywhere
  twin = runs['twin']['paired']['differences']
  assert set(twin) == set(report.BRIER_METRICS)
  assert all(d == dict(diff=0.0, ci_low=0.0, ci_high=0.0,
                       verdict='not resolved') for d in twin.values())
  # At the latest step evaluated on the baseline's positions (the
  # baseline's step 20, not its step 10).
  assert runs['twin']['paired']['step'] == 30
  assert runs['base']['final']['brier_1'] == terms['base'][:, 0].mean()
  rows = {line.split(' | ')[0][2:]: line for line in
          table.split('## Paired differences')[1].splitlines()
          if line.startswith('| ')}
  assert list(rows) == ['run', 'better', 'twin', 'close', 'other', 'old',
                        'ngram-3']  # references last, the baseline left out
  assert '| +0 [+0, +0] | not resolved |' in rows['twin']
  assert rows['better'].count(' | better |') == 5  # the name cell aside


def test_runs_on_other_positions_are_never_compared(paired_dirs, tmp_path):
  runs, table = _report(paired_dirs, tmp_path)
  for name, reason in (
      ('other', 'not comparable (different positions): data '
                'shakespeare:validation here, shakespeare:test in the '
                'baseline; positions_key k1 here, k0 in the baseline'),
      ('old', 'not comparable (no per-position terms): evaluated before '
              'paired intervals; evaluate it again with --metric=brier')):
    assert runs[name]['paired'] == dict(comparable=False, step=None,
                                        reason=reason, differences={})
    assert f'| {name} | - | {reason} |' + ' - |' * 10 in table
  # The old record still loads, its BrierLM interval included.
  assert runs['old']['final'] == {'bits_per_byte': 2.5, 'brier_lm': 4.25,
                                  'brier_lm_ci_low': 3.0,
                                  'brier_lm_ci_high': 5.0}


def _brute_force_interval(a_PxN, b_PxN, seed, num_resamples=2000):
  """Percentile bootstrap of Brier-1..4 and BrierLM of a minus b, one
  resample of the positions at a time."""
  rng = np.random.default_rng(seed)
  def scores(terms_PxN):
    means = [float(np.mean(terms_PxN[:, n])) for n in range(4)]
    brier_lm = (100 * math.prod(means) ** (1 / 4)
                if all(m > 0 for m in means) else 0.0)
    return means + [brier_lm]
  diffs = []
  for _ in range(num_resamples):
    picks = rng.integers(0, len(a_PxN), len(a_PxN))
    diffs.append(np.subtract(scores(a_PxN[picks]), scores(b_PxN[picks])))
  point = np.subtract(scores(a_PxN), scores(b_PxN))
  return point, np.percentile(diffs, 2.5, axis=0), np.percentile(
      diffs, 97.5, axis=0)


def test_paired_difference_matches_a_brute_force_bootstrap(paired_dirs, terms,
                                                          tmp_path):
  runs, _ = _report(paired_dirs, tmp_path)
  point, low, high = _brute_force_interval(terms['close'], terms['base'],
                                           seed=1)
  close = runs['close']['paired']['differences']
  for i, metric in enumerate(report.BRIER_METRICS):
    d = close[metric]
    assert d['diff'] == pytest.approx(point[i])
    width = high[i] - low[i]
    assert width > 0
    assert d['ci_low'] == pytest.approx(low[i], abs=0.15 * width)
    assert d['ci_high'] == pytest.approx(high[i], abs=0.15 * width)
    assert d['verdict'] == ('not resolved' if d['ci_low'] <= 0 <= d['ci_high']
                            else 'better' if d['diff'] > 0 else 'worse')


def test_baseline_is_named_by_its_directory(paired_dirs, tmp_path):
  runs, table = _report(paired_dirs, tmp_path, baseline='better')
  assert runs['better']['paired'] is None
  assert _verdicts(runs['base']) == {'worse'}
  assert 'minus the baseline **better** (its BrierLM evaluation at step 20' \
      in table
  by_path, _ = _report(paired_dirs, tmp_path, baseline=paired_dirs['better'])
  assert by_path['better']['paired'] is None
  assert _verdicts(by_path['base']) == {'worse'}
  result = helpers.run_module('report', *paired_dirs.values(),
                              f'--out={tmp_path}/o', '--noplots',
                              '--baseline=nope')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      'error: --baseline=nope names none of the runs: base, better, twin, '
      'close, other, old, ngram-3']


def test_table_shows_intervals_and_reference_rows(paired_dirs, terms):
  runs = [report.load_run(d) for d in paired_dirs.values()]
  reference = runs[-1]
  assert (reference['reference'], reference['family'],
          reference['all_in_flops']) == (True, 'ngram-3', None)
  table = report.markdown_table(runs).splitlines()
  header = table[0].split(' | ')
  assert header[6:] == ['bits_per_byte', 'brier_lm', 'brier_1', 'brier_2',
                        'brier_3', 'brier_4', 'num_positions',
                        'partial_fallback_rate |']
  summary = intervals.summarize(terms['close'])
  cells = table[2 + 3].split(' | ')  # close
  brier_1 = (f"{summary['brier_1']:.4g} [{summary['brier_1_ci_low']:.4g}, "
             f"{summary['brier_1_ci_high']:.4g}]")
  assert cells[8] == brier_1
  assert cells[12:] == [str(NUM_POSITIONS), '0.125 |']
  assert table[-1].startswith(
      '| ngram-3 | reference: ngram-3, kneser-ney smoothing, fit on '
      'shakespeare:train | - | - | - | 0 | 3.25 | ')


def test_references_are_dashed_lines_in_the_plots(paired_dirs, tmp_path,
                                                  monkeypatch):
  pytest.importorskip('matplotlib')
  from matplotlib import axes  # pylint: disable=g-import-not-at-top
  lines = []
  draw = axes.Axes.axhline
  def spy(self, y, *args, **kwargs):
    lines.append((kwargs['label'], kwargs['linestyle'], y))
    return draw(self, y, *args, **kwargs)
  monkeypatch.setattr(axes.Axes, 'axhline', spy)
  written = report.write_report(list(paired_dirs.values()),
                                str(tmp_path / 'out'))
  assert {'brier', 'brier_1', 'bits_per_byte'} <= set(written)
  reference = report.load_run(paired_dirs['ngram'])['final']
  assert lines == [('ngram-3', '--', reference['brier_lm']),
                   ('ngram-3', '--', reference['brier_1']),
                   ('ngram-3', '--', 3.25)]
