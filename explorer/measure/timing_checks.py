"""Whether a timed speed-up may be shown: the checks every ratio passes before a page, a table or a report
carries it (docs/DESIGN "Honest measurement"). Pure functions of the per-round figures a timing session
keeps, so they are tested with planted numbers.

A speed-up is the median of per-round ratios (baseline / run, both timed in the same interleaved round,
in the same engine and batch). It is accepted only when all four hold:

- agreement: the ratio of the two medians lies inside the interval of the median ratio. A few rounds in
  which one side was slowed pull the two apart;
- narrow: the interval's high end over its low end is at most `max_spread(batch)`: 1.3 for batches of 32
  and more, 1.5 below, where one call takes well under a millisecond and a timer interrupt or a cache miss
  is a larger share of it;
- reference: the baseline's median in these rounds is within its own reference timing on this machine
  (inside that timing's interval, within 15% of its median, or faster). A baseline slowed for the whole
  session (something running beside it) gives narrow, agreeing ratios that may all be wrong; this catches it.
  The reference is the record of the baseline's recent steady sessions on this machine (explorer.run.timing):
  their median, and as its interval the 95% prediction interval of one more session's median from them
  (`reference_interval`). On a shared virtual machine the same model's quiet time moves between sessions by
  more than one session's interval (seen here: 7.4 to 14 ms for one baseline, its speed-ups steady at 1.0),
  so the interval is how far the sessions recorded here actually spread; with fewer than
  `MIN_REFERENCE_SESSIONS` of them that spread is unknown and the check is not made (said so). Only slower
  fails: other work only slows a timing. And only where other work ran beside the rounds: the machine's own
  count of busy CPU time (`others_busy`, the other cores' share kept busy by anything but the timing) says
  whether it did. A baseline slower than its reference with the other cores idle is the machine's own speed:
  on this shared virtual machine the same call moves between two speeds (0.11 and 0.22 ms for the digits CNN
  at batch 1) every second or so with nothing else running, which the other machines' tenants cause and no
  check inside it sees; it hits both sides of each interleaved round alike, and the ratio stands. Where the
  system does not say (not Linux), the check is made as before;
- cpu: every kept round had the CPU: CPU time over wall time of the timed calls at least 0.9 (per thread
  used). A round below that was preempted, by our own work or another program, and is dropped and replaced
  (a bounded number of times); a session that could not keep enough rounds fails this check.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from explorer.core.stats import ratio_of_medians

MIN_CPU_SHARE = 0.9  # CPU time / (wall time x threads) of a round's timed calls
REFERENCE_TOLERANCE = 0.15  # the baseline's in-round median against its reference timing
MIN_REFERENCE_SESSIONS = 3  # steady sessions a reference needs before it can judge a session
REFERENCE_LEVEL = 0.95  # of the prediction interval of one more session's median
OTHERS_QUIET = 0.2  # the other cores' busy share below which nothing ran beside a timing (quiet machine: 1-4%)
SPREAD_LARGE, SPREAD_SMALL, SMALL_BATCH = 1.3, 1.5, 32
CHECKS = {"agreement": "the median of per-round ratios and the ratio of medians agree",
          "narrow": "the 95% interval is narrow enough to mean something",
          "reference": "the baseline's time in these rounds matches its own reference timing on this machine",
          "cpu": "the timing had the CPU in every kept round (no other work took it)"}


def max_spread(batch: int) -> float:
    """The widest interval (high / low) a speed-up at this batch size may have and still be shown."""
    return SPREAD_LARGE if batch >= SMALL_BATCH else SPREAD_SMALL


def cpu_share(cpu_s: float, wall_s: float, threads: int = 1) -> float:
    """The share of the wall time the timed calls spent on the CPU, per thread used (1.0: never preempted)."""
    if wall_s <= 0:
        return 1.0
    return cpu_s / (wall_s * max(threads, 1))


def round_kept(share: float) -> bool:
    return share >= MIN_CPU_SHARE


def reference_interval(medians: Sequence[float], level: float = REFERENCE_LEVEL) -> list[float] | None:
    """The `level` prediction interval of one more steady session's median, from the medians of the steady
    sessions recorded (Student's t on their logarithms: a time is positive and its spread proportional to
    it); None with fewer than MIN_REFERENCE_SESSIONS of them."""
    if len(medians) < MIN_REFERENCE_SESSIONS or min(medians) <= 0:
        return None
    from scipy import stats

    logs = np.log(np.asarray(medians, float))
    n = len(logs)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * logs.std(ddof=1) * np.sqrt(1 + 1 / n))
    centre = float(logs.mean())
    return [round(float(np.exp(centre - half)), 5), round(float(np.exp(centre + half)), 5)]


def reference_agrees(in_round_ms: float, reference: dict[str, Any] | None) -> tuple[bool | None, float | None]:
    """(agrees, relative deviation) of the baseline's in-round median from its reference timing
    {"median_ms", "ci_ms", "history"}; (None, None) where there is no reference yet, or one recorded from
    fewer than MIN_REFERENCE_SESSIONS steady sessions (a record without its history is one session). Agrees:
    inside the reference's interval, within the tolerance of its median, or faster (other work only slows a
    timing: a baseline faster than its reference shows the machine quieter than when it was recorded)."""
    if not reference or not reference.get("median_ms"):
        return None, None
    if len(reference.get("history") or [None]) < MIN_REFERENCE_SESSIONS:
        return None, None
    ref = float(reference["median_ms"])
    dev = in_round_ms / ref - 1
    hi = (reference.get("ci_ms") or (ref, ref))[1]  # recorded before prediction intervals: their range
    return bool(in_round_ms <= hi or dev <= REFERENCE_TOLERANCE), round(dev, 4)


def ran_beside(others_busy: float | None) -> bool:
    """Whether the machine says other work kept the other cores busy beside a timing (False: it does not say)."""
    return others_busy is not None and others_busy > OTHERS_QUIET


def others_quiet(others_busy: float | None) -> bool:
    """Whether the machine says nothing else kept the other cores busy beside a timing (False: it does not say)."""
    return others_busy is not None and others_busy <= OTHERS_QUIET


def check_speedup(baseline_rounds: Sequence[float], run_rounds: Sequence[float], *, batch: int,
                  reference: dict[str, Any] | None = None, cpu_ok: bool = True,
                  sessions: Sequence[int] | None = None, others_busy: float | None = None) -> dict[str, Any]:
    """A speed-up and its checks from the per-round medians of the baseline and the run (kept rounds only).
    `reference`: the baseline's own reference timing in this engine and batch ({"median_ms", "ci_ms"}), or
    None where there is none yet (the check is then skipped, and said so); `cpu_ok`: whether the session
    kept enough rounds that had the CPU. Returns the ratio, its interval and round count, the figures each
    check used, `checks` (name -> True, False, or None where it could not be made), `failed` (names) and
    `accepted`. `sessions`: the round counts of the sessions the rounds were pooled from (speedup.pool_rounds), in
    order: the figure and its interval are the pooled rounds', and agreement is judged in the latest session alone,
    on its own rounds and interval. Across sessions the machine's speed moves (one baseline 7.4 to 14 ms), so the
    median of rounds pooled from two speeds lands in the gap between them, and the pooled interval, narrow from 20
    or 30 rounds, would flag that gap instead of a session whose sides were slowed apart. `others_busy`: the
    other cores' busiest share over those sessions (latency.others_busy; None where the system does not say): a
    baseline slower than its reference fails only where it is above OTHERS_QUIET or unknown."""
    base, run = np.asarray(baseline_rounds, float), np.asarray(run_rounds, float)
    sp = ratio_of_medians(base, run)
    lo, hi = sp["ci"]
    last = sessions[-1] if sessions and sum(sessions) == len(base) and 0 < sessions[-1] else len(base)
    own = ratio_of_medians(base[-last:], run[-last:])
    rom = statistics.median(base[-last:]) / statistics.median(run[-last:])
    spread = hi / lo if lo > 0 else float("inf")
    in_round = float(statistics.median(base))
    ref_ok, dev = reference_agrees(in_round, reference)
    waived = ref_ok is False and others_quiet(others_busy)  # slower, with nothing beside it: the machine's speed
    agrees = bool(own["ci"][0] <= rom <= own["ci"][1])
    checks = {"agreement": agrees, "narrow": bool(spread <= max_spread(batch)), "reference": True if waived else ref_ok,
              "cpu": bool(cpu_ok)}
    failed = [k for k, v in checks.items() if v is False]
    return {**sp, "ratio_of_medians": round(rom, 4), "spread": round(spread, 4), "max_spread": max_spread(batch),
            "baseline_in_round_ms": round(in_round, 5),
            "baseline_reference_ms": None if not reference else reference.get("median_ms"),
            "reference_deviation": dev, "reference_waived": waived, "others_busy": others_busy, "checks": checks,
            "failed": failed, "accepted": not failed}

