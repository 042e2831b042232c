"""Samples text from a trained run: python -m latentlm.generate --workdir=DIR.

Token LMs sample token by token with a KV cache (temperature, top-p; the
sampler: latentlm/sampling/tokens.py); a concept LM chunk by chunk
(latentlm/sampling/concepts.py).
"""

import sys

from absl import flags
import jax

from latentlm import sampling
from latentlm.core import cli
from latentlm.core.errors import UserError
from latentlm.sampling import concepts as concept_sampling
from latentlm.sampling import tokens as token_sampling
from latentlm.training import runs


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  flags.DEFINE_string('workdir', None, 'A trained run.')
  flags.DEFINE_string('prompt', sampling.PROMPT, 'Text to continue.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_float('temperature', sampling.TEMPERATURE,
                     'Sampling temperature (> 0; 0 = greedy).')
  flags.DEFINE_float('top_p', sampling.TOP_P,
                     'Nucleus sampling mass in (0, 1].')
  flags.DEFINE_integer('max_bytes', sampling.MAX_BYTES,
                       'Stop after about this many bytes.')
  flags.DEFINE_integer(
      'candidates', concept_sampling.DEFAULT_CANDIDATES,
      'Concept LM: head samples per step that the temperature chooses among '
      '(latentlm/sampling/concepts.py); 1 passes the temperature to the head.')


def main(argv):
  del argv
  f = flags.FLAGS
  token_sampling.check_sampling_args(f.temperature, f.top_p, f.max_bytes)
  if f.candidates < 1:
    raise UserError(f'--candidates={f.candidates} must be at least 1')
  run = runs.load(f.workdir)
  if not run.task.continues_prompt:  # e.g. a round trip replaces the prompt
    print(run.task.generate_texts(run, f.prompt, 1,
                                  jax.random.key(f.seed))[0])
    return
  sys.stdout.write(f.prompt)
  write = lambda text: (sys.stdout.write(text), sys.stdout.flush())
  run.task.generate_texts(run, f.prompt, 1, jax.random.key(f.seed),
                          temperature=f.temperature, top_p=f.top_p,
                          max_bytes=f.max_bytes, on_text=write,
                          num_candidates=f.candidates)
  sys.stdout.write('\n')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
