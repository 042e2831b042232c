"""BrierLM: exact on a known source, CI coverage, end to end on a token LM."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from latentlm.core import config_lib
from latentlm.data import segment
from latentlm.metrics import brier
from latentlm.metrics import intervals
from latentlm.sampling import tokens as token_sampling
from latentlm.training import loop as train_loop
from latentlm.training import runs

import helpers

# A source of i.i.d. words; the "model" samples i.i.d. words from Q != P.
WORDS = [b'to', b'be', b'or', b'not', b'the']
P = np.array([0.7, 0.1, 0.1, 0.05, 0.05])
Q = np.array([0.6, 0.2, 0.1, 0.05, 0.05])


def exact_brier_n(n: int) -> float:
  """E_y[2 Q(y) - sum_x Q(x)^2] over n-grams of independent words."""
  return 2 * float(P @ Q) ** n - float(Q @ Q) ** n


def _text(rng, probs, num_words):
  return b''.join(WORDS[i] + b' ' for i in rng.choice(len(WORDS), num_words,
                                                       p=probs))


def _iid_model(seed):
  """Continues a context that ends at a word end: space, word, ..."""
  rng = np.random.default_rng(seed)
  def continuations(contexts, _):
    return [(b' ' + _text(rng, Q, 6), False)
            for _ in range(2 * len(contexts))]
  return continuations


def test_leading_ngram_needs_closed_words():
  words = lambda text, n, ended: brier.leading_ngram(text, n, ended, 'words')
  assert words(b'to be or', 2, ended=False) == b'to be'
  assert words(b'to be', 2, ended=False) is None  # 'be' may grow
  assert words(b'to be', 2, ended=True) == b'to be'
  assert words(b' to\nbe ', 2, ended=False) == b' to\nbe'
  assert words(b'to ', 2, ended=True) is None
  assert brier.leading_ngram(b'to be', 3, False, 'bytes') == b'to '
  assert brier.leading_ngram(b'to', 3, True, 'bytes') is None


def test_terms_are_the_two_sample_estimator():
  ngrams = lambda text: brier.ngrams(text, False, 'words')
  y = ngrams(b'a b c d ')
  same = brier.brier_terms([y], [y], [y])
  np.testing.assert_array_equal(same, [[1, 1, 1, 1]])
  x = ngrams(b'a b x d ')
  other = brier.brier_terms([y], [x], [x])  # a confident miss from n=3 on
  np.testing.assert_array_equal(other, [[1, 1, -1, -1]])
  hit_and_miss = brier.brier_terms([y], [y], [x])
  np.testing.assert_array_equal(hit_and_miss, [[1, 1, 1, 1]])
  z = ngrams(b'a z c d ')
  two_misses = brier.brier_terms([y], [x], [z])  # disagreeing misses
  np.testing.assert_array_equal(two_misses, [[1, 1, 0, 0]])
  short = brier.ngrams(b'ab', True, 'bytes')  # ended after 2 bytes
  np.testing.assert_array_equal(
      brier.brier_terms([brier.ngrams(b'abcd', False)], [short], [short]),
      [[1, 1, -1, -1]])  # two equally short samples agree with each other


def test_brier_lm_is_100_times_the_geometric_mean():
  np.testing.assert_allclose(intervals.brier_lm([0.5, 0.5, 0.125, 0.5]),
                             100 * (0.5 ** 3 * 0.125) ** 0.25)
  assert intervals.brier_lm([0.5, 0.2, -0.01, 0.1]) == 0


def test_estimate_matches_the_exact_brier_score_within_its_ci():
  documents = [_text(np.random.default_rng(1), P, 3000)]
  metrics = brier.score(_iid_model(2), documents, None, block_bytes=8,
                        num_positions=2000, max_new_bytes=24, unit='words')
  exact = [exact_brier_n(n) for n in range(1, 5)]
  exact_lm = float(intervals.brier_lm(exact))
  assert metrics['num_positions'] == 2000
  assert metrics['brier_lm_ci_low'] <= exact_lm <= metrics['brier_lm_ci_high']
  for n in range(1, 5):  # each Brier-n within 4 standard errors (~0.02)
    assert abs(metrics[f'brier_{n}'] - exact[n - 1]) < 0.05
  assert metrics['brier_lm_ci_high'] - metrics['brier_lm_ci_low'] < 0.3 * exact_lm


def test_byte_ngrams_match_the_exact_brier_score_within_the_ci():
  """I.i.d. bytes from p; the model draws i.i.d. bytes from q."""
  alphabet = np.frombuffer(b'ab ', np.uint8)
  p, q = np.array([0.5, 0.2, 0.3]), np.array([0.6, 0.1, 0.3])
  rng = np.random.default_rng(4)
  documents = [rng.choice(alphabet, 20000, p=p).tobytes()]
  def continuations(contexts, _):
    return [(rng.choice(alphabet, 8, p=q).tobytes(), False)
            for _ in range(2 * len(contexts))]
  metrics = brier.score(continuations, documents, None, block_bytes=4,
                        num_positions=3000, max_new_bytes=8, unit='bytes')
  # A position is a word end: its first byte is a space, then i.i.d. p.
  exact = [2 * q[2] * float(p @ q) ** (n - 1) - float(q @ q) ** n
           for n in range(1, 5)]
  assert metrics['brier_lm_ci_low'] <= intervals.brier_lm(exact) <= metrics['brier_lm_ci_high']
  for n in range(1, 5):
    assert abs(metrics[f'brier_{n}'] - exact[n - 1]) < 0.04
  assert metrics['ngram_unit'] == 'bytes'


def test_bootstrap_ci_covers_the_exact_value():
  """Over 100 small experiments the 90% interval covers about 90% of the time."""
  rng = np.random.default_rng(3)
  exact_lm = float(intervals.brier_lm([exact_brier_n(n) for n in range(1, 5)]))
  covered = 0
  for trial in range(100):
    # The estimator's terms for i.i.d. words, drawn directly (fast).
    y, x1, x2 = (rng.choice(5, (400, 4), p=p) for p in (P, Q, Q))
    same = lambda a, b: np.cumprod(a == b, axis=1)  # all of the first n match
    terms = same(x1, y) + same(x2, y) - same(x1, x2)
    m = intervals.summarize(terms.astype(float), seed=trial, num_resamples=300,
                        level=0.9)
    covered += m['brier_lm_ci_low'] <= exact_lm <= m['brier_lm_ci_high']
  assert 80 <= covered <= 98


# --------------------------------------------------- end to end on a run
@pytest.fixture(scope='module')
def token_lm_workdir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('data'))
  workdir = str(tmp_path_factory.mktemp('tok'))
  config = helpers.tiny_token_lm(data_dir, num_steps=2, eval_every=2,
                                 checkpoint_every=2)
  config.data.update(name='files', files=f'{data_dir}/*.txt')
  with open(f'{data_dir}/play.txt', 'w') as f:
    f.write('To be, or not to be, that is the question: whether tis '
            'nobler in the mind to suffer the slings and arrows.\n' * 30)
  train_loop.train(config, workdir)
  return workdir


def test_brier_end_to_end_on_a_token_lm(token_lm_workdir, tmp_path):
  text = tmp_path / 'held_out.txt'
  text.write_text('Now is the winter of our discontent made glorious summer '
                  'by this sun of York. ' * 4)
  result = helpers.run_module(
      'evaluate', f'--workdir={token_lm_workdir}', '--metric=default',
      '--metric=brier', f'--text={text}', '--num_positions=6',
      '--block_bytes=12', '--max_new_bytes=24')
  assert result.returncode == 0, result.stderr
  metrics = helpers.last_json_line(result.stdout)
  assert metrics['num_positions'] == 6
  for name in ('brier_lm', 'brier_1', 'brier_4', 'brier_lm_ci_low',
               'brier_lm_ci_high'):
    assert np.isfinite(metrics[name]), name
  assert -1 <= metrics['brier_1'] <= 1
  assert metrics['brier_lm_ci_low'] <= metrics['brier_lm'] <= metrics['brier_lm_ci_high']
  with open(os.path.join(token_lm_workdir, 'evaluations.jsonl')) as f:
    default, last = [json.loads(line) for line in f.readlines()[-2:]]
  # Both metrics from one process, each its own record.
  assert last['metric'] == 'brier' and last['num_positions'] == 6
  # The per-position terms are kept for paired comparisons, not printed.
  assert np.shape(last['brier_terms']) == (6, 4)
  assert last['positions_key'] == metrics['positions_key']
  assert 'brier_terms' not in metrics
  for n in range(1, 5):
    assert (last[f'brier_{n}_ci_low'] <= last[f'brier_{n}'] <=
            last[f'brier_{n}_ci_high'])
  assert default['metric'] == 'default' and default['data'] == str(text)
  assert np.isfinite(default['bits_per_byte'])


def test_a_token_lm_continues_a_word_end_with_whitespace(token_lm_workdir):
  """The protocol's condition through the real sampler: the first token is
  drawn among those that start with whitespace, then freely."""
  run = runs.load(token_lm_workdir)
  contexts = [b' or not to', b' that is the']
  samples = brier.token_lm_continuations(run, contexts, jax.random.key(0), 12)
  assert len(samples) == 4
  for text, _ in samples:
    assert text[:1].isspace(), text


def test_the_word_end_prior_is_the_samplers_whitespace_probability(
    token_lm_workdir):
  """launch/word_end_prior.py against the KV-cached sampler's logits."""
  prior = config_lib.load_module(
      os.path.join(helpers.REPO, 'launch', 'word_end_prior.py'))
  run = runs.load(token_lm_workdir)
  contexts = [b' or not to', b' that is the', b' To be,']
  p_P = prior.whitespace_probs(run, contexts)
  sampler = token_sampling.TokenSampler(run.task, run.state.params)
  for context, p in zip(contexts, p_P):
    logits_1xV, _ = sampler._prefill(np.asarray([list(context)], np.int32))  # pylint: disable=protected-access
    probs_V = np.asarray(jax.nn.softmax(logits_1xV[0].astype(np.float32)))
    np.testing.assert_allclose(p, probs_V[segment.WHITESPACE].sum(),
                               rtol=1e-4)
  assert ((0 < p_P) & (p_P < 1)).all()


