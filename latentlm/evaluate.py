"""Evaluates a trained run: python -m latentlm.evaluate --workdir=DIR [--text=F].

Scores the held-out split of the run's corpus (or a text file) with the
metrics of its task; the last stdout line is one JSON object of flat names,
also appended to DIR/evaluations.jsonl for latentlm.report.
--metric=brier scores a token or concept LM with BrierLM (latentlm/metrics/brier.py);
--metric=default --metric=brier does both from one loaded run, one line and
one record each; --step=N evaluates an earlier kept checkpoint.
"""

import dataclasses
import json
import os

from absl import flags
import jax

from latentlm.core import cli
from latentlm.core import workdir as workdir_lib
from latentlm.data import corpus
from latentlm.metrics import brier
from latentlm.training import checkpoint
from latentlm.training import runs
from latentlm.training import trainer as trainer_lib

EVALUATIONS = 'evaluations.jsonl'


def eval_batches(run, split: str | None, text_path: str | None,
                 batch_size: int):
  """Every row of the split (or the text) once, padded to whole batches."""
  source = None
  if text_path is not None:
    source = [{'text': corpus.read_text_to_score(text_path)}]
  return trainer_lib.make_data(run.config, run.task, split, batch_size,
                         seed=run.config.seed, shuffle=False, num_epochs=1,
                         source=source)


def evaluate(run, split=None, text_path=None, batch_size=16) -> dict:
  """The metrics of the run's task (Task.evaluation_metrics)."""
  split = split or run.config.data.eval_split
  batches = eval_batches(run, split, text_path, batch_size)
  metrics = run.task.evaluation_metrics(run, batches)
  return dict(metrics, step=run.step,
              data=text_path or f'{run.config.data.name}:{split}')


def evaluate_brier(run, split=None, text_path=None, **kwargs) -> dict:
  """BrierLM on the split's documents (or the text), as brier.py defines."""
  split = split or run.config.data.eval_split
  if text_path is not None:
    documents = [corpus.read_text_to_score(text_path)]
  else:
    documents = [t if isinstance(t, bytes) else t.encode('utf-8')
                 for t in corpus.split_texts(run.config.data, split)]
  metrics = brier.evaluate_run(run, documents, **kwargs)
  return dict(metrics, step=run.step,
              data=text_path or f'{run.config.data.name}:{split}')


def at_step(run, workdir_path: str, step: int):
  """`run` with the state of its kept checkpoint `step`."""
  path = workdir_lib.Workdir(workdir_path).checkpoints
  ckpt = checkpoint.Checkpointer(path, max_to_keep=1000, save_every=1,
                                 read_only=True)
  kept = sorted(ckpt.manager.all_steps())
  if step not in kept:
    ckpt.close()
    raise cli.UserError(f'--step={step} is not a kept checkpoint of '
                        f'{workdir_path}; kept: {kept}')
  state = ckpt.restore_state(step, run.trainer.abstract_state)
  ckpt.close()
  return dataclasses.replace(run, state=state, step=step)


def record(workdir_path: str, metrics: dict):
  """Adds one evaluation to the workdir's evaluations.jsonl, rewriting the
  file atomically: an interrupted evaluation never leaves half a line."""
  path = os.path.join(workdir_path, EVALUATIONS)
  previous = ''
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
  workdir_lib.write_atomic(path, previous + json.dumps(metrics) + '\n')


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  flags.DEFINE_string('workdir', None, 'A trained run.')
  flags.DEFINE_string('text', None, 'Score this text file instead of the '
                      "run's held-out split (invalid UTF-8 is read as bytes).")
  flags.DEFINE_string('split', None, "Split of the run's corpus (default: the "
                      "config's eval split).")
  flags.DEFINE_integer('batch_size', 16, 'Rows per evaluation batch.')
  flags.DEFINE_multi_enum('metric', ['default'], ['default', 'brier'],
                          "default: the task's metrics; brier: BrierLM "
                          '(token and concept LMs). Repeatable.')
  flags.DEFINE_integer('step', None, 'Evaluate this kept checkpoint '
                       '(default: the latest).')
  flags.DEFINE_integer('num_positions', brier.DEFAULT_NUM_POSITIONS,
                       'BrierLM positions (more: a narrower interval, '
                       'linearly slower).')
  flags.DEFINE_integer('block_bytes', brier.DEFAULT_BLOCK_BYTES,
                       'BrierLM: at most this many context bytes before each '
                       'position (the same for every model compared).')
  flags.DEFINE_integer('max_new_bytes', brier.DEFAULT_MAX_NEW_BYTES,
                       'BrierLM: longest continuation sampled per position.')
  flags.DEFINE_integer('seed', 0, 'BrierLM positions and samples.')
  flags.DEFINE_enum('ngram_unit', 'bytes', ['bytes', 'words'], 'BrierLM '
                    'n-grams of bytes or of words (see latentlm/metrics/brier.py).')


def main(argv):
  del argv
  f = flags.FLAGS
  if f.text is not None:
    corpus.read_text_to_score(f.text, warn=False)  # fail on a missing file first
  run = runs.load(f.workdir, devices=jax.devices())
  if f.step is not None:
    run = at_step(run, f.workdir, f.step)
  for metric in dict.fromkeys(f.metric):  # once each, in the given order
    if metric == 'brier':
      metrics = evaluate_brier(run, f.split, f.text, seed=f.seed,
                               block_bytes=f.block_bytes,
                               num_positions=f.num_positions,
                               max_new_bytes=f.max_new_bytes,
                               unit=f.ngram_unit)
    else:
      metrics = evaluate(run, f.split, f.text, f.batch_size)
    record(f.workdir, dict(metrics, metric=metric))
    # The per-position terms go to the record only (report pairs runs with
    # them); the printed line stays one readable object.
    metrics.pop('brier_terms', None)
    for name, value in metrics.items():
      print(f'{name:>24s}  {value}')
    print(json.dumps(metrics))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
