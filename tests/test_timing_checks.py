"""The checks a speed-up passes before it is shown, on planted per-round times (no real timing)."""

import numpy as np
import pytest

from explorer.measure.timing_checks import (
    MIN_CPU_SHARE,
    check_speedup,
    cpu_share,
    max_spread,
    reference_agrees,
    reference_interval,
    round_kept,
)

CLEAN_BASE = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0, 10.2, 9.8, 10.1, 9.9]
CLEAN_RUN = [2.0, 2.02, 1.98, 2.01, 1.99, 2.0, 2.03, 1.97, 2.0, 2.01]
REF = {"median_ms": 10.0, "ci_ms": [9.9, 10.1], "history": [{"median_ms": m} for m in (9.9, 10.0, 10.1)]}


def test_clean_rounds_are_accepted():
    c = check_speedup(CLEAN_BASE, CLEAN_RUN, batch=256, reference=REF)
    assert c["accepted"] and c["failed"] == []
    assert c["ratio"] == pytest.approx(5.0, rel=0.02) and c["spread"] <= 1.3
    assert all(c["checks"].values())


def test_a_baseline_slowed_in_some_rounds_is_flagged():
    """The 43.85x of issue 22: in four of ten rounds something of ours ran beside the baseline."""
    base = [10.0] * 6 + [40.0] * 4
    c = check_speedup(base, CLEAN_RUN, batch=256, reference=REF)
    assert not c["accepted"] and "narrow" in c["failed"]


def test_a_run_slowed_in_a_few_rounds_breaks_the_agreement_or_the_width():
    run = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 6.0, 6.0, 6.0]
    c = check_speedup(CLEAN_BASE, run, batch=256, reference=REF)
    assert not c["accepted"] and {"narrow"} <= set(c["failed"])


def test_ratio_of_medians_far_from_the_median_ratio_fails_agreement():
    # paired rounds whose ratios all sit near 2 while the medians of each side, taken apart, give 1.25:
    # the pairing is broken (the sides were not slowed together)
    base = [10, 10, 10, 10, 10, 20, 20, 20, 20, 20]
    run = [5, 5, 5, 5, 5, 10, 10, 10, 10, 10.0]
    run = run[5:] + run[:5]  # slow baseline rounds paired with fast run rounds and the reverse
    c = check_speedup(base, run, batch=256)
    assert c["ratio_of_medians"] == pytest.approx(2.0)
    assert not c["accepted"]


def test_a_baseline_slowed_for_the_whole_session_fails_the_reference_check():
    base = [v * 1.4 for v in CLEAN_BASE]  # narrow, agreeing, and 40% off the baseline's own timing
    c = check_speedup(base, CLEAN_RUN, batch=256, reference=REF)
    assert c["failed"] == ["reference"] and c["reference_deviation"] == pytest.approx(0.4, abs=0.02)
    assert check_speedup(base, CLEAN_RUN, batch=256, reference=None)["checks"]["reference"] is None
    # the machine says other work kept the other cores busy beside the rounds: still fails
    assert check_speedup(base, CLEAN_RUN, batch=256, reference=REF, others_busy=0.6)["failed"] == ["reference"]


def test_a_slower_baseline_with_nothing_beside_it_is_the_machines_speed():
    """With the other cores idle during the rounds (the machine's own count) a slower baseline is the shared
    machine's own speed, which hits both sides of each round alike: the ratio stands, and the record says why."""
    base = [v * 1.4 for v in CLEAN_BASE]
    c = check_speedup(base, CLEAN_RUN, batch=256, reference=REF, others_busy=0.02)
    assert c["accepted"] and c["reference_waived"] and c["reference_deviation"] == pytest.approx(0.4, abs=0.02)
    assert not check_speedup(CLEAN_BASE, CLEAN_RUN, batch=256, reference=REF, others_busy=0.02)["reference_waived"]
    # nothing waives the other checks, and no reference stays no reference
    slowed = [10.0] * 6 + [40.0] * 4
    assert "narrow" in check_speedup(slowed, CLEAN_RUN, batch=256, reference=REF, others_busy=0.0)["failed"]
    assert check_speedup(base, CLEAN_RUN, batch=256, others_busy=0.0)["checks"]["reference"] is None


