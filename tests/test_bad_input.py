"""Bad input across the command line: one clear line, non-zero exit, no damage.

Table-driven: each case is a command and the line it must print. The cases
run as real processes, a few at a time.
"""

import concurrent.futures
import json
import os
import shutil

import pytest

import helpers


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny trained token LM workdir that the cases must leave untouched."""
  root = tmp_path_factory.mktemp('bad_input')
  data_dir = str(root / 'tfds')
  config = helpers.tiny_token_lm(data_dir, num_steps=2, log_every=1,
                                 eval_every=2, checkpoint_every=2)
  flags = ['--config=configs/token_lm.py:size=nano',
           *helpers.config_flags(config)]
  workdir = str(root / 'run')
  result = helpers.run_module('train', *flags, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-2000:]
  # The same run as an older latentlm wrote it, before a field existed.
  old_run = root / 'old_run'
  shutil.copytree(workdir, old_run)
  config_json = json.loads((old_run / 'config.json').read_text())
  del config_json['train']['skip_nonfinite_updates']
  (old_run / 'config.json').write_text(json.dumps(config_json))
  (root / 'empty.txt').write_text('')
  (root / 'binary.bin').write_bytes(bytes(range(256)) * 4)
  return dict(root=str(root), workdir=workdir, flags=flags)


def _snapshot(path):
  return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
          for d, _, files in os.walk(path) for f in files
          if f != '.lock'}


CASES = [
    # (name, module, args, expected part of the one line)
    ('unknown key', 'train', ['TRAIN_FLAGS', '--config.train.num_stepz=3',
                              '--workdir=WORKDIR'],
     "unknown config key 'train.num_stepz'; did you mean 'train.num_steps'?"),
    ('wrong type', 'train', ['TRAIN_FLAGS', '--config.train.num_steps=many',
                             '--workdir=WORKDIR'],
     'num_steps'),
    ('missing config file', 'train', ['--config=configs/nope.py',
                                      '--workdir=NEW'],
     "cannot load config file 'configs/nope.py'"),
    ('bad config argument', 'train', ['--config=configs/token_lm.py:size=huge',
                                      '--workdir=NEW'],
     "size='huge' is not one of"),
    ('empty corpus', 'train', ['TRAIN_FLAGS', '--config.data.name=files',
                               '--config.data.files=ROOT/empty.txt',
                               '--workdir=NEW'],
     'matches only empty files'),
    ('binary corpus', 'train', ['TRAIN_FLAGS', '--config.data.name=files',
                                '--config.data.files=ROOT/binary.bin',
                                '--workdir=NEW'],
     'looks binary'),
    ('missing corpus', 'train', ['TRAIN_FLAGS', '--config.data.name=files',
                                 '--config.data.files=ROOT/none*.txt',
                                 '--workdir=NEW'],
     'matches no files'),
    ('incompatible workdir', 'train', ['TRAIN_FLAGS', '--config.seed=7',
                                       '--workdir=WORKDIR'],
     'was made by a different config (seed: 0 there, 7 now)'),
    ('zero batch', 'train', ['TRAIN_FLAGS', '--config.train.batch_size=0',
                             '--workdir=NEW'],
     'batch_size'),
    ('evaluate no workdir', 'evaluate', ['--workdir=NEW'],
     'is not a latentlm workdir'),
    ('evaluate missing text', 'evaluate', ['--workdir=WORKDIR',
                                           '--text=ROOT/nope.txt'],
     'does not exist'),
    ('evaluate binary text', 'evaluate', ['--workdir=WORKDIR',
                                          '--text=ROOT/binary.bin'],
     'looks binary'),
    ('negative temperature', 'generate', ['--workdir=WORKDIR',
                                          '--temperature=-1'],
     '--temperature=-1.0 must be >= 0'),
    ('zero length', 'generate', ['--workdir=WORKDIR', '--max_bytes=0'],
     '--max_bytes=0 must be positive'),
    ('bad top_p', 'generate', ['--workdir=WORKDIR', '--top_p=1.5'],
     '--top_p=1.5 must be in (0, 1]'),
    ('encoder workdir missing', 'train',
     ['--config=configs/concept_lm.py:size=nano', '--workdir=NEW',
      '--config.autoencoder_workdir=ROOT/no_such_run'],
     'is not a latentlm workdir'),
    ('encoder workdir of another task', 'train',
     ['--config=configs/concept_lm.py:size=nano', '--workdir=NEW',
      '--config.autoencoder_workdir=WORKDIR'],
     "holds a 'token_lm' run, not an autoencoder"),
    ('workdir of an older version', 'generate', ['--workdir=ROOT/old_run'],
     'lacks a field this latentlm needs'),
    ('prompt longer than context', 'generate', ['--workdir=WORKDIR',
                                                '--prompt=' + 'x' * 100],
     "the model's context is 32"),
]


def test_each_bad_input_fails_in_one_line(trained):
  before = _snapshot(trained['root'])

  def run(case):
    name, module, args, expected = case
    expanded = []
    for arg in args:
      if arg == 'TRAIN_FLAGS':
        expanded.extend(trained['flags'])
        continue
      expanded.append(arg.replace('WORKDIR', trained['workdir'])
                      .replace('NEW', os.path.join(trained['root'], 'new'))
                      .replace('ROOT', trained['root']))
    return name, expected, helpers.run_module(module, *expanded)

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(run, CASES))
  failures = []
  for name, expected, result in results:
    lines = result.stderr.strip().splitlines()
    if (result.returncode == 0 or len(lines) != 1
        or not lines[0].startswith('error: ') or expected not in lines[0]):
      failures.append(f'{name}: rc={result.returncode} stderr='
                      f'{result.stderr[-600:]!r}')
  assert not failures, '\n'.join(failures)
  assert _snapshot(trained['root']) == before  # nothing written anywhere
