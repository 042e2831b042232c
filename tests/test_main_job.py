"""The README's main job (configs/shakespeare.py), both stages, shrunk."""

import json
import os

import helpers
import pytest

from latentlm import runs
from latentlm.errors import UserError


def _stage_flags(stage: str, data_dir: str, num_steps: int) -> list[str]:
  prefix = f'--config.stages.{stage}'
  return [f'{prefix}.data.data_dir={data_dir}',
          f'{prefix}.train.num_steps={num_steps}',
          f'{prefix}.train.log_every=1',
          f'{prefix}.train.eval_every={num_steps}',
          f'{prefix}.train.eval_batches=1',
          f'{prefix}.train.checkpoint_every={num_steps}',
          f'{prefix}.train.progress_bar=False']


def test_main_job_trains_both_stages_then_samples_and_resumes(tmp_path):
  data_dir, workdir = str(tmp_path / 'tfds'), str(tmp_path / 'bard')
  args = ['--config=configs/shakespeare.py:size=nano', f'--workdir={workdir}',
          *_stage_flags('autoencoder', data_dir, 3),
          *_stage_flags('concept_lm', data_dir, 3),
          '--config.samples.max_bytes=24']
  first = helpers.run_module('train', *args, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  summary = helpers.last_json_line(first.stdout)
  assert {'autoencoder/token_acc', 'concept_lm/loss',
          'word_vocabulary_fraction', 'minutes'} <= set(summary)
  assert 0.0 <= summary['word_vocabulary_fraction'] <= 1.0
  assert first.stdout.count('--- sample ') == 3
  with open(f'{workdir}/concept_lm/config.json') as f:
    assert json.load(f)['autoencoder_workdir'] == f'{workdir}/autoencoder'

  again = helpers.run_module('train', *args, timeout=600)  # both finished
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('already trained') == 2
  resumed = helpers.last_json_line(again.stdout)
  assert {k: v for k, v in resumed.items() if k != 'minutes'} == {
      k: v for k, v in summary.items() if k != 'minutes'}

  # evaluate and generate read the job's directory as its concept LM.
  run = runs.load(workdir)
  assert run.config.task == 'concept_lm' and run.step == 3


def test_pipeline_workdir_before_stage_two_is_a_clear_error(tmp_path):
  os.makedirs(tmp_path / 'autoencoder')
  (tmp_path / 'config.json').write_text(json.dumps({'task': 'pipeline'}))
  with pytest.raises(UserError, match='concept_lm stage has not started'):
    runs.load(str(tmp_path))
