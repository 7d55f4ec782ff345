"""The explorer's environment settings, each parsed and checked in one place.

Every consumer reads a setting through `get`, and the CLI and the page call `check_all` at start-up, so a
bad value (`EXPLORER_THREADS=abc`) is one line naming the variable, the value and what is allowed, before
any work starts, rather than Python's own text seconds into a run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    default: float
    what: str
    integer: bool = False
    minimum: float = 0.0
    inclusive: bool = False  # minimum itself allowed (a cap of 0 MB empties the cache)
    unit: str = ""
    maximum: float | None = None

    def allowed(self) -> str:
        unit = f" of {self.unit}" if self.unit else ""
        if self.integer and self.maximum is not None:
            return f"{self.minimum:g} or {self.maximum:g}" if self.maximum - self.minimum == 1 else \
                f"a whole number from {self.minimum:g} to {self.maximum:g}"
        if self.integer:
            return f"a whole number{unit} >= {max(self.minimum, 1):g}"
        if self.inclusive:
            return f"a number{unit} >= {self.minimum:g}"
        return f"a positive number{unit}"


SETTINGS: dict[str, Setting] = {
    "EXPLORER_THREADS": Setting(1, "threads for latency timing", integer=True, unit="threads"),
    "EXPLORER_TRAIN_THREADS": Setting(1, "torch threads for compression, fine-tuning and accuracy", integer=True,
                                      unit="threads"),
    "EXPLORER_EVAL_WORKERS": Setting(2, "threads that score test images side by side (any count gives the same "
                                        "figures)", integer=True, unit="threads"),
    "EXPLORER_LATENCY_BUDGET_S": Setting(0.3, "seconds of timing per engine and batch", unit="seconds"),
    "EXPLORER_CACHE_MAX_MB": Setting(2048, "run cache size cap", minimum=0, inclusive=True, unit="megabytes"),
    "EXPLORER_MAX_UPLOAD_MB": Setting(500, "upload cap", unit="megabytes"),
    "EXPLORER_ZIP_MAX_MB": Setting(1024, "bytes a zip may expand to", unit="megabytes"),
    "EXPLORER_ZIP_MAX_FILES": Setting(100_000, "entries (files and folders) a zip may hold", integer=True),
    "EXPLORER_ZIP_MAX_RATIO": Setting(200, "how many times a zip may expand, per entry and overall"),
    "EXPLORER_LANDSCAPE": Setting(1, "1 measures an open model's default grid in the background, 0 does not",
                                  integer=True, minimum=0, inclusive=True, maximum=1),
    "EXPLORER_LANDSCAPE_IDLE_S": Setting(120, "seconds a landscape goes on after the last page looked at its model",
                                         unit="seconds"),
    # the scheduler (explorer.run.scheduler)
    "EXPLORER_CORES": Setting(0, "cores the explorer's work may use (0: every core this process may run on)",
                              integer=True, minimum=0, inclusive=True, maximum=4096, unit="cores"),
}


def parse(name: str, raw: str | float | None = None) -> float:
    """The value of setting `name` (from `raw`, else the environment, else its default), or a ValueError
    that repeats the value and says what is allowed."""
    s = SETTINGS[name]
    if raw is None:
        raw = os.environ.get(name)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return int(s.default) if s.integer else float(s.default)
    try:
        v = float(raw)
    except (TypeError, ValueError):
        v = math.nan
    ok = math.isfinite(v) and (v >= s.minimum if s.inclusive else v > s.minimum)
    ok = ok and (s.maximum is None or v <= s.maximum)
    if ok and s.integer and v != int(v):
        ok = False
    if not ok:
        raise ValueError(f"{name}={raw!r} must be {s.allowed()} (default {s.default:g}): {s.what}")
    return int(v) if s.integer else v


def get(name: str) -> float:
    return parse(name)


def check_all() -> None:
    """Every setting at once: one line naming each bad variable, or nothing."""
    problems = []
    for name in SETTINGS:
        try:
            parse(name)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
