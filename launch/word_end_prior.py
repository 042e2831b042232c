"""What BrierLM's word-end positions tell a model whose units close there.

  python launch/word_end_prior.py --workdir=DIR [--split=test]

DIR is a byte token LM. At each of BrierLM's positions (latentlm/metrics/
brier.py: word ends, 64-byte contexts, seed 0) it reads the probability
the byte LM gives to the next byte being whitespace, which is always the
truth there. A model whose last unit closes at the word end (spaced words,
entropy units, mostly BPE) knows that for free; a byte LM or fixed chunks
must predict it. The last line is one JSON object: the mean, the median
and the share of positions above 0.9.
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
from latentlm.data import segment
from latentlm.metrics import brier
from latentlm.training import runs


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='test')
  a = parser.parse_args(argv)
  try:
    run = runs.load(a.workdir)
    if run.config.task != 'token_lm' or run.config.data.tokenizer != 'bytes':
      raise UserError(f'{a.workdir} is not a byte token LM')
    documents = [d['text'] for d in
                 corpus.load_split(run.config.data, a.split)]
    chosen, key = brier.positions(documents, brier.DEFAULT_BLOCK_BYTES,
                                  brier.DEFAULT_NUM_POSITIONS, seed=0,
                                  max_new_bytes=brier.DEFAULT_MAX_NEW_BYTES)
    whitespace_V = np.zeros(run.task.model_config.vocab_size, bool)
    whitespace_V[segment.WHITESPACE] = True

    @jax.jit
    def next_probs(tokens_1xL):
      logits_1xLxV, _ = run.task.model.apply({'params': run.state.params},
                                             tokens_1xL)
      return jax.nn.softmax(logits_1xLxV[0, -1].astype(jnp.float32))

    tokenizer = run.task.tokenizer
    p_P = np.array([
        float(np.asarray(next_probs(jnp.asarray(
            [tokenizer.encode(context.decode('utf-8', 'replace'))],
            jnp.int32)))[whitespace_V].sum())
        for context, _ in chosen])
    print(json.dumps(dict(mean=float(p_P.mean()), median=float(np.median(p_P)),
                          above_0_9=float((p_P > 0.9).mean()),
                          num_positions=len(p_P), positions_key=key)))
  except UserError as e:
    parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
  main()
