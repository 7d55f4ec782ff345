"""How a run's timing checked itself, in words and in a table (explorer.measure.timing_checks): the load on
the machine while it was timed, the rounds dropped because the timing lost the CPU, and for every speed-up
whether it passed each check. Pure functions of a RunResult; the page draws what they return."""

from __future__ import annotations

import pandas as pd

from explorer.app.service import RunResult, disturbed_figures, speed
from explorer.core import words

CHECK_WORDS = {"agreement": "two ways of taking the ratio disagree", "narrow": "interval too wide",
               "reference": "the baseline ran slower than its own reference timing",
               "cpu": "the timing lost the CPU to other work"}
NO_REFERENCE = "no reference yet (fewer than 3 steady sessions timed here)"
WAIVED = (" (nothing else ran beside it: the machine's own speed, which slows the baseline and the run in each round "
          "alike)")
FIGURE_WORDS = {"speedup": "speed-up against the baseline in the same engine",
              "deployment_gain": "deployment gain against the baseline in PyTorch fp32"}


def load_words(result: RunResult) -> str:
    """'load average 1.52 before timing and 1.87 after (over the last minute; 2 cores)', or ''."""
    load = (result.get("timing_quality") or {}).get("load_average") or {}
    before, after = load.get("before") or [], load.get("after") or []
    if not before:
        return ""
    cores = (result.get("hardware") or {}).get("logical_cores")
    on = f"; {words.count(cores, 'core')}" if cores else ""
    then = f" and {after[0]:.2f} after" if after else ""
    others = [s["others_busy"] for s in (result.get("timing_quality") or {}).get("sessions") or []
              if s.get("others_busy") is not None]
    beside = (f"; other work kept the other cores busy for {max(others):.0%} of the timing rounds at most"
              if others else "") + stolen_words(result)
    return (f"load average {before[0]:.2f} before timing{then} (processes wanting a core, over the last "
            f"minute{on}){beside}")


def stolen_words(result: RunResult) -> str:
    """'; other virtual machines on the same host took 12% of the CPU time...' where the hypervisor took more than
    1% of a timing session's time, or ''."""
    stolen = [s["stolen"] for s in (result.get("timing_quality") or {}).get("sessions") or []
              if s.get("stolen") is not None]
    if not stolen or max(stolen) <= 0.01:
        return ""
    return (f"; other virtual machines on the same host took up to {max(stolen):.0%} of the CPU time while it was "
            "timed (the hypervisor's count: load from outside this machine)")


def busy_words(result: RunResult) -> str | None:
    """Where figures failed their checks after every re-time: that the machine was too busy, in words."""
    bad = disturbed_figures(result)
    if not bad:
        return None
    q = result.get("timing_quality") or {}
    load = load_words(result)
    how = ("too few timing rounds had the CPU to try again at once" if q.get("stopped") else
           f"after {words.count(q.get('retimes', 0), 're-time')}")
    if later := q.get("later"):
        how += f"; still failing after {words.count(len(later), 'later re-time')}, each once the machine looked quieter"
    return (f"The machine was too busy to time this run cleanly: {words.count(len(bad), 'speed figure')} failed "
            f"their checks ({how}) and {'is' if len(bad) == 1 else 'are'} shown as \"timing disturbed\", without a "
            "number" + (f"; {load}" if load else "") + ". Other work on this machine took the CPU while the timing "
            "ran; the figures will be right once it is quieter.")


def timing_rows(result: RunResult) -> pd.DataFrame:
    """One row per speed figure: what is shown, and each check with the figures it used."""
    q = result.get("timing_quality") or {}
    sessions = q.get("sessions") or []
    rows = []
    for figure in ("speedup", "deployment_gain"):
        for engine, per in ((q.get("figures") or {}).get(figure) or {}).items():
            for batch, c in per.items():
                s = sessions[c["session"]] if c.get("session") is not None and c["session"] < len(sessions) else {}
                kept = [v for i, v in enumerate(s.get("cpu_share") or []) if i not in set(s.get("dropped") or [])]
                dev = c.get("reference_deviation")
                rows.append({
                    "figure": f"{FIGURE_WORDS[figure]}, {words.engine(engine, batch)}",
                    "shown as": speed(result, engine, batch, figure).text,
                    "median of round ratios (x)": c["ratio"], "ratio of the medians (x)": c["ratio_of_medians"],
                    "interval high / low": c["spread"], "widest allowed": c["max_spread"],
                    "baseline vs its reference time": NO_REFERENCE if dev is None else f"{dev:+.0%}" + (
                        WAIVED if c.get("reference_waived") else ""),
                    "other cores busy with other work": None if s.get("others_busy") is None else
                    f"{s['others_busy']:.0%}",
                    "rounds kept": s.get("rounds_kept"), "rounds dropped (no CPU)": s.get("rounds_dropped"),
                    "lowest CPU share in a kept round": min(kept) if kept else None,
                    "checks failed": "; ".join(CHECK_WORDS[f] for f in c["failed"]) or "none"})
    return pd.DataFrame(rows)
