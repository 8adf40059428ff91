"""95% intervals on evaluation scores, from the per-row results of one evaluation.

Pass/fail metrics (every row scores 0 or 1) get a Wilson score interval, which stays
inside [0, 1] and is sensible for small samples and scores near 0 or 1. Everything else
(`loss`, and graders that give partial credit) gets a percentile bootstrap over rows:
1000 resamples drawn from a generator seeded by the domain's name, so the same results
always give the same interval. A row of `loss` is its (summed negative log-likelihood,
target tokens), so a resample's score is exp(-sum nll / sum tokens), like the score itself.
An `lm_eval` score that is no mean of rows has the single row [score, stderr] (see
`barctl.evaluate.harness`): its replicates are normal draws around the score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from barctl.errors import BarctlError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
RESAMPLES = 1000
SEED = 0
PASS_FAIL = ("math_answer", "math_verify", "tool_call", "code_tests", "refusal", "lm_eval")

Interval = tuple[float, float]


def wilson(successes: float, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval for `successes` out of `n` trials."""
    if n <= 0:
        raise BarctlError("an interval needs at least one row")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 or n successes the bound is exactly 0 or 1; computed, it misses by a rounding error
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap(metric: str, rows: Sequence[Any], label: str, resamples: int = RESAMPLES) -> np.ndarray:
    """`resamples` scores of `metric` on rows drawn with replacement; the generator is seeded by `label`."""
    if not rows:
        raise BarctlError("an interval needs at least one row")
    generator = np.random.default_rng([SEED, *label.encode()])
    picks = generator.integers(0, len(rows), size=(resamples, len(rows)))
    values = np.asarray(rows, dtype=np.float64)
    if metric == "lm_eval" and values.ndim == 2:
        score, stderr = values[0]
        return generator.normal(score, stderr, resamples)
    if metric == "loss":
        nll, tokens = values[:, 0][picks].sum(axis=1), values[:, 1][picks].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.exp(-nll / tokens)  # nan for a resample without target tokens
    return values[picks].mean(axis=1)


def percentile_interval(replicates: np.ndarray) -> Interval:
    low, high = np.nanpercentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def score_interval(metric: str, rows: Sequence[Any], label: str) -> Interval:
    """The 95% interval of a domain's score: Wilson when every row passed or failed, else the bootstrap."""
    if metric in PASS_FAIL and all(value in (0, 1) for value in rows):
        return wilson(sum(rows), len(rows))
    return percentile_interval(bootstrap(metric, rows, label))


def average_interval(domains: dict[str, tuple[str, Sequence[Any]]]) -> Interval:
    """The 95% interval of the mean score over domains (name -> (metric, rows)), each domain resampled on its own."""
    replicates = [bootstrap(metric, rows, name) for name, (metric, rows) in domains.items()]
    return percentile_interval(np.mean(replicates, axis=0))
