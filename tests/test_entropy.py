"""Entropy units: the walk against a plain-Python one, exact round trips,
causality, the threshold's bisection, and windowed entropies against each
window scored alone."""

import json

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from latentlm import tasks
from latentlm.core.errors import UserError
from latentlm.data import entropy
from latentlm.data import segment
from latentlm.data.tokenizers import ByteTokenizer
from latentlm.tasks import flops

import helpers

PAD, EOS = ByteTokenizer.pad_id, ByteTokenizer.eos_id


def _reference_starts(entropies, threshold, K, forced):
  """A unit starts at t if t = 0, forced, hard to predict, or K on."""
  starts = []
  for t, h in enumerate(entropies):
    if t == 0 or forced[t] or h > threshold or t - starts[-1] == K:
      starts.append(t)
  return starts


_DOCUMENT = st.lists(
    st.tuples(st.one_of(st.integers(0, 255), st.just(EOS)),
              st.floats(0, 8)), max_size=150)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(document=_DOCUMENT, threshold=st.floats(0, 8),
                  K=st.integers(1, 9))
def test_units_match_the_reference_and_round_trip(document, threshold, K):
  tokens = np.array([t for t, _ in document], np.int32)
  entropies = np.array([h for _, h in document], np.float32)
  forced = segment.spaced_word_starts(tokens, EOS)
  starts = entropy.unit_starts(entropies, threshold, K, forced)
  assert starts.tolist() == _reference_starts(entropies, threshold, K, forced)
  units_MxK = entropy.segment_by_entropy(tokens, entropies, threshold, K, PAD,
                                         EOS)
  assert units_MxK.shape == (len(starts), K)
  np.testing.assert_array_equal(segment.join(units_MxK, PAD), tokens)
  lengths_M = (units_MxK != PAD).sum(1)
  assert (lengths_M >= 1).all()
  # EOS is a unit of its own: no unit spans two documents; and no unit
  # spans a word end (whitespace after a non-whitespace byte).
  space = lambda t: t < 256 and bytes([t]).isspace()
  for row, length in zip(units_MxK, lengths_M):
    assert EOS not in row[:length] or length == 1
    assert not any(space(b) and not space(a)
                   for a, b in zip(row[:length - 1], row[1:length]))


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(document=_DOCUMENT, threshold=st.floats(0, 8),
                  K=st.integers(1, 9), cut=st.integers(0, 150))
def test_a_prefix_has_the_units_of_the_whole_up_to_its_end(document,
                                                          threshold, K, cut):
  """Boundaries are decided by what comes before them: a text's units
  never change when more text follows, except its last, which grows."""
  tokens = np.array([t for t, _ in document], np.int32)
  entropies = np.array([h for _, h in document], np.float32)
  cut = min(cut, len(tokens))
  whole = entropy.unit_starts(entropies, threshold, K,
                              segment.spaced_word_starts(tokens, EOS))
  prefix = entropy.unit_starts(entropies[:cut], threshold, K,
                               segment.spaced_word_starts(tokens[:cut], EOS))
  assert prefix.tolist() == [s for s in whole.tolist() if s < cut]


def test_nothing_or_eos_before_a_byte_makes_it_start_a_unit():
  """Decided without the byte LM (there is none here to ask)."""
  units = entropy.EntropyUnits(None, 16, None, None, K=8, mean_bytes=3.0,
                               pad_id=PAD, eos_id=EOS)
  assert units.starts_unit_after(np.zeros(0, np.int32))
  assert units.starts_unit_after(np.array([ord('a'), EOS], np.int32))
  with pytest.raises(UserError, match='built from configs alone'):
    units.starts_unit_after(np.array([ord('a')], np.int32))


def test_the_threshold_sets_the_mean_unit_length():
  rng = np.random.default_rng(0)
  tokens = [rng.integers(0, 256, n).astype(np.int32) for n in (500, 800)]
  entropies = [rng.exponential(2.0, len(t)).astype(np.float32)
               for t in tokens]
  for target in (1.0, 2.5, 4.0, 7.5):
    threshold = entropy.threshold_for_length(entropies, tokens, target, 8, EOS)
    mean = entropy.mean_unit_length(entropies, tokens, threshold, 8, EOS)
    assert abs(mean - target) < 0.05 * target, (target, mean)
  lower = entropy.threshold_for_length(entropies, tokens, 2.0, 8, EOS)
  assert lower < entropy.threshold_for_length(entropies, tokens, 4.0, 8, EOS)
  with pytest.raises(UserError, match='not between 1 and K=8'):
    entropy.threshold_for_length(entropies, tokens, 9.0, 8, EOS)


@pytest.fixture(scope='module')
def byte_lm():
  """A nano byte LM with random weights and a 16-byte window."""
  config = helpers.tiny_token_lm('/tmp/unused')
  config.data.seq_len = config.model.max_len = 16
  task = tasks.get_task(config)
  params, _ = task.init(jax.random.key(0))
  params = jax.tree.map(lambda x: x.value if hasattr(x, 'value') else x,
                        params, is_leaf=lambda x: hasattr(x, 'value'))
  return task, params


def _entropy_of(task, params, context):
  """Entropy (bits) of the prediction after `context`, scored alone."""
  logits, _ = task.model.apply({'params': params},
                               np.asarray(context, np.int32)[None])
  p = np.asarray(jax.nn.softmax(logits[0, -1].astype(np.float32)),
                 np.float64)
  return -(p * np.log2(np.maximum(p, 1e-30))).sum()