def test_the_word_end_prior_of_a_missing_workdir_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(helpers.REPO, 'launch',
                                    'word_end_prior.py'),
       f'--workdir={tmp_path / "missing"}'], capture_output=True, text=True,
      env=helpers.subprocess_env(), check=False, timeout=300)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr


@pytest.mark.parametrize('content', [b'', b'  \n\t \n', b'PK\x03\x04\x00\x00'])
def test_a_text_with_nothing_to_score_is_one_line_and_changes_nothing(
    token_lm_workdir, tmp_path, content):
  text = tmp_path / 'text.txt'
  text.write_bytes(content)
  records = os.path.join(token_lm_workdir, 'evaluations.jsonl')
  before = open(records).read() if os.path.exists(records) else None
  result = helpers.run_module('evaluate', f'--workdir={token_lm_workdir}',
                              '--metric=default', '--metric=brier',
                              f'--text={text}')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  after = open(records).read() if os.path.exists(records) else None
  assert after == before


def test_a_block_longer_than_the_sampler_window_is_one_line(token_lm_workdir):
  result = helpers.run_module('evaluate', f'--workdir={token_lm_workdir}',
                              '--metric=brier', '--block_bytes=200',
                              '--num_positions=2')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'block_bytes' in result.stderr


# ------------------------------------------- a concept LM, gmm head
HAMLET = 'To be, or not to be, that is the question: whether tis nobler. ' * 3


