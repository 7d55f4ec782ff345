"""The one scheduler that owns the cores: every piece of CPU work the explorer does runs under its rules.

Priorities, highest first (`Priority`):
    FOREGROUND  the run a page shows (and a command-line run)
    COMPARISON  the baseline that page compares it with
    NEIGHBOURS  the slider positions next to a page's last run (the landscape's first points)
    LANDSCAPE   the rest of an open model's default grid, measured in the background
    SWEEP       a sweep's workers

The rules:
1. Work runs inside `work()`, at the priority its thread was given (`priority(p)`, else the process's default).
   While it runs it holds a share of the quiet slot and says that work of its priority is going.
2. At safe points (`safe_point()`: every progress report, between fine-tuning steps and scoring batches, before
   and after ONNX export) work pauses while a timing wants the machine or while higher-priority work is going.
   A thread waiting for another one's result inside work wraps the wait in `waiting()`, so that nobody ever
   waits for a thread that is itself waiting.
3. Latency timing runs inside `quiet_slot()`. It waits until every piece of work has reached a safe point and
   paused; while it holds the slot, no other work of ours runs. A timing of low priority lets higher-priority
   work go between its rounds (`between_rounds()`); a waiting timing stops new work from starting, so a stream
   of workers never starves it.
4. Threads are started here: `start_task` (work, at the caller's priority) and `start_service` (loops that only
   hand work out). Processes are started by explorer.run.workers, which also hands sweep work to Ray where
   RAY_ADDRESS is set; timing always stays in the process that shows or stores the figures.

Separate processes (a sweep's workers, the page's landscape worker, a second server) follow the same rules
through lock files in the cache folder's `.locks/` (flock, which the kernel releases when a process dies, so
a killed worker never blocks the others):
    slot.lock       shared while working, exclusive while timing
    gate.lock       a timing takes it exclusively before the slot; new work passes it (shared, for a moment)
                    before taking its share, so nothing starts while a timing waits
    level-N.lock    shared while work of priority N is going; work of lower priority tests it at safe points
Each thread opens the files itself: flock on separate open files excludes threads of one process too.
The decisions are pure functions (`decide`, `may_time`, `Line`), tested with a fake clock.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import IO, Any

from explorer.core import paths, safepoint, settings, spawn
from explorer.measure import latency


class Priority(IntEnum):
    FOREGROUND = 0
    COMPARISON = 1
    NEIGHBOURS = 2
    LANDSCAPE = 3
    SWEEP = 4


GO, QUIET, YIELD = "go on", "pause while a timing runs", "pause while higher-priority work runs"
POLL_S = 0.05  # how often paused work looks whether higher-priority work has ended (no kernel wake-up for it)


# ---------------------------------------------------------------- the decisions, pure

def decide(priority: int, busy: Iterable[int], timing_waits: bool) -> str:
    """What work of `priority` does at a safe point, given the priorities of the work going (`busy`) and
    whether a timing waits for the machine: a timing comes first, then higher-priority work."""
    if timing_waits:
        return QUIET
    if any(b < priority for b in busy):
        return YIELD
    return GO


def may_time(priority: int, busy: Iterable[int]) -> bool:
    """Whether a timing of `priority` may hold the quiet slot (for its next round): never while higher-priority
    work is going or waiting to start, which the slot would hold up for the whole round."""
    return not any(b < priority for b in busy)


class Line:
    """Jobs waiting to start: the highest priority first; at the same priority, the owners (a page's visitors)
    take turns, the one served longest ago first, so one visitor's many runs never hold up another's; within
    an owner, the first come. Pure; the clock is given, so tests run on a fake one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seq = itertools.count()
        self._waiting: dict[Hashable, tuple[int, float, int]] = {}  # key -> (priority, arrival, tie-break)
        self._owner: dict[Hashable, Hashable] = {}  # key -> whose it is (absent: its own owner)
        self._served: dict[Hashable, int] = {}  # owner -> when it was last served (a count, not a time)
        self._turns = itertools.count(1)

    def add(self, key: Hashable, priority: int, owner: Hashable | None = None) -> None:
        """Queue `key` for `owner`; a key already waiting keeps its place in time and owner and takes the higher
        of the priorities."""
        old = self._waiting.get(key)
        if old is None:
            self._waiting[key] = (int(priority), self._clock(), next(self._seq))
            if owner is not None:
                self._owner[key] = owner
        else:
            self._waiting[key] = (min(old[0], int(priority)), old[1], old[2])

    def discard(self, key: Hashable) -> None:
        self._waiting.pop(key, None)
        self._owner.pop(key, None)

    def _rank(self, key: Hashable) -> tuple[int, int, float, int]:
        p, arrival, tie = self._waiting[key]
        return p, self._served.get(self._owner.get(key, key), 0), arrival, tie

    def pop(self) -> Hashable | None:
        if not self._waiting:
            return None
        key = min(self._waiting, key=self._rank)
        self._served[self._owner.get(key, key)] = next(self._turns)
        self.discard(key)
        owners = {self._owner.get(k, k) for k in self._waiting}
        for gone in [o for o in self._served if o not in owners]:  # nothing waiting: it rejoins as a newcomer
            del self._served[gone]
        return key

    def owner(self, key: Hashable) -> Hashable:
        return self._owner.get(key, key)

    def waited(self, key: Hashable) -> float:
        return self._clock() - self._waiting[key][1]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)


