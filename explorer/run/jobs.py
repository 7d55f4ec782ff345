"""The runs pages ask for, computed off the page's script so that a slider move never blocks the page.

One thread per server process takes the runs in order of priority (a configuration a page shows before the
baseline it is compared with: scheduler.Line), one at a time, and computes each as the scheduler's work at
the job's priority (explorer.run.scheduler), so the background landscape and sweeps give it the cores and
its latency is timed in the quiet slot.
A run reports its progress and its figures as they exist (accuracy and size first, then ONNX sizes, then
latency: runner.Partial), which the page shows as partial while the rest is measured; the cache entry is
written once the run is complete, as always. Pages say which runs they are watching; a queued or running
run that no page watches any more is cancelled (cooperatively, at its next progress report), and a
cancelled run leaves nothing in the cache. A server may ask for runs before any page (`STARTUP`: the default
configuration the first visitor opens on); it gives way to pages being opened (explorer.core.opening), the first
page that watches one takes it over, and once no page watches it any more it is cancelled like a page's own.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

from explorer.compress.recipe import Recipe
from explorer.core import opening, settings
from explorer.run import scheduler
from explorer.run.result import untimed

if TYPE_CHECKING:
    from explorer.run.cache import RunCache
    from explorer.run.result import RunResult

FOREGROUND, COMPARISON = scheduler.Priority.FOREGROUND, scheduler.Priority.COMPARISON
KEEP = 64  # finished jobs remembered, for pages that look again
STARTUP = "(server start-up)"  # the session a server's own first runs are asked for (a page takes them over)
FAILED_TTL_S = 60.0  # a failed run is shown, not recomputed on every refresh, for this long
GONE_S = 10.0  # a page closed (or its connection lost) this long no longer watches its runs: a reload comes back
REAP_S = 2.0  # how often the board looks for closed pages
JobState = Literal["queued", "running", "done", "failed", "cancelled"]  # a Job waits, runs, then ends one of three ways


class Cancelled(Exception):
    """Raised inside a run whose configuration no page watches any more."""


@dataclass
class Job:
    key: str
    recipe: Recipe
    priority: int
    state: JobState = "queued"
    fraction: float = 0.0
    message: str = "waiting for the run before it"
    partial: RunResult | None = None
    result: RunResult | None = None
    error: str | None = None
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    first_figures_s: float | None = None  # seconds from submission until accuracy and size existed
    total_s: float | None = None
    watchers: set[str] = field(default_factory=set)
    cancel: threading.Event = field(default_factory=threading.Event)
    owner: str = ""  # the visitor who asked first: the runs waiting take turns between visitors

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def servers_own(self) -> bool:
        """Whether only the server's start-up asked for this run (no page has taken it over); lock-free reads."""
        return len(self.watchers) == 1 and STARTUP in self.watchers

    def joinable(self) -> bool:
        """Whether a page asking for this run gets this job (a failure stands for a while, then is retried)."""
        if self.state == "failed":
            return time.perf_counter() - self.submitted - (self.total_s or 0) < FAILED_TTL_S
        return self.state in ("queued", "running", "done")


