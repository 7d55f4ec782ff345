"""At most n holders at once of a named set of slots, across the threads of a process and the processes that share
one cache folder, served in the order they asked.

Lock files in the cache folder's `.locks/<name>/`, as explorer.run.scheduler keeps its own in `.locks/`: slot i is
`slot-<i>.lock`, held (flock, exclusive) by whoever runs; a waiter holds a ticket of its own,
`wait-<time>-<pid>-<thread>.lock`, while it waits, so every waiter can count who asked before it and let them go
first. The kernel drops a dead process's locks, so a killed holder never blocks the rest, and the ticket a dead
waiter left is removed by the next waiter that finds it unlocked. Each holder opens its own files: flock on
separate open files excludes the threads of one process too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from explorer.core import cachedir, paths

POLL_S = 0.1


def folder(name: str) -> Path:
    """`.locks/<name>/` in the cache folder (EXPLORER_CACHE_DIR), made if missing."""
    where = cachedir.claim(paths.cache_dir()) / ".locks" / name
    where.mkdir(parents=True, exist_ok=True)
    return where


@contextlib.contextmanager
def slot(name: str, n: int, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
    """Hold one of the `n` slots called `name` for the block. While every slot is taken (or others asked first),
    wait in turn, telling `on_wait` how many go before this one (those running and those that asked earlier)
    each time that number changes; an exception from `on_wait` gives up the place in the queue."""
    held = _take(folder(name), n, on_wait)
    try:
        yield
    finally:
        held.close()  # closing lets the flock go


def _take(where: Path, n: int, on_wait: Callable[[int], None] | None) -> IO[bytes]:
    ticket: IO[bytes] | None = None
    mine = ""
    told = None
    try:
        while True:
            ahead = _waiting_before(where, mine)
            held = None if ahead else _free_slot(where, n)
            if held is not None:
                return held
            if ticket is None:  # join the queue, then look again: others may have joined meanwhile
                mine = f"wait-{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}.lock"
                ticket = _hold(where / mine)
                continue
            going = n if not ahead else sum(_held(where / f"slot-{i}.lock") for i in range(n))
            if on_wait is not None and going + ahead != told:
                told = going + ahead
                on_wait(told)
            time.sleep(POLL_S)
    finally:
        if ticket is not None:
            with contextlib.suppress(FileNotFoundError):
                (where / mine).unlink()
            ticket.close()


def _hold(path: Path) -> IO[bytes]:
    """`path` created and locked. Between the two, another waiter may take it for a dead one's and remove it:
    this waiter then loses its place in the order, never the count of slots, which the slot files keep."""
    f = open(path, "a+b")  # held open while it waits
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    return f


def _free_slot(where: Path, n: int) -> IO[bytes] | None:
    """One of the n slot files, locked, or None where every one is held."""
    for i in range(n):
        f = open(where / f"slot-{i}.lock", "a+b")  # held open while its holder runs
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        return f
    return None


def _waiting_before(where: Path, mine: str) -> int:
    """How many live waiters asked before the ticket `mine` ("": before anyone who asks now)."""
    with os.scandir(where) as it:
        earlier = sorted(e.name for e in it if e.name.startswith("wait-") and (not mine or e.name < mine))
    return sum(_alive(where / t) for t in earlier)


def _alive(ticket: Path) -> bool:
    """Whether a waiter holds `ticket`; one nobody holds is a dead waiter's, and is removed."""
    if _held(ticket):
        return True
    with contextlib.suppress(FileNotFoundError):
        ticket.unlink()
    return False


def _held(path: Path) -> bool:
    """Whether someone holds the lock of `path` now (a missing file is held by nobody)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:  # a ticket whose waiter has just taken a slot, or given up
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False  # closing lets the probe's lock go