def cores() -> int:
    """Cores the explorer may use: EXPLORER_CORES, else (0) every core this process may run on."""
    have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    want = int(settings.get("EXPLORER_CORES"))
    return min(want, have) if want else have


# ---------------------------------------------------------------- priorities of threads and processes

_default = Priority.FOREGROUND  # a process that says nothing is a page or a command line: foreground


def set_default_priority(p: int) -> None:  # a Priority, or its number
    """The priority of every thread of this process that was not given one (a sweep worker: SWEEP)."""
    global _default
    _default = Priority(p)


@dataclass
class _Boost:
    level: int


@dataclass
class _Thread:
    """What one thread holds. Files are per thread because flock excludes per open file."""
    priority: Priority | None = None
    depth: int = 0  # work() nesting
    timing: int = 0  # quiet_slot() nesting
    timing_priority: int = 0  # the priority of the timing this thread runs
    level: int | None = None  # the priority this thread's work announced (level-N.lock held shared)
    level_file: IO[bytes] | None = None
    boost: _Boost | None = None  # a task's: raised when work of a higher priority waits for its result
    held: dict[str, IO[bytes]] = field(default_factory=dict)  # the files of the locks this thread holds now
    files: dict[tuple[str, Path], IO[bytes]] = field(default_factory=dict)


_tls = threading.local()


def _me() -> _Thread:
    st = getattr(_tls, "st", None)
    if st is None:
        st = _tls.st = _Thread()
    return st


def current_priority() -> Priority:
    st = _me()
    return st.priority if st.priority is not None else _default


@contextlib.contextmanager
def priority(p: int) -> Iterator[None]:  # a Priority, or its number
    """Work this thread starts inside the block runs at priority `p`."""
    st = _me()
    old, st.priority = st.priority, Priority(p)
    try:
        yield
    finally:
        st.priority = old


# ---------------------------------------------------------------- the lock files

_made: set[Path] = set()


def lock_folder() -> Path:
    """`.locks/` in the cache folder (EXPLORER_CACHE_DIR): every process using one cache shares one set of rules."""
    folder = paths.cache_dir() / ".locks"
    if folder not in _made:
        folder.mkdir(parents=True, exist_ok=True)
        _made.add(folder)
    return folder


def _file(st: _Thread, role: str, name: str) -> IO[bytes]:
    path = lock_folder() / name
    f = st.files.get((role, path))
    if f is None:
        f = st.files[(role, path)] = open(path, "a+b")  # kept open for the thread's life
    return f


