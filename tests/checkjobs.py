"""Jobs for a checking process (explorer.models.sandbox) that import nothing heavy, so that several spawned at
once start in well under a second: the child imports a job's module to unpickle it."""

import sys
import time
import uuid
from pathlib import Path


def overlap(folder: str, most: int, hold_s: float) -> int:
    """Mark this check as running in `folder` and hold until more than `most` checks run there at once or
    `hold_s` passes; return how many ran at once at the most (what a cap of `most` must never let past)."""
    mark = Path(folder) / uuid.uuid4().hex
    mark.touch()
    seen, end = 1, time.monotonic() + hold_s
    while seen <= most and time.monotonic() < end:
        seen = max(seen, len(list(Path(folder).iterdir())))
        time.sleep(0.02)
    mark.unlink()
    return seen


def hold(name: str = "checks") -> None:
    """In a process of its own: hold the only slot (as a check in another process does), say so, and let it go
    when a line comes on stdin."""
    from explorer.core import slots

    with slots.slot(name, 1):
        print("held", flush=True)
        sys.stdin.readline()