class Board:
    """The queue of runs pages asked for, and the one thread that computes them."""

    def __init__(self, cache_factory: Callable[[], RunCache], key_of: Callable[[Recipe], str],
                 alive: Callable[[str], bool] = lambda session: True):
        """`alive(session)`: whether that page is connected now (the page's server knows); a page seen connected
        and then closed for GONE_S stops watching its runs, so a closed tab's queued runs never start."""
        self._cache, self._key_of, self._alive = cache_factory, key_of, alive
        self._open: set[str] = set()  # sessions seen connected (one never seen so, a test's, is never reaped)
        self._gone: dict[str, float] = {}  # session -> when it was first seen closed
        self._reaped = time.monotonic()
        self._jobs: dict[str, Job] = {}
        self._line = scheduler.Line()
        self._order = itertools.count()
        self._seq: dict[str, int] = {}
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = scheduler.start_service(self._loop, "explorer-runs")
        atexit.register(self.stop)

    def stop(self, wait_s: float = 30.0) -> None:
        """Cancel every run and let the thread end: a thread killed inside torch at exit aborts the process."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.set()
            self._lock.notify_all()
        self._thread.join(timeout=wait_s)

    def submit(self, recipe: Recipe, session: str, priority: int = FOREGROUND, visitor: str | None = None) -> Job:
        """The job for `recipe`: finished at once from the cache, joined if another page asked first, else
        queued for `visitor` (a browser, whose tabs are many sessions; by default the session itself). Bad
        input (a missing checkpoint), or a visitor who already has EXPLORER_RUNS_PER_VISITOR runs waiting or
        going, raises ValueError here, before any work."""
        visitor = visitor or session
        key = self._key_of(recipe)
        cache = self._cache()
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == "done" and cache.peek(key) is None:
                job = self._jobs.pop(key)  # evicted or cleared since (or another cache): compute it again
                job = None
            if job is not None and job.joinable():
                job.watchers.add(session)
                job.priority = min(job.priority, priority)
                if job.state == "queued":
                    self._line.add(key, job.priority)  # a page's own ask moves a queued comparison up
                return job
        hit = cache.get(key)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.joinable():
                job.watchers.add(session)
                return job
            job = Job(key, recipe, priority, watchers={session}, owner=visitor)
            if hit is not None and not untimed(hit):  # one stored untimed is timed first (RunCache.get_or_run)
                job.state, job.fraction, job.total_s = "done", 1.0, 0.0
                job.result = {**hit, "cache": {"hit": True, "key": key}}
            else:
                self._check_share(visitor, session)
            self._jobs[key] = job
            self._seq[key] = next(self._order)
            if job.state == "queued":
                self._line.add(key, priority, owner=visitor)
            self._trim()
            self._lock.notify_all()
            return job

    def show(self, session: str, recipe: Recipe, comparison: Recipe | None, visitor: str | None = None,
             control: Recipe | None = None) -> tuple[Job, Job, Job | None]:
        """What a page does on each render: its configuration's job, its comparison's (the same job for a recipe
        with no step) and its same-budget control's (None for a recipe that does not fine-tune), which it now
        watches in place of what it watched before (`submit`, `watch`). Both comparisons wait for the run."""
        job = self.submit(recipe, session, visitor=visitor)
        base = job if comparison is None else self.submit(comparison, session, COMPARISON, visitor=visitor)
        fair = None if control is None else self.submit(control, session, COMPARISON, visitor=visitor)
        self.watch(session, {job.key, base.key, *([fair.key] if fair is not None else [])})
        return job, base, fair

    def _check_share(self, visitor: str, session: str) -> None:
        """Refuse a new run of a visitor whose other pages already have their share waiting or going (under the
        lock). The asking page's own runs do not count: it shows one configuration, and the runs it leaves are
        cancelled as it moves on (`watch`)."""
        most = int(settings.get("EXPLORER_RUNS_PER_VISITOR"))
        theirs = [j for j in self._jobs.values() if j.owner == visitor and not j.finished and not j.cancel.is_set()
                  and j.watchers != {session}]
        if visitor != STARTUP and len(theirs) >= most:
            raise ValueError(f"this browser's other tabs already have {len(theirs)} runs waiting or going (at most "
                             f"{most} at once, so that every visitor's runs take turns); this one can start once "
                             "one of them ends or its tab is closed")

    def watch(self, session: str, keys: set[str]) -> None:
        """The runs a page shows now; runs left by every page are cancelled (queued ones never start)."""
        with self._lock:
            self._watch(session, keys)

    def _watch(self, session: str, keys: set[str]) -> None:  # under the lock
        for job in self._jobs.values():
            if job.key not in keys:
                job.watchers.discard(session)
            elif session != STARTUP:
                job.watchers.discard(STARTUP)  # a page took over the run the server started for it
            if not job.finished and not job.watchers:
                job.cancel.set()
                if job.state == "queued":
                    job.state, job.message = "cancelled", "left before it started"
                    self._line.discard(job.key)
        self._lock.notify_all()

    def _reap(self) -> None:
        """Pages closed for GONE_S watch nothing any more (under the lock, every REAP_S): a tab closed with runs
        waiting leaves no work behind, and its visitor's share is free again."""
        now = time.monotonic()
        if now - self._reaped < REAP_S:
            return
        self._reaped = now
        sessions = {s for j in self._jobs.values() if not j.finished for s in j.watchers} - {STARTUP}
        self._open &= sessions
        self._gone = {s: t for s, t in self._gone.items() if s in sessions}
        for session in sessions:
            if self._alive(session):
                self._open.add(session)
                self._gone.pop(session, None)
            elif session in self._open and now - self._gone.setdefault(session, now) >= GONE_S:
                self._open.discard(session)
                del self._gone[session]
                self._watch(session, set())

    def page_waiting(self) -> bool:
        """Whether a page's own run (not a comparison) is queued or running."""
        with self._lock:
            return any(not j.finished and j.priority <= FOREGROUND for j in self._jobs.values())

    def watched(self, session: str) -> set[str]:
        """The keys of the runs the page `session` shows."""
        with self._lock:
            return {j.key for j in self._jobs.values() if session in j.watchers}

    def job(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def _trim(self) -> None:
        done = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: self._seq[j.key])
        for j in done[:max(0, len(done) - KEEP)]:
            self._jobs.pop(j.key, None)

    def _next(self) -> Job | None:
        with self._lock:
            while not self._stopping:
                self._reap()
                while (key := self._line.pop()) is not None:
                    job = self._jobs.get(cast(str, key))  # the line holds the keys of _jobs
                    if job is not None and job.state == "queued":
                        job.state, job.started, job.message = "running", time.perf_counter(), "starting"
                        return job
                self._lock.wait(timeout=1.0)
            return None

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                with self._lock:
                    job.total_s = time.perf_counter() - job.submitted
                    self._lock.notify_all()

    def _run(self, job: Job) -> None:
        def progress(fraction: float, message: str) -> None:
            with self._lock:
                self._reap()  # a tab closed while this runs: its run ends here, its queued ones never start
            if job.cancel.is_set():
                raise Cancelled(f"cancelled: no page shows {job.recipe.label()} any more")
            if job.servers_own():  # no page has taken it over: a page drawing its shell goes first
                opening.wait_while_opening()
            job.fraction, job.message = fraction, message

        def partial(result: RunResult) -> None:
            if job.first_figures_s is None:
                job.first_figures_s = time.perf_counter() - job.submitted
            job.partial = result

        try:
            with scheduler.priority(job.priority):  # the run's work (inside the cache's lock) goes at this priority
                result = self._cache().get_or_run(job.recipe, progress=progress, partial=partial)
        except ValueError as e:
            job.state, job.error = "failed", str(e)
            return
        except Exception as e:  # never kill the thread that serves every page
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
            return
        if job.cancel.is_set() and result.get("status") != "ok":
            job.state, job.message = "cancelled", "left while it ran; nothing was stored"
        elif result.get("status") == "ok":
            job.state, job.result, job.fraction = "done", result, 1.0
            if job.first_figures_s is None:
                job.first_figures_s = time.perf_counter() - job.submitted
        else:
            job.state, job.error = "failed", result.get("error", "failed")
