"""Trains any task: python -m latentlm.train --config=configs/F.py --workdir=DIR.

The command; the loop and the pipeline of stages are latentlm/training/loop.py.
"""

from absl import flags

from latentlm.core import cli
from latentlm.core import distributed
from latentlm.tasks import pipeline
from latentlm.training.loop import train
from latentlm.training.loop import train_pipeline


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  cli.define_config_flag()
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
  distributed.define_flags()


def main(argv):
  del argv
  distributed.initialize_from_flags()  # before anything touches a device
  if pipeline.is_pipeline(flags.FLAGS.config):
    train_pipeline(flags.FLAGS.config, flags.FLAGS.workdir)
  else:
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
