"""The README's main job (configs/shakespeare.py), both stages, shrunk."""

import json
import os

import chex
import helpers
import pytest

from configs import shakespeare as shakespeare_config
from latentlm.data import corpus
from latentlm.tasks import pipeline
from latentlm.core.errors import UserError
from latentlm.training import runs


def test_main_job_trains_its_stages_then_samples_and_resumes(tmp_path):
  data_dir, workdir = str(tmp_path / 'tfds'), str(tmp_path / 'bard')
  args = ['--config=configs/shakespeare.py:size=nano', f'--workdir={workdir}',
          *helpers.pipeline_stage_flags('autoencoder', data_dir, 3),
          *helpers.pipeline_stage_flags('concept_lm', data_dir, 3),
          '--config.samples.max_bytes=24']
  first = helpers.run_module('train', *args, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  summary = helpers.last_json_line(first.stdout)
  assert {'autoencoder/token_acc', 'concept_lm/loss',
          'word_vocabulary_fraction', 'minutes'} <= set(summary)
  # A concept is a word: more than 4 bytes, at most 8.
  assert 4 < (summary['concept_lm/num_bytes'] /
              summary['concept_lm/num_concepts']) <= 8
  assert 0.0 <= summary['word_vocabulary_fraction'] <= 1.0
  assert first.stdout.count('--- sample ') == 3
  # Before the JSON line, every stage's final metrics with their units, and
  # the next commands on the job's directory (it stands for its last stage).
  printed = first.stdout[first.stdout.index('=== pipeline finished'):]
  for text in ('% tokens', 'nats/concept',
               f'{workdir}/concept_lm/samples.txt',
               f'python -m latentlm.generate --workdir={workdir}'):
    assert text in printed, text
  with open(f'{workdir}/concept_lm/config.json') as f:
    assert json.load(f)['autoencoder_workdir'] == f'{workdir}/autoencoder'

  again = helpers.run_module('train', *args, timeout=600)  # all finished
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('already trained') == 2
  resumed = helpers.last_json_line(again.stdout)
  assert {k: v for k, v in resumed.items() if k != 'minutes'} == {
      k: v for k, v in summary.items() if k != 'minutes'}

  # evaluate and generate read the job's directory as its last stage.
  run = runs.load(workdir)
  assert run.config.task == 'concept_lm' and run.step == 3

  # Spelling over seeds, each continuing a speech of the test plays.
  spelt = helpers.run_module('spelling', f'--workdir={workdir}', '--seeds=2',
                             '--samples=2', '--max_bytes=24')
  assert spelt.returncode == 0, spelt.stderr[-3000:]
  scores = helpers.last_json_line(spelt.stdout)
  seeds = scores['seeds']
  assert [row['seed'] for row in seeds] == [1, 2]
  fractions = [row['word_vocabulary_fraction'] for row in seeds]
  chex.assert_trees_all_close(scores['word_vocabulary_fraction'],
                              sum(fractions) / 2)
  assert (scores['min'], scores['max']) == (min(fractions), max(fractions))
  assert scores['temperature'] == shakespeare_config.TEMPERATURE
  test_text = '\n'.join(d['text'].decode() for d in
                        corpus.load_split(run.config.data, 'test'))
  assert all(row['prompt'] in test_text for row in seeds)


def test_main_job_config_is_pinned():
  """The resolved main job, field for field, as its figures were measured
  (docs/results/main_job.md): same config and seed, same samples on a
  machine. A change to it is a deliberate change of the main job:
  update the golden file with it."""
  with open(os.path.join(helpers.REPO, 'tests', 'golden',
                         'shakespeare_config.json')) as f:
    golden = json.load(f)
  assert json.loads(helpers.load_config('shakespeare').to_json()) == golden


def test_pipeline_workdir_before_its_last_stage_is_a_clear_error(tmp_path):
  os.makedirs(tmp_path / 'autoencoder')
  os.makedirs(tmp_path / 'concept_lm')
  config = helpers.load_config('shakespeare', 'distill=True')
  (tmp_path / 'config.json').write_text(config.to_json())
  with pytest.raises(UserError, match='head_distill stage has not started'):
    runs.load(str(tmp_path))
  config = helpers.load_config('shakespeare')
  (tmp_path / 'config.json').write_text(config.to_json())
  with pytest.raises(UserError, match='concept_lm stage has not started'):
    runs.load(str(tmp_path))


@pytest.mark.parametrize('segment', ['fixed', 'word', 'entropy'])
def test_main_job_segmentations(segment):
  config = helpers.load_config('shakespeare', f'segment={segment}')
  unit = shakespeare_config.SEGMENTS[segment]
  ae = config.stages.autoencoder
  assert (ae.segment.kind, ae.segment.chunk_len, ae.model.latent_dim,
          ae.train.num_steps) == (segment, unit['K'], unit['Dz'],
                                  unit['ae_steps'])
  # Entropy units' byte LM trains first and counts in the FLOPs.
  assert ('entropy' in config.stages) == (segment == 'entropy')
  assert pipeline.stage_names(config)[0] == (
      'entropy' if segment == 'entropy' else 'autoencoder')
  # An argument given overrides the segmentation's own.
  ae = helpers.load_config('shakespeare',
                           f'segment={segment},K=6,Dz=16').stages.autoencoder
  assert (ae.segment.chunk_len, ae.model.latent_dim) == (6, 16)


def test_an_unknown_main_job_segmentation_is_a_clear_error():
  with pytest.raises(UserError, match="segment='words' is not one of"):
    helpers.load_config('shakespeare', 'segment=words')
