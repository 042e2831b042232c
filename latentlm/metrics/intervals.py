"""Brier-n and BrierLM from per-position terms, with bootstrap intervals for
one run and for the paired difference of two runs on the same positions.

Every BrierLM evaluation keeps its per-position terms (P positions x
MAX_NGRAM n-gram orders, each term 1[x1=y] + 1[x2=y] - 1[x1=x2]). The
intervals resample positions (a percentile bootstrap): positions are the
independent units, and the n-gram orders of one position are not independent
of each other, so they are resampled together. Two runs scored on the same
positions are compared by resampling the *same* positions for both, which
cancels the variance that comes from which positions were drawn: a paired
interval is much narrower than two separate intervals suggest, and it is
the only honest way to rank two models that are close.
"""

import numpy as np

LEVEL = 0.95
NUM_RESAMPLES = 1000


def brier_lm(brier_N: np.ndarray) -> np.ndarray:
  """100 x the geometric mean over the last axis; 0 if any Brier-n <= 0
  (a geometric mean is undefined for non-positive scores, and a model that
  scores below 0 on some n is worse than useless there)."""
  brier_N = np.asarray(brier_N, np.float64)
  positive = np.all(brier_N > 0, axis=-1)
  log_mean = np.mean(np.log(np.where(brier_N > 0, brier_N, 1.0)), axis=-1)
  return np.where(positive, 100 * np.exp(log_mean), 0.0)


def _names(num_orders: int) -> list[str]:
  return [f'brier_{n + 1}' for n in range(num_orders)] + ['brier_lm']


def _estimates_RxM(terms_PxN: np.ndarray, picks_RxP: np.ndarray):
  """Brier-1..N and BrierLM of each resample (R x N+1)."""
  brier_RxN = terms_PxN[picks_RxP].mean(1)
  return np.concatenate([brier_RxN, brier_lm(brier_RxN)[:, None]], axis=1)


def _picks(num_positions: int, seed: int, num_resamples: int):
  if num_positions == 0:
    raise ValueError('no positions to resample')
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_positions, (num_resamples, num_positions))


def _interval_M(values_RxM: np.ndarray, level: float):
  tail = 100 * (1 - level) / 2
  return (np.percentile(values_RxM, tail, axis=0),
          np.percentile(values_RxM, 100 - tail, axis=0))


def summarize(terms_PxN, seed: int = 0, num_resamples: int = NUM_RESAMPLES,
              level: float = LEVEL) -> dict:
  """brier_1..N, brier_lm, each with `_ci_low` and `_ci_high`, and
  num_positions."""
  terms_PxN = np.asarray(terms_PxN, np.float64)
  picks_RxP = _picks(len(terms_PxN), seed, num_resamples)
  brier_N = terms_PxN.mean(0)
  point_M = np.append(brier_N, brier_lm(brier_N))
  low_M, high_M = _interval_M(_estimates_RxM(terms_PxN, picks_RxP), level)
  metrics = {}
  for name, point, low, high in zip(_names(len(brier_N)), point_M, low_M,
                                    high_M):
    metrics.update({name: float(point), f'{name}_ci_low': float(low),
                    f'{name}_ci_high': float(high)})
  metrics['num_positions'] = len(terms_PxN)
  return metrics


def paired_difference(terms_a_PxN, terms_b_PxN, seed: int = 0,
                      num_resamples: int = NUM_RESAMPLES,
                      level: float = LEVEL) -> dict:
  """{metric: (a - b, ci_low, ci_high, resolved)} over the same positions;
  `resolved` is False when the interval holds 0 (no ranking then)."""
  terms_a_PxN = np.asarray(terms_a_PxN, np.float64)
  terms_b_PxN = np.asarray(terms_b_PxN, np.float64)
  if terms_a_PxN.shape != terms_b_PxN.shape:
    raise ValueError(f'paired terms differ in shape: {terms_a_PxN.shape} '
                     f'and {terms_b_PxN.shape}')
  picks_RxP = _picks(len(terms_a_PxN), seed, num_resamples)
  diff_RxM = (_estimates_RxM(terms_a_PxN, picks_RxP) -
              _estimates_RxM(terms_b_PxN, picks_RxP))
  brier_a_N, brier_b_N = terms_a_PxN.mean(0), terms_b_PxN.mean(0)
  point_M = (np.append(brier_a_N, brier_lm(brier_a_N)) -
             np.append(brier_b_N, brier_lm(brier_b_N)))
  low_M, high_M = _interval_M(diff_RxM, level)
  return {name: (float(point), float(low), float(high),
                 bool(low > 0 or high < 0))
          for name, point, low, high in zip(_names(len(brier_a_N)), point_M,
                                            low_M, high_M)}
