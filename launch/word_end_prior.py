"""How much BrierLM's next-byte condition tells a model.

  python launch/word_end_prior.py --workdir=DIR [--split=test]

DIR is a byte token LM. At each of BrierLM's positions (latentlm/metrics/
brier.py: word ends, 64-byte contexts, seed 0) it reads the probability
the byte LM gives to the next byte being whitespace, which is always the
truth there. A model whose last unit closes at the word end (spaced words,
entropy units, mostly BPE) reads that from where its context stops; a byte
LM or fixed chunks would have to predict it. That gap is why the protocol
conditions every model on it: the further this is below 1, the more an
unconditioned score would have favoured units that close at word ends.
The last line is one JSON object: the mean, the median and the share of
positions above 0.9.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from latentlm.core.errors import UserError
from latentlm.data import corpus
from latentlm.metrics import brier
from latentlm.training import runs


def whitespace_probs(run, contexts) -> np.ndarray:
  """P(next byte is whitespace | context) under byte LM `run`, per context:
  the mass of the tokens BrierLM's next-byte condition allows."""
  allowed_T = brier.first_token_allowed(run.task.tokenizer)

  @jax.jit
  def whitespace_prob(tokens_1xL):
    logits_1xLxV, _ = run.task.model.apply({'params': run.state.params},
                                           tokens_1xL)
    probs_V = jax.nn.softmax(logits_1xLxV[0, -1].astype(jnp.float32))
    return probs_V[:len(allowed_T)][allowed_T].sum()

  encode = run.task.tokenizer.encode
  return np.array([float(whitespace_prob(jnp.asarray([encode(c)], jnp.int32)))
                   for c in contexts])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='test')
  a = parser.parse_args(argv)
  try:
    run = runs.load(a.workdir)
    if run.config.task != 'token_lm' or run.config.data.tokenizer != 'bytes':
      raise UserError(f'{a.workdir} is not a byte token LM: give the workdir '
                      "of a token_lm run with data.tokenizer='bytes'")
    documents = [d['text'] for d in
                 corpus.load_split(run.config.data, a.split)]
    chosen, key = brier.positions(documents, brier.DEFAULT_BLOCK_BYTES,
                                  brier.DEFAULT_NUM_POSITIONS, seed=0,
                                  max_new_bytes=brier.DEFAULT_MAX_NEW_BYTES)
    p_P = whitespace_probs(run, [context for context, _ in chosen])
    print(json.dumps(dict(mean=float(p_P.mean()), median=float(np.median(p_P)),
                          above_0_9=float((p_P > 0.9).mean()),
                          num_positions=len(p_P), positions_key=key)))
  except UserError as e:
    parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
  main()