def _gmm_run(**overrides):
  """An initialised (untrained) nano concept LM with a gmm head, as a Run.

  At init the gmm head's output kernels are zero (GIVT), so its mixture is
  the same for every position: uniform weights, means = the mean biases,
  stds = min_std + softplus(0). That gives gmm_nll a closed form.
  """
  import test_concept_lm as clm  # pylint: disable=g-import-not-at-top
  config = clm._config()  # pylint: disable=protected-access
  config.head = helpers.load_config('concept_lm', 'size=nano,head=gmm').head
  config.head.update(hidden_dim=32, num_layers=1, num_components=3)
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  config.update(overrides)
  return clm.untrained_run(config, jax.devices()[:1])


@pytest.fixture(scope='module')
def concept_lm_run():
  return _gmm_run()


def test_concept_lm_metrics_and_the_gmm_closed_form(concept_lm_run, tmp_path):
  from latentlm import evaluate  # pylint: disable=g-import-not-at-top
  run = concept_lm_run
  text = tmp_path / 'hamlet.txt'
  text.write_text(HAMLET)
  metrics = evaluate.evaluate(run, text_path=str(text), batch_size=8)
  for name in ('latent_l2', 'roundtrip_l2', 'gmm_nll', 'loss'):
    assert np.isfinite(metrics[name]), name
  assert metrics['latent_l2'] > 0 and metrics['roundtrip_l2'] >= 0

  task, state = run.task, run.state
  mu, real = [], []
  for batch in evaluate.eval_batches(run, None, str(text), 8):
    tokens_BxS1xK = batch['tokens']
    mean_BxS1xZ = np.asarray(task.encode(state.frozen, tokens_BxS1xK)[0])
    mu.append(mean_BxS1xZ[:, 1:].reshape(-1, mean_BxS1xZ.shape[-1]))
    real.append((tokens_BxS1xK[:, 1:] != task.pad_id).any(-1).reshape(-1))
  mu_MxZ = np.concatenate(mu)[np.concatenate(real)]
  means_CxZ = np.asarray(state.params['head']['mean_out']['bias']).reshape(
      3, -1)
  std = 1e-3 + np.log(2.0)
  Z = mu_MxZ.shape[1]
  log_p_MxC = (-0.5 * (((mu_MxZ[:, None] - means_CxZ) / std) ** 2).sum(-1)
               - Z * np.log(std) - 0.5 * Z * np.log(2 * np.pi) - np.log(3))
  nll_M = -np.logaddexp.reduce(log_p_MxC, axis=1)
  np.testing.assert_allclose(metrics['gmm_nll'], nll_M.mean(), rtol=1e-4)
  assert metrics['num_concepts'] == len(mu_MxZ)
  assert metrics['bytes_per_concept'] == pytest.approx(
      metrics['num_bytes'] / metrics['num_concepts'])
  assert 1 <= metrics['bytes_per_concept'] <= task.chunk_len