@pytest.mark.parametrize('n,window_batch', [(1, 64), (2, 64), (9, 64),
                                            (16, 64), (17, 64), (40, 64),
                                            (57, 64), (57, 4), (40, 2)])
def test_windowed_entropies_equal_each_byte_scored_from_its_window(
    byte_lm, n, window_batch, monkeypatch):
  """Also when the windows take several batches (a small WINDOW_BATCH)."""
  monkeypatch.setattr(entropy, 'WINDOW_BATCH', window_batch)
  task, params = byte_lm
  model = entropy.EntropyModel(task.model, params, 16)
  W, half = 16, 8
  tokens = np.random.default_rng(n).integers(0, 256, n).astype(np.int32)
  got = model(tokens)
  assert got.shape == (n,) and np.isinf(got[0])
  for t in range(1, n):
    # Byte t is scored in the window that gives it at least half a window
    # of context: the first window below W, else the one starting
    # half-window-aligned at least half a window before it.
    start = 0 if t < W else (t // half - 1) * half
    expected = _entropy_of(task, params, tokens[start:t])
    np.testing.assert_allclose(got[t], expected, rtol=1e-4, atol=1e-4)


def test_only_a_byte_token_lm_is_an_entropy_model(tmp_path):
  byte_lm = helpers.tiny_token_lm(str(tmp_path))
  autoencoder = helpers.load_config('autoencoder', 'segment=entropy,K=8')
  units = tasks.get_task(autoencoder, entropy=byte_lm).unit_fn
  with pytest.raises(UserError, match='built from configs alone'):
    units(np.zeros(4, np.int32))  # no weights: nothing to cut with
  byte_lm.data.tokenizer = 'spm:300'
  with pytest.raises(UserError, match='token LM over bytes'):
    tasks.get_task(autoencoder, entropy=byte_lm)
  with pytest.raises(UserError, match='segment.entropy_workdir is required'):
    tasks.get_task(autoencoder)


def test_a_distilled_head_on_entropy_units_builds_on_the_byte_lm():
  """Stage 3 (head_distill) reads the units through stage 1, which needs
  the byte LM: it is one of the stages the task is handed."""
  from configs import head_distill as head_distill_config  # pylint: disable=g-import-not-at-top
  from latentlm.tasks import head_distill  # pylint: disable=g-import-not-at-top
  stages = helpers.load_config('entropy_units', 'size=nano,K=8').stages
  student = head_distill_config.student_config(stages.concept_lm)
  built = head_distill.Task.stages_of(student, dict(
      teacher=stages.concept_lm, autoencoder=stages.autoencoder,
      entropy=stages.entropy))
  assert sorted(built) == ['autoencoder', 'entropy', 'teacher']
  assert built['entropy'].config is stages.entropy


@pytest.mark.slow  # three stages, each its own process
def test_a_pipeline_on_entropy_units_counts_its_byte_lm_and_reports_units(
    tmp_path):
  """configs/entropy_units.py shrunk: the byte LM trains as stage 0, stage
  1 and 2 train on its units, evaluate reports their mean length, and the
  concept LM's all-in FLOPs hold the byte LM's training and passes."""
  data_dir, workdir = str(tmp_path / 'tfds'), str(tmp_path / 'units')
  args = ['--config=configs/entropy_units.py:size=nano,K=8,mean_bytes=3',
          f'--workdir={workdir}',
          *helpers.pipeline_stage_flags('entropy', data_dir, 2),
          *helpers.pipeline_stage_flags('autoencoder', data_dir, 2),
          *helpers.pipeline_stage_flags('concept_lm', data_dir, 2),
          '--config.samples.max_bytes=16']
  result = helpers.run_module('train', *args, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(f'{workdir}/autoencoder/config.json') as f:
    assert json.load(f)['segment']['entropy_workdir'] == f'{workdir}/entropy'
  evaluated = helpers.run_module('evaluate', f'--workdir={workdir}',
                                 '--split=test', timeout=900)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = helpers.last_json_line(evaluated.stdout)
  # The threshold is set on the training text; the test plays come close.
  assert 2.0 < metrics['bytes_per_concept'] < 4.5, metrics
  config = helpers.load_config('entropy_units', 'size=nano,K=8,mean_bytes=3')
  stages = config.stages
  for name in ('entropy', 'autoencoder', 'concept_lm'):
    stages[name].train.num_steps = 2
  logged = [json.loads(line) for line in open(
      f'{workdir}/concept_lm/metrics.jsonl') if 'train/flops_all_in' in line]
  counted = flops.pipeline_flops(config)
  assert logged[-1]['train/flops_all_in'] == pytest.approx(counted, rel=1e-6)
  # What the byte LM adds: its training, and its passes over the text of
  # every step of stages 1 and 2.
  entropy_training = flops.all_in_flops(stages.entropy, 2)
  passes = flops.segmentation_flops_per_chunk(stages.autoencoder,
                                              stages.entropy)
  chunks = [c.train.batch_size * (c.data.seq_len + extra) for c, extra in
            ((stages.autoencoder, 0), (stages.concept_lm, 1))]
  with stages.autoencoder.unlocked():
    stages.autoencoder.segment.kind = 'word'  # the same, without the byte LM
  without = flops.all_in_flops(stages.concept_lm, 2, stages.autoencoder)
  assert counted - without == pytest.approx(
      entropy_training + 2 * passes * sum(chunks), rel=1e-6)
