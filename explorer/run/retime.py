"""Re-timing later: a stored run whose speed figures failed their checks (explorer.measure.timing_checks: the
machine was busy while it was timed) is timed again from its stored artifacts once the machine is quieter,
and its entry in the cache is rewritten in one step (RunCache.replace_result).

It is the scheduler's low-priority work: the landscape's worker does it at LANDSCAPE priority when it has a
re-time due, the page's own runs first (explorer.run.landscape). A re-time is due when the one-minute load
average is below the cores the explorer may use (`quiet_enough`) and the run's last later re-time is old
enough (waits double each time, `due`); after `MAX_LATER` later re-times a figure stays shown as disturbed,
and the page says the machine was too busy. The RunResult's `timing_quality.later` records every later
re-time: when, the load then, and the figures still disturbed after it.

A run stored untimed (a landscape point measured for its accuracy and sizes first, result.untimed) is timed the
same way, from its stored files: by the landscape once its grid is measured, or at once by whoever asks the cache
for it with its latency (RunCache.get_or_run). That first timing is no re-time and waits for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from explorer.measure.latency import load_average
from explorer.run.cache import RunCache
from explorer.run.result import LATER_RETIMES, RunResult, disturbed_figures, first_timing, needs_retime, untimed

MAX_LATER = LATER_RETIMES  # later re-times of one run before its figures stay disturbed
FIRST_WAIT_S = 60.0  # after the timing that failed; doubled after each later re-time


def quiet_enough(load1: float | None, cores: int) -> bool:
    """Whether the machine is quiet enough to time again: fewer processes wanting a core over the last minute
    than the cores the explorer may use (no load average on this system: yes)."""
    return load1 is None or load1 < cores


def later(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The later re-times a run has had (timing_quality.later), oldest first."""
    return list((result.get("timing_quality") or {}).get("later") or [])


def due(result: Mapping[str, Any], now: float, timed_at: float | None = None) -> bool:
    """Whether stored run `result` should be re-timed at `now` (seconds since the epoch): some figure is
    disturbed, it has had fewer than MAX_LATER later re-times, and the wait since its last timing is over
    (FIRST_WAIT_S, doubled for each later re-time). `timed_at`: when it was first timed, where no later
    re-time says so (the entry's time)."""
    if not needs_retime(result):
        return False
    if untimed(result):  # never timed: now
        return True
    done = later(result)
    last = done[-1]["when"] if done else timed_at
    return last is None or now - last >= FIRST_WAIT_S * 2 ** len(done)


def merge(stored: RunResult, timed: RunResult, when: float, load: list[float]) -> RunResult:
    """The re-timed result, keeping the record of every later re-time (the stored one's and this one); a run
    stored untimed gets its first timing, which is no re-time."""
    if untimed(stored):
        return first_timing(timed)
    q = dict(timed.get("timing_quality") or {})
    q["later"] = [*later(stored), {"when": round(when), "load_average": load, "before": disturbed_figures(stored),
                                   "after": list(q.get("disturbed") or [])}]
    return RunResult(**{**timed, "timing_quality": q})


def retime(cache: RunCache, key: str, *, time_run: Callable[[RunResult, Path], RunResult] | None = None,
           now: float | None = None) -> RunResult | None:
    """Time stored run `key` again from its stored artifacts and write the result into its entry; the new
    RunResult, or None where the entry is gone or needs no re-time. `time_run(result, workdir)` defaults to
    runner.time_run (which holds the quiet slot for the whole timing)."""
    if time_run is None:
        from explorer.run import runner  # torch, only where a re-time really runs

        time_run = runner.time_run
    with cache.lock(key):  # nobody replaces or evicts the entry meanwhile
        stored = cache.get(key)
        if stored is None or not needs_retime(stored):
            return None
        timed = cache.timed_again(key, stored, time_run)  # as scheduler work, inside the quiet slot
        new = merge(stored, timed, time.time() if now is None else now, load_average())
        return cache.replace_result(key, new)


def next_key(keys: list[str], peek: Callable[[str], RunResult | None], now: float, load1: float | None, cores: int,
             timed_at: Callable[[str], float | None] | None = None) -> str | None:
    """The first of `keys` (in their order) whose stored run (`peek(key)`) is due for a re-time now, or None;
    none at all while the machine is busy but a run stored untimed (its first timing cannot wait for a quiet
    machine; where the machine is busy it fails its checks and is re-timed later). `timed_at(key)`: when the
    entry was stored."""
    quiet = quiet_enough(load1, cores)
    for key in keys:
        r = peek(key)
        if r is not None and (quiet or untimed(r)) and due(r, now, timed_at(key) if timed_at else None):
            return key
    return None
