"""Reconstruction accuracy of the concept autoencoder for each K and segmentation.

  python launch/ae_table.py --out=/tmp/ae_table [--prose=FILE] [--k=4,8,16]

Trains configs/autoencoder.py:K=K,segment=KIND at its default budget, one
run after another (in parallel they would share the CPU and distort the
times), then evaluates each on the Shakespeare test plays and on the prose
file, clean and under noise sigma=0.3 on z. Prints a markdown table; each
run's row is kept in OUT/K{K}-{KIND}/row.json, so a rerun skips finished runs.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ('fixed', 'words', 'sentences')
COLUMNS = ('token_acc', 'token_acc_noise_0.3', 'chunk_exact')


def _run(*args) -> str:
  """`python -m latentlm.ARGS`; its stdout, or exit with its stderr."""
  result = subprocess.run([sys.executable, '-m', *args], cwd=REPO,
                          capture_output=True, text=True)
  if result.returncode:
    sys.exit(f'{" ".join(args)} failed:\n{result.stderr[-3000:]}')
  return result.stdout


def _last_json(stdout: str) -> dict:
  return json.loads(stdout.strip().splitlines()[-1])


def table_row(out: str, K: int, kind: str, prose: str) -> dict:
  """Trains and evaluates one autoencoder, unless its row exists."""
  workdir = os.path.join(out, f'K{K}-{kind}')
  row_path = os.path.join(workdir, 'row.json')
  if os.path.exists(row_path):
    with open(row_path) as f:
      return json.load(f)
  start, load = time.perf_counter(), os.getloadavg()[0]
  _run('latentlm.train', f'--config=configs/autoencoder.py:K={K},segment={kind}',
       f'--workdir={workdir}', '--config.train.progress_bar=False')
  row = dict(K=K, segment=kind, train_s=time.perf_counter() - start,
             load_before=load, load_after=os.getloadavg()[0])
  for name, flag in (('test', '--split=test'), ('prose', f'--text={prose}')):
    metrics = _last_json(_run('latentlm.evaluate', f'--workdir={workdir}',
                              flag))
    row.update({f'{name}/{c}': metrics[c] for c in COLUMNS})
  with open(row_path, 'w') as f:
    json.dump(row, f)
  return row


def markdown(rows) -> str:
  header = ('| K | segment | test acc | test acc σ=0.3 | test exact | '
            'prose acc | prose acc σ=0.3 | prose exact | train s | load |')
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for r in rows:
    cells = [str(r['K']), r['segment']]
    cells += [f"{100 * r[f'{split}/{c}']:.3f}%" for split in ('test', 'prose')
              for c in COLUMNS]
    cells += [f"{r['train_s']:.0f}",
              f"{r['load_before']:.1f}-{r['load_after']:.1f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='Directory of the runs.')
  parser.add_argument('--prose', default='/usr/share/common-licenses/GPL-3',
                      help='Text never seen in training (default: the GPL-3 '
                      'license, legal English of 2007).')
  parser.add_argument('--k', default='4,8,16', help='Chunk lengths K.')
  args = parser.parse_args()
  rows = []
  for K, kind in itertools.product(map(int, args.k.split(',')), KINDS):
    rows.append(table_row(args.out, K, kind, args.prose))
    print(json.dumps(rows[-1]), flush=True)
  print(markdown(rows))


if __name__ == '__main__':
  main()