def _free(f: IO[bytes], how: int) -> bool:
    """Whether the lock `how` could be taken on `f` now (where it could, it is let go at once)."""
    try:
        fcntl.flock(f.fileno(), how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return True


def _busy_above(st: _Thread, p: int) -> list[int]:
    """The priorities above `p` whose work is going (anywhere on this cache): their level file is held shared."""
    return [q for q in range(int(p)) if not _free(_file(st, "probe", f"level-{q}.lock"), fcntl.LOCK_EX)]


def _timing_waits(st: _Thread) -> bool:
    return not _free(st.held["gate"], fcntl.LOCK_SH)  # a timing holds the gate while it waits and while it runs


def _enter(st: _Thread) -> None:
    """Take a share of the slot, through the gate: blocks while a timing waits or runs."""
    fcntl.flock(st.held["gate"].fileno(), fcntl.LOCK_SH)
    try:
        fcntl.flock(st.held["slot"].fileno(), fcntl.LOCK_SH)
    finally:
        fcntl.flock(st.held["gate"].fileno(), fcntl.LOCK_UN)


def _leave(st: _Thread) -> None:
    fcntl.flock(st.held["slot"].fileno(), fcntl.LOCK_UN)


def _take_slot(st: _Thread, p: int) -> None:
    while _busy_above(st, p):  # a round would hold higher-priority work up: let it finish first
        time.sleep(POLL_S)
    fcntl.flock(st.held["gate"].fileno(), fcntl.LOCK_EX)  # from here on no new work starts
    fcntl.flock(st.held["slot"].fileno(), fcntl.LOCK_EX)  # every share let go: all work is at a safe point


def _give_slot(st: _Thread) -> None:
    fcntl.flock(st.held["slot"].fileno(), fcntl.LOCK_UN)
    fcntl.flock(st.held["gate"].fileno(), fcntl.LOCK_UN)


def _hold_files(st: _Thread) -> None:
    st.held.setdefault("gate", _file(st, "hold", "gate.lock"))
    st.held.setdefault("slot", _file(st, "hold", "slot.lock"))


# ---------------------------------------------------------------- what work and timing call

@contextlib.contextmanager
def work() -> Iterator[None]:
    """A piece of CPU work at this thread's priority (re-entrant). It starts when no timing waits and no
    higher-priority work is going, and pauses at its safe points under the same rules."""
    st = _me()
    if st.depth or st.timing:
        st.depth += 1
        try:
            yield
        finally:
            st.depth -= 1
        return
    p = current_priority()
    st.level_file = _file(st, "hold", f"level-{int(p)}.lock")
    fcntl.flock(st.level_file.fileno(), fcntl.LOCK_SH)
    _hold_files(st)
    st.level, st.depth = int(p), 1
    _working.add(threading.get_ident())
    try:
        _enter(st)
        try:
            safe_point()  # higher-priority work going: wait before starting, not after the first stretch
            yield
        finally:
            _leave(st)
    finally:
        _working.discard(threading.get_ident())
        st.depth, st.level = 0, None
        st.held.clear()
        fcntl.flock(st.level_file.fileno(), fcntl.LOCK_UN)


class Exiting(Exception):
    """Raised at a safe point once the interpreter is exiting: the work stops there (a failed run is never
    stored), rather than being frozen inside torch's C++ while the interpreter tears down, which aborted the
    process ("terminate called without an active exception", status 134)."""


_exiting = threading.Event()
_working: set[int] = set()  # threads inside work() or a timing now


def _stop_work_at_exit(wait_s: float = 5.0) -> None:
    """At the interpreter's exit: work and timings stop at their next safe point; wait a little for them."""
    _exiting.set()
    deadline = time.monotonic() + wait_s
    while _working and time.monotonic() < deadline:
        time.sleep(POLL_S)


atexit.register(_stop_work_at_exit)


def safe_point() -> None:
    """Pause here while a timing wants the machine or higher-priority work is going; a no-op outside work
    (or inside a timing, which holds the machine already). Once the interpreter exits, work stops here."""
    st = getattr(_tls, "st", None)
    if st is None or not st.depth:
        return
    if _exiting.is_set():
        raise Exiting("the process is exiting")
    if st.timing:
        return
    _raise_level(st)
    while (d := decide(st.level, _busy_above(st, st.level), _timing_waits(st))) != GO:
        _leave(st)
        while d == YIELD and _busy_above(st, st.level):
            time.sleep(POLL_S)
            _raise_level(st)
        _enter(st)  # blocks at the gate while a timing waits or runs


def _raise_level(st: _Thread) -> None:
    """A task whose result higher-priority work waits for goes on at that priority (else a page's run could
    wait for ever on scoring that a cancelled, lower-priority run started and that now yields to the page)."""
    if st.boost is None or st.level is None or st.level_file is None or st.boost.level >= st.level:
        return
    higher = _file(st, "hold", f"level-{st.boost.level}.lock")
    fcntl.flock(higher.fileno(), fcntl.LOCK_SH)
    fcntl.flock(st.level_file.fileno(), fcntl.LOCK_UN)
    st.level, st.level_file = st.boost.level, higher


def result(fut: Future[Any]) -> Any:
    """The result of a task (`start_task`), waited for inside work: the share is let go meanwhile, and the task
    goes on at least at the waiter's priority."""
    st = _me()
    boost = getattr(fut, "boost", None)
    if boost is not None and st.depth:
        boost.level = min(boost.level, st.level)
    with waiting():
        return fut.result()


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Around a blocking wait inside work for what another thread computes: the share is let go meanwhile."""
    st = _me()
    if not st.depth or st.timing:
        yield
        return
    _leave(st)
    try:
        yield
    finally:
        _enter(st)


@contextlib.contextmanager
def quiet_slot() -> Iterator[None]:
    """Latency timing: while inside, no other work of ours runs on the machine (re-entrant)."""
    st = _me()
    if st.timing:
        st.timing += 1
        try:
            yield
        finally:
            st.timing -= 1
        return
    working = bool(st.depth)
    p = st.level if working and st.level is not None else int(current_priority())  # (working: level is set)
    if working:
        _leave(st)
    _hold_files(st)
    _working.add(threading.get_ident())  # (already there where it works: the timing is part of that work)
    _take_slot(st, p)
    st.timing, st.timing_priority = 1, p
    try:
        yield
    finally:
        st.timing = 0
        _give_slot(st)
        if working:
            _enter(st)
        else:
            _working.discard(threading.get_ident())
            st.held.clear()


def timing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a function that times latency: it runs as work, inside the quiet slot."""
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with work(), quiet_slot():
            return fn(*args, **kwargs)
    return timed


def between_rounds() -> None:
    """Called by a timing between its rounds: higher-priority work that came meanwhile goes first, then the
    timing takes the slot back. Outside a timing it is a safe point."""
    st = _me()
    if not st.timing:
        safe_point()
        return
    if _exiting.is_set():
        raise Exiting("the process is exiting")
    p = st.timing_priority
    if not may_time(p, _busy_above(st, p)):
        _give_slot(st)
        _take_slot(st, p)


# ---------------------------------------------------------------- threads

def start_service(target: Callable[[], Any], name: str) -> threading.Thread:
    """A thread that hands work out (a queue's loop), a daemon: it does no CPU work itself."""
    return spawn.thread(target, name)


def start_task(fn: Callable[..., Any], *args: Any, name: str) -> Future[Any]:
    """`fn(*args)` as work in a thread of its own, at the caller's priority; its result as a Future."""
    fut: Future[Any] = Future()
    p = current_priority()
    fut.boost = _Boost(int(p))  # type: ignore[attr-defined]

    def body() -> None:
        _me().boost = fut.boost  # type: ignore[attr-defined]
        try:
            with priority(p), work():
                fut.set_result(fn(*args))
        except BaseException as e:  # handed to whoever waits for the result
            fut.set_exception(e)

    start_service(body, name)
    return fut


safepoint.install(safe_point)  # the safe points below the run layer (scoring batches) pause by these rules
latency.set_quiet_slot(quiet_slot)  # every timing round, wherever it starts, runs inside the quiet slot
