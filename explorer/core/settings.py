"""The explorer's environment settings, each parsed and checked in one place.

Every consumer reads a setting through `get`, and the CLI and the page call `check_all` at start-up, so a
bad value (`EXPLORER_THREADS=abc`) is one line naming the variable, the value and what is allowed, before
any work starts, rather than Python's own text seconds into a run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from explorer.core import cachedir


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
        if self.integer and self.maximum is not None and self.maximum - self.minimum == 1:
            return f"{self.minimum:g} or {self.maximum:g}"
        if self.integer:  # the least whole number parse takes: EXPLORER_CORES' 0 (every core) is one
            lowest = math.ceil(self.minimum) if self.inclusive else math.floor(self.minimum) + 1
            text = f"a whole number{unit} >= {lowest:g}"
        elif self.inclusive:
            text = f"a number{unit} >= {self.minimum:g}"
        else:
            text = f"a positive number{unit}" if self.minimum == 0 else f"a number{unit} above {self.minimum:g}"
        return text if self.maximum is None else f"{text}, at most {_plain(self.maximum)}"


def _plain(v: float) -> str:
    """16777216, not 1.67772e+07: a maximum the user can type back."""
    return str(int(v)) if v == int(v) else f"{v:g}"


# Every setting has a maximum: a count or a duration from the environment is work the explorer promises to
# do, so an absurd one (EXPLORER_LATENCY_BUDGET_S=1e308, a thread count past what the OS can start) is
# refused at start-up instead of running forever or overflowing seconds into a run.
MAX_THREADS = 1024
MB_PER_TB = 2**20


SETTINGS: dict[str, Setting] = {
    "EXPLORER_THREADS": Setting(1, "threads for latency timing", integer=True, unit="threads",
                                maximum=MAX_THREADS),
    "EXPLORER_TRAIN_THREADS": Setting(1, "torch threads for compression, fine-tuning and accuracy", integer=True,
                                      unit="threads", maximum=MAX_THREADS),
    "EXPLORER_EVAL_WORKERS": Setting(2, "threads that score test images side by side (any count gives the same "
                                        "figures)", integer=True, unit="threads", maximum=MAX_THREADS),
    "EXPLORER_LATENCY_BUDGET_S": Setting(0.3, "seconds of timing per engine and batch", unit="seconds",
                                         maximum=60),
    "EXPLORER_CACHE_MAX_MB": Setting(2048, "run cache size cap", minimum=0, inclusive=True, unit="megabytes",
                                     maximum=16 * MB_PER_TB),
    "EXPLORER_MAX_UPLOAD_MB": Setting(500, "upload cap", unit="megabytes", maximum=64 * 1024),
    "EXPLORER_ZIP_MAX_MB": Setting(1024, "bytes a zip may expand to", unit="megabytes", maximum=MB_PER_TB),
    "EXPLORER_ZIP_MAX_FILES": Setting(100_000, "entries (files and folders) a zip may hold", integer=True,
                                      maximum=10_000_000),
    "EXPLORER_ZIP_MAX_RATIO": Setting(200, "how many times a zip may expand, per entry and overall",
                                      maximum=10_000),
    "EXPLORER_MAX_IMAGES": Setting(50_000, "images an image folder may hold", integer=True, maximum=100_000_000),
    "EXPLORER_MAX_IMAGE_PIXELS": Setting(16_000_000, "pixels one image may hold (below Pillow's bomb warning)",
                                         integer=True, minimum=1, inclusive=True, maximum=89_000_000),
    "EXPLORER_MAX_DECODED_MB": Setting(1024, "megabytes an image folder's decoded pixels, and the data set made "
                                             "from them or from IDX files, may take", unit="megabytes",
                                       maximum=MB_PER_TB),
    "EXPLORER_LANDSCAPE": Setting(1, "1 measures an open model's default grid in the background, 0 does not",
                                  integer=True, minimum=0, inclusive=True, maximum=1),
    "EXPLORER_LANDSCAPE_IDLE_S": Setting(120, "seconds a landscape goes on after the last page looked at its model",
                                         unit="seconds", maximum=86_400),
    # a user's model is read and run in a child process under these limits (explorer.models.sandbox)
    "EXPLORER_CHECK_TIMEOUT_S": Setting(60, "seconds a user's model may take to be read and run on the test images "
                                            "when it is added", integer=True, minimum=1, inclusive=True,
                                        maximum=3600, unit="seconds"),
    "EXPLORER_CHECK_MAX_MB": Setting(4096, "megabytes of memory a user's model may use while it is checked",
                                     integer=True, minimum=64, inclusive=True, maximum=262_144, unit="megabytes"),
    "EXPLORER_MAX_CHECKS": Setting(2, "models checked at once, each in a process of its own (the others wait their "
                                      "turn)", integer=True, minimum=1, inclusive=True, maximum=64, unit="checks"),
    # a packed file's layers are built only once they are within this (explorer.artifact.bounds)
    "EXPLORER_PACK_MAX_PARAMS": Setting(1_000_000_000, "parameters a packed model may declare (4 GB of float32 "
                                        "weights); its layers are built only within this", integer=True,
                                        unit="parameters", maximum=1_000_000_000_000),
    # the scheduler (explorer.run.scheduler)
    "EXPLORER_CORES": Setting(0, "cores the explorer's work may use (0: every core this process may run on)",
                              integer=True, minimum=0, inclusive=True, maximum=4096, unit="cores"),
    # the page's runs (explorer.run.jobs): one visitor's tabs together may have this many waiting or going
    "EXPLORER_RUNS_PER_VISITOR": Setting(4, "runs one visitor's pages may have waiting or going at once",
                                         integer=True, minimum=1, inclusive=True, maximum=1000, unit="runs"),
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
    problems += check_folders()
    if problems:
        raise ValueError("; ".join(problems))


def check_folders() -> list[str]:
    """The folder settings, checked without creating anything: EXPLORER_CACHE_DIR must be a folder the
    explorer can write and call its own (explorer.core.cachedir), so a bad one is named before any work."""
    try:
        cachedir.check_env()
    except ValueError as e:
        return [str(e)]
    return []
