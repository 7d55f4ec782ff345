"""Uncertainty for every figure, from counts and samples the runs already keep (pure functions).

- An accuracy over n test images: Wilson's score interval ("Probable inference, the law of succession,
  and statistical inference", 1927), through scipy.stats.binomtest.
- A run against its baseline on the same images is a paired comparison: the images only the baseline
  gets right (b) and only the run gets right (c) decide it. The exact McNemar test is the binomial test
  of b out of b + c at one half; the interval for the difference in top-1 is Newcombe's method 10
  ("Improved confidence intervals for the difference between binomial proportions based on paired
  data", Statistics in Medicine, 1998): Wilson intervals of the two accuracies, joined with the
  correlation of the paired outcomes.
- A median of timings: the distribution-free interval from order statistics.
- A speed-up: the median of per-round ratios, each round timing the baseline and the run back to back
  (interleaved), so a change in the machine's load hits both; its interval from order statistics too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from explorer.core.errors import check_range
from explorer.core.figures import PairedComparison

CONFIDENCE = 0.95


def _check(confidence: float) -> None:
    check_range("confidence", confidence, 0.5, 0.999)


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson interval for k successes out of n, in percent."""
    _check(confidence)
    if n <= 0:
        raise ValueError(f"n={n} must be a positive number of test images")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return 100 * float(ci.low), 100 * float(ci.high)


def paired_counts(baseline_right: np.ndarray, run_right: np.ndarray) -> dict[str, int]:
    """The 2x2 table of a paired comparison: both right, baseline only, run only, both wrong."""
    base, run = np.asarray(baseline_right, bool), np.asarray(run_right, bool)
    if base.shape != run.shape:
        raise ValueError(f"paired predictions must cover the same images: {base.shape} vs {run.shape}")
    return {"both_right": int((base & run).sum()), "baseline_only": int((base & ~run).sum()),
            "run_only": int((~base & run).sum()), "both_wrong": int((~base & ~run).sum())}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b of b + c discordant images at one half (1 when there are none)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(b), int(b + c), 0.5).pvalue)


def newcombe_paired(both_right: int, baseline_only: int, run_only: int, both_wrong: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's method 10 interval for top-1 of the run minus top-1 of the baseline, in points."""
    a, b, c, d = both_right, baseline_only, run_only, both_wrong
    n = a + b + c + d
    if n == 0:
        raise ValueError("a paired comparison needs at least one test image")
    p1, p2 = (a + c) / n, (a + b) / n  # the run's accuracy, the baseline's
    l1, u1 = (v / 100 for v in wilson(a + c, n, confidence))
    l2, u2 = (v / 100 for v in wilson(a + b, n, confidence))
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom else 0.0
    theta = p1 - p2
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    eps = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return 100 * max(theta - delta, -1.0), 100 * min(theta + eps, 1.0)


def vs_baseline(baseline_pred: np.ndarray, run_pred: np.ndarray, labels: np.ndarray,
                confidence: float = CONFIDENCE) -> PairedComparison:
    """The run against its baseline on the same test images: the 2x2 counts, the paired interval for the
    top-1 difference in points, and the exact McNemar p-value."""
    y = np.asarray(labels)
    t = paired_counts(np.asarray(baseline_pred) == y, np.asarray(run_pred) == y)
    return from_counts(t, confidence)


def from_counts(t: dict[str, int], confidence: float = CONFIDENCE) -> PairedComparison:
    p = mcnemar_exact(t["baseline_only"], t["run_only"])
    lo, hi = newcombe_paired(t["both_right"], t["baseline_only"], t["run_only"], t["both_wrong"], confidence)
    return PairedComparison(both_right=t["both_right"], baseline_only=t["baseline_only"], run_only=t["run_only"],
                            both_wrong=t["both_wrong"], n=sum(t.values()), delta_ci=[round(lo, 4), round(hi, 4)],
                            p_value=float(f"{p:.6g}"), significant=bool(p < 1 - confidence), confidence=confidence,
                            method="exact McNemar; Newcombe's paired interval (method 10)")


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval for the median: the order statistics j and n - j + 1, where j is the
    largest rank with P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2. With few samples it widens to
    the extremes."""
    _check(confidence)
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        raise ValueError("a median interval needs at least one sample")
    j = int(stats.binom.ppf((1 - confidence) / 2, n, 0.5))  # smallest j with P(B <= j) >= alpha / 2
    j = max(j, 1)
    return float(x[j - 1]), float(x[n - j])


def ratio_of_medians(reference_rounds: Sequence[float] | np.ndarray, run_rounds: Sequence[float] | np.ndarray,
                     confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Speed-up of a run over a reference timed in the same interleaved rounds: the median of the
    per-round ratios (reference / run; above 1 the run is faster) and its interval."""
    ref, run = np.asarray(reference_rounds, float), np.asarray(run_rounds, float)
    if ref.shape != run.shape or ref.size == 0:
        raise ValueError(f"interleaved rounds must pair up: {ref.shape} vs {run.shape}")
    ratios = ref / run
    lo, hi = median_ci(ratios, confidence)
    return {"ratio": round(float(np.median(ratios)), 4), "ci": [round(lo, 4), round(hi, 4)],
            "rounds": int(ratios.size)}


def measurable(ci: Sequence[float], neutral: float) -> bool:
    """Whether an interval excludes the value of no change (1 for a ratio, 0 for a difference)."""
    return not (ci[0] <= neutral <= ci[1])
