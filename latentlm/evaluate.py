"""Evaluates a trained run: python -m latentlm.evaluate --workdir=DIR [--text=F].

Scores the held-out split of the run's corpus (or a text file) with the
metrics of its task; the last stdout line is one JSON object of flat names.
"""

import json

from absl import flags
import jax

from latentlm import cli
from latentlm import reconstruction
from latentlm import runs
from latentlm import train
from latentlm.data import corpus


def eval_batches(run, split: str | None, text_path: str | None,
                 batch_size: int):
  """Every row of the split (or the text) once, padded to whole batches."""
  source = None
  if text_path is not None:
    source = [{'text': corpus.read_text_file(text_path)}]
  return train.make_data(run.config, run.task, split, batch_size,
                         seed=run.config.seed, shuffle=False, num_epochs=1,
                         source=source)


def token_lm_metrics(run, batches) -> dict:
  metrics = run.trainer.evaluate(run.state, batches, max_batches=10**9)
  return dict(bits_per_byte=metrics['bits_per_byte'],
              token_accuracy=metrics['accuracy'], loss=metrics['loss'],
              num_bytes=metrics['num_bytes'])


def evaluate(run, split=None, text_path=None, batch_size=16) -> dict:
  split = split or run.config.data.eval_split
  batches = eval_batches(run, split, text_path, batch_size)
  if run.config.task == 'token_lm':
    metrics = token_lm_metrics(run, batches)
  elif run.config.task == 'autoencoder':
    metrics = reconstruction.reconstruction_metrics(run, batches)
  else:
    raise cli.UserError(f'evaluation of task {run.config.task!r} is not '
                        'available yet')
  return dict(metrics, step=run.step,
              data=text_path or f'{run.config.data.name}:{split}')


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  flags.DEFINE_string('workdir', None, 'A trained run.')
  flags.DEFINE_string('text', None, 'Score this text file instead of the '
                      "run's held-out split (invalid UTF-8 is read as bytes).")
  flags.DEFINE_string('split', None, "Split of the run's corpus (default: the "
                      "config's eval split).")
  flags.DEFINE_integer('batch_size', 16, 'Rows per evaluation batch.')


def main(argv):
  del argv
  f = flags.FLAGS
  if f.text is not None:
    corpus.read_text_file(f.text, warn=False)  # fail on a missing file first
  run = runs.load(f.workdir, devices=jax.devices())
  metrics = evaluate(run, f.split, f.text, f.batch_size)
  for name, value in metrics.items():
    print(f'{name:>24s}  {value}')
  print(json.dumps(metrics))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