def test_reference_agrees_within_its_interval_or_fifteen_percent_or_faster():
    assert reference_agrees(11.4, REF)[0] and reference_agrees(8.6, REF)[0]
    assert reference_agrees(11.6, REF)[0] is False
    # faster than the reference beyond the tolerance: the reference was the slowed one (it is replaced)
    assert reference_agrees(6.0, REF) == (True, -0.4)
    assert reference_agrees(30, {**REF, "median_ms": 10, "ci_ms": [5, 35]})[0]  # inside its (wide) interval
    assert reference_agrees(10, None) == (None, None)
    # fewer than three steady sessions: how far this machine's sessions spread is unknown, the check is not made
    assert reference_agrees(30, {**REF, "history": REF["history"][:2]}) == (None, None)
    assert reference_agrees(30, {"median_ms": 10, "ci_ms": [9.9, 10.1]}) == (None, None)  # one, no history


def test_the_reference_interval_covers_the_next_session_as_often_as_it_says():
    """The 95% prediction interval of one more session's median: on sessions drawn as this machine's are (one
    baseline's quiet median moved 7.4 to 14 ms between sessions), the next one falls inside it about 95% of the
    time, for a short record and a full one; and a baseline at twice its median is outside a steady record's."""
    rng = np.random.default_rng(0)
    for n in (3, 15):
        inside = 0
        for _ in range(2000):
            s = np.exp(rng.normal(np.log(10), 0.2, n + 1))
            lo, hi = reference_interval(list(s[:n]))
            inside += lo <= s[n] <= hi
        assert 0.93 <= inside / 2000 <= 0.97
    assert reference_interval([10.0, 10.0]) is None and reference_interval([]) is None
    steady = [10.0, 10.3, 9.8, 10.1, 9.9]
    lo, hi = reference_interval(steady)
    assert lo < 10 < hi < 11.5 and not reference_agrees(20.0, {"median_ms": 10.0, "ci_ms": [lo, hi],
                                                              "history": steady})[0]


def test_a_session_without_the_cpu_is_flagged():
    c = check_speedup(CLEAN_BASE, CLEAN_RUN, batch=256, reference=REF, cpu_ok=False)
    assert not c["accepted"] and c["failed"] == ["cpu"]


def test_cpu_share_per_thread_and_the_bound():
    assert cpu_share(0.5, 1.0) == 0.5 and cpu_share(1.8, 1.0, threads=2) == 0.9
    assert round_kept(MIN_CPU_SHARE) and not round_kept(0.89)
    assert cpu_share(0.0, 0.0) == 1.0


def test_spread_bound_depends_on_the_batch():
    assert max_spread(256) == 1.3 and max_spread(1) == 1.5
    wobbly = [2.0, 2.0, 1.6, 2.4, 1.65, 2.35, 2.0, 1.62, 2.38, 2.0]
    assert "narrow" in check_speedup(CLEAN_BASE, wobbly, batch=256)["failed"]
    assert check_speedup(CLEAN_BASE, wobbly, batch=1)["checks"]["narrow"]


def test_pooled_rounds_are_judged_for_agreement_in_the_latest_session():
    """A re-time's rounds are pooled with the first session's (speedup.pool_rounds), and the machine's speed moved
    between them: the median of the pooled rounds lands in the gap between the two speeds, on one slow round of the
    first session, and the ratio of those medians (2.17) left the narrow interval of 20 steady rounds at 2.0. The
    latest session, judged on its own rounds, agrees; a latest session whose sides were slowed apart does not."""
    base = [10.0] * 9 + [11.9] + [12.8] * 10
    run = [5.0] * 10 + [6.4] * 10
    assert "agreement" in check_speedup(base, run, batch=256)["failed"]
    c = check_speedup(base, run, batch=256, sessions=[10, 10])
    assert c["accepted"] and c["ratio_of_medians"] == pytest.approx(2.0) and c["rounds"] == 20
    latest_base, latest_run = [10.0] * 4 + [11.9] + [12.8] * 5, [5.0] * 5 + [6.4] * 5  # the gap within one session
    assert "agreement" in check_speedup([10.0] * 10 + latest_base, [5.0] * 10 + latest_run, batch=256,
                                        sessions=[10, 10])["failed"]