def test_concept_lm_eval_loss_without_target_noise_is_the_gmm_nll(tmp_path):
  """The loss (head.loss on targets = mu) and gmm_nll (head.log_prob of mu)
  are two computations, averaged over the same concepts in the same pass."""
  from latentlm import evaluate  # pylint: disable=g-import-not-at-top
  run = _gmm_run(target_noise=0.0, token_loss_weight=0.0)
  text = tmp_path / 'hamlet.txt'
  text.write_text(HAMLET)
  metrics = evaluate.evaluate(run, text_path=str(text), batch_size=8)
  np.testing.assert_allclose(metrics['loss'], metrics['gmm_nll'], rtol=1e-5)
  assert 'token_ce' not in metrics


def test_brier_end_to_end_on_a_concept_lm(concept_lm_run, tmp_path):
  from latentlm import evaluate  # pylint: disable=g-import-not-at-top
  text = tmp_path / 'held_out.txt'
  text.write_text('Now is the winter of our discontent made glorious '
                  'summer. ' * 3)
  metrics = evaluate.evaluate_brier(concept_lm_run, text_path=str(text),
                                    num_positions=4, block_bytes=12,
                                    max_new_bytes=24)
  assert metrics['num_positions'] == 4
  assert metrics['brier_lm_ci_low'] <= metrics['brier_lm'] <= metrics['brier_lm_ci_high']
  assert all(-1 <= metrics[f'brier_{n}'] <= 1 for n in range(1, 5))


def test_a_step_that_is_not_kept_is_one_line(token_lm_workdir):
  result = helpers.run_module('evaluate', f'--workdir={token_lm_workdir}',
                              '--step=7')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f'error: --step=7 is not a kept checkpoint of {token_lm_workdir}; '
      'kept: [1, 2]']
