"""Intervals and tests against hand-computed cases (the textbook formulas written out here, not scipy)."""

import math

import numpy as np
import pytest

from explorer.core import stats

Z = 1.959963984540054  # the 97.5% normal quantile


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize("k,n", [(8, 10), (0, 10), (10, 10), (353, 359), (9_187, 10_000)])
def test_wilson_matches_the_formula(k, n):
    assert stats.wilson(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    assert stats.wilson(8, 10) == pytest.approx((49.016, 94.332), abs=1e-3)  # the textbook 8/10 case


def test_exact_mcnemar_by_hand():
    # b=1 of 7 discordant: 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128
    assert stats.mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert stats.mcnemar_exact(0, 8) == pytest.approx(2 / 256)
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0


def newcombe_by_hand(a, b, c, d):
    """Newcombe (1998) method 10, first = run (a + c right), second = baseline (a + b right)."""
    n = a + b + c + d
    p1, p2 = (a + c) / n, (a + b) / n
    l1, u1 = (v / 100 for v in wilson_by_hand(a + c, n))
    l2, u2 = (v / 100 for v in wilson_by_hand(a + b, n))
    phi = (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    dl = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    du = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return 100 * (p1 - p2 - dl), 100 * (p1 - p2 + du)


@pytest.mark.parametrize("counts", [(149, 204, 3, 3), (340, 7, 4, 8), (9_000, 120, 80, 800), (50, 1, 1, 5)])
def test_newcombe_paired_interval_matches_the_formula(counts):
    lo, hi = stats.newcombe_paired(*counts)
    assert (lo, hi) == pytest.approx(newcombe_by_hand(*counts), abs=1e-9)
    a, b, c, d = counts
    assert lo <= 100 * (c - b) / sum(counts) <= hi


def test_the_baselines_own_comparison_is_zero_zero_one():
    y = np.array([0, 1, 2, 3, 1, 2] * 20)
    pred = y.copy()
    pred[::7] = 0
    vs = stats.vs_baseline(pred, pred, y)
    assert (vs["baseline_only"], vs["run_only"], vs["p_value"]) == (0, 0, 1.0)
    assert vs["delta_ci"][0] < 0 < vs["delta_ci"][1] and not vs["significant"]


def test_paired_counts_and_a_real_change():
    y = np.zeros(100, dtype=int)
    base = np.zeros(100, dtype=int)
    run = base.copy()
    run[:20] = 1  # 20 images lost, none gained
    vs = stats.vs_baseline(base, run, y)
    assert (vs["both_right"], vs["baseline_only"], vs["run_only"], vs["both_wrong"]) == (80, 20, 0, 0)
    assert vs["significant"] and vs["p_value"] == pytest.approx(2 * 0.5**20, rel=1e-5) and vs["delta_ci"][1] < 0


def test_median_interval_uses_the_right_order_statistics():
    x = list(range(1, 10))  # n = 9: ranks 2 and 8 (P(B <= 1) = 10/512 <= 0.025 < P(B <= 2))
    assert stats.median_ci(x) == (2.0, 8.0)
    assert stats.median_ci(list(range(1, 6))) == (1.0, 5.0)  # n = 5: too few, the extremes
    many = np.arange(1, 101)  # n = 100: ranks 40 and 61
    assert stats.median_ci(many) == (40.0, 61.0)


def test_ratio_of_medians_pairs_rounds():
    ref = [10.0, 12.0, 30.0, 11.0, 10.5, 12.5, 11.5, 10.2, 10.8]  # a load spike in round 3 hits both
    run = [5.0, 6.0, 15.0, 5.5, 5.25, 6.25, 5.75, 5.1, 5.4]
    r = stats.ratio_of_medians(ref, run)
    assert r["ratio"] == 2.0 and r["ci"] == [2.0, 2.0] and r["rounds"] == 9
    assert not stats.measurable([0.9, 1.2], 1.0) and stats.measurable([1.1, 1.3], 1.0)
    with pytest.raises(ValueError, match="pair up"):
        stats.ratio_of_medians([1.0], [1.0, 2.0])
