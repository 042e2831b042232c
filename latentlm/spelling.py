"""How well a run's samples spell, over many seeds and unseen prompts:

  python -m latentlm.spelling --workdir=DIR [--seeds=10] [--split=test]

For each seed it draws `--samples` continuations of one prompt: the first
lines of a speech at a random place in the `--split` plays (text the job
never trained on, a different speech per seed). It scores them by the
fraction of their words that occur in the training plays (the main job's
`word_vocabulary_fraction`) and by distinct-2, the share of a sample's
word pairs that are distinct, which falls when the text repeats itself.
Two more keep the fraction honest about samples that lean on short words
("the bar of the mar"): the mean letters a word (`word_letters`, beside
the prompts' split's own, `reference_word_letters`), and the fraction of
the words of at least LONG_WORD_LETTERS letters found in the plays
(`long_words_found`).
Seeds start at 1 because the main job draws its own samples with seed 0.
The last line is one JSON object: every seed's figures, the mean and the
range.
"""

import json

from absl import flags
import jax
import numpy as np

from latentlm.core import cli
from latentlm.core import workdir as workdir_lib
from latentlm.core.errors import UserError
from latentlm.data import corpus
from latentlm.sampling import concepts
from latentlm.tasks import pipeline
from latentlm.training import runs

PROMPT_LINES = 2  # a speaker's name and the first line of the speech
# Short function words (the, of, my) are spelt right by chance far more
# often than longer ones; from five letters a word is mostly content.
LONG_WORD_LETTERS = 5


def define_flags():
  """Flags of this command, defined only when it runs as the program."""
  flags.DEFINE_string('workdir', None, 'A trained run (a pipeline: its last '
                      'stage).')
  flags.DEFINE_integer('seeds', 10, 'How many seeds, from --first_seed.')
  flags.DEFINE_integer('first_seed', 1, 'The first seed (the job uses 0).')
  flags.DEFINE_integer('samples', 6, 'Samples a seed.')
  flags.DEFINE_integer('max_bytes', 400, 'Bytes a sample.')
  flags.DEFINE_float('temperature', None, 'Sampling temperature; default: '
                     "the pipeline's config.samples.temperature.")
  flags.DEFINE_string('split', 'test', 'The split the prompts come from.')


def speech_prompt(text: str, rng: np.random.Generator) -> str:
  """The first PROMPT_LINES lines of a speech (after a blank line) at a
  random place in `text`."""
  starts = [i + 2 for i in range(len(text) - 2) if text[i:i + 2] == '\n\n']
  if not starts:
    raise UserError('the prompt split has no blank line to start a speech at')
  start = starts[rng.integers(len(starts))]
  lines = text[start:].split('\n')[:PROMPT_LINES]
  return '\n'.join(lines) + '\n'


def distinct_2(texts) -> float:
  """The share of the texts' word pairs that are distinct within a text."""
  pairs = [list(zip(w, w[1:])) for w in map(concepts.words, texts)]
  return sum(len(set(p)) for p in pairs) / max(sum(map(len, pairs)), 1)


def _letters(word: str) -> int:
  return len(word.replace("'", ''))


def word_letters(texts) -> float:
  """The mean letters a word of the texts (0 if they have no word)."""
  lengths = [_letters(w) for t in texts for w in concepts.words(t)]
  return sum(lengths) / max(len(lengths), 1)


def long_words_found(texts, vocabulary: set[str]) -> float:
  """The fraction of the texts' words of at least LONG_WORD_LETTERS letters
  that occur in `vocabulary` (0 if there is none)."""
  long = [w for t in texts for w in concepts.words(t)
          if _letters(w) >= LONG_WORD_LETTERS]
  return sum(w in vocabulary for w in long) / max(len(long), 1)


def score(run, prompts_text: str, seeds, num_samples: int, max_bytes: int,
          temperature: float) -> dict:
  """Every seed's word fraction, distinct-2, letters a word and long words
  found; their means, and the word fraction's range."""
  vocabulary = concepts.training_vocabulary(run.config.data)
  rows = []
  for seed in seeds:
    prompt = speech_prompt(prompts_text, np.random.default_rng(seed))
    texts = run.task.generate_texts(run, prompt, num_samples,
                                    jax.random.key(seed),
                                    temperature=temperature,
                                    max_bytes=max_bytes)
    rows.append(dict(seed=seed, prompt=prompt,
                     word_vocabulary_fraction=concepts.vocabulary_fraction(
                         texts, vocabulary),
                     distinct_2=distinct_2(texts),
                     word_letters=word_letters(texts),
                     long_words_found=long_words_found(texts, vocabulary),
                     sample=texts[0]))
  fractions = [r['word_vocabulary_fraction'] for r in rows]
  mean = lambda key: float(np.mean([r[key] for r in rows]))
  return dict(word_vocabulary_fraction=float(np.mean(fractions)),
              min=min(fractions), max=max(fractions),
              distinct_2=mean('distinct_2'), word_letters=mean('word_letters'),
              reference_word_letters=word_letters([prompts_text]),
              long_words_found=mean('long_words_found'),
              temperature=temperature, samples_per_seed=num_samples,
              max_bytes=max_bytes, seeds=rows)


def samples_temperature(workdir_path: str) -> float:
  config = workdir_lib.Workdir(workdir_path).load_config()
  if not pipeline.is_pipeline(config):
    raise UserError(f'{workdir_path} is not a pipeline: give --temperature')
  return config.samples.temperature


def main(argv):
  del argv
  f = flags.FLAGS
  if f.seeds < 1 or f.samples < 1 or f.max_bytes < 1:
    raise UserError('--seeds, --samples and --max_bytes must be at least 1')
  temperature = (samples_temperature(f.workdir) if f.temperature is None
                 else f.temperature)
  run = runs.load(f.workdir)
  if not run.task.continues_prompt:
    raise UserError(f'{f.workdir} is not a language model: give the workdir '
                    'of a concept or token LM')
  prompts_text = '\n'.join(
      d['text'].decode('utf-8', errors='replace')
      for d in corpus.load_split(run.config.data, f.split))
  seeds = range(f.first_seed, f.first_seed + f.seeds)
  result = score(run, prompts_text, seeds, f.samples, f.max_bytes,
                 temperature)
  for row in result['seeds']:
    print(f"seed {row['seed']}: {row['word_vocabulary_fraction']:.3f} "
          f"(distinct-2 {row['distinct_2']:.3f}, "
          f"{row['word_letters']:.2f} letters a word, "
          f"long words {row['long_words_found']:.3f})\n{row['prompt']}"
          f"{row['sample']}\n", flush=True)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
