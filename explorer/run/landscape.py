"""The landscape: a model's default grid measured in the background while pages look at it, so the curves and
Pareto fronts fill in on their own.

When a page opens a model, the model's landscape (the Sweep tab's default grid, explorer.run.grid.Grid) is
measured through the run cache in a worker process (or as Ray tasks where RAY_ADDRESS is set), nearest the
page's slider position first, and after a page's own run its neighbouring slider positions first of all.
Every page looking at a model shares its one landscape; the cache's per-key locks keep a configuration
from being computed twice. Its points are the scheduler's work (explorer.run.scheduler): a page's own
neighbours at NEIGHBOURS, the rest at LANDSCAPE, below a page's own runs, so a slider move gets the cores
first, and paused at their safe points while any of our timings runs. This module holds only what to
measure next; the worker process is started by explorer.run.workers.
A point is measured untimed first (its accuracy and sizes: the curves fill at the pace of fine-tuning, not of
timing), and the points are timed from their stored files once the grid is measured; a page that asks for one
(a slider moved to a neighbour) shows its accuracy and sizes at once and times it first (RunCache.get_or_run).
A stored run whose speed figures failed their timing checks is re-timed by the
same worker once the machine is quieter (explorer.run.retime): a page's own runs before the next point, the
grid's once it is all measured.
A landscape no page has looked at for EXPLORER_LANDSCAPE_IDLE_S seconds stops; EXPLORER_LANDSCAPE=0 turns
them off. The ordering and neighbours are pure functions, tested alone.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

from explorer.compress.base import Control
from explorer.compress.recipe import Recipe
from explorer.core.card import ModelCard
from explorer.core.train import compute_threads
from explorer.measure.latency import load_average
from explorer.run import executor, retime, runner, scheduler, workers
from explorer.run.cache import RunCache
from explorer.run.controls import all_controls, build
from explorer.run.grid import Grid
from explorer.run.result import untimed


def _axes() -> list[Control]:
    """The background grid's axes: the controls whose techniques name their default grid values (Control.sweep)."""
    return [ctrl for ctrl in all_controls() if ctrl.sweep]


def coords(c: dict[str, Any]) -> tuple[float, ...]:
    """A configuration's place on the sliders, in notches along each axis (sparsity, bit-width, clusters...)."""
    out = []
    for ctrl in _axes():
        if ctrl.options:
            out.append(float(ctrl.options.index(c[ctrl.name])) if c[ctrl.name] in ctrl.options else 0.0)
        else:
            out.append(float(c[ctrl.name]) / float(ctrl.notch or ctrl.step or 1))
    return tuple(out)


def distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True))


def order(points: Sequence[tuple[str, tuple[float, ...]]], position: tuple[float, ...],
          first: Sequence[str] = ()) -> list[str]:
    """Keys to measure: those in `first` (in their order), then the rest nearest `position` first (ties in
    the grid's order)."""
    head = [k for k in dict.fromkeys(first)]
    rest = sorted(((distance(p, position), i, k) for i, (k, p) in enumerate(points) if k not in head))
    return head + [k for _, _, k in rest]


def neighbours(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The slider positions one notch either way along each axis (no further than the grid goes on a number),
    other controls as they are."""
    out = []
    for ctrl in _axes():
        if ctrl.options:
            i = ctrl.options.index(c[ctrl.name]) if c[ctrl.name] in ctrl.options else 0
            near = [ctrl.options[j] for j in (i - 1, i + 1) if 0 <= j < len(ctrl.options)]
            out += [{**c, ctrl.name: v} for v in near if v not in ctrl.skip_near]
            continue
        notch, lo = float(ctrl.notch or ctrl.step or 1), float(ctrl.lo if ctrl.lo is not None else -math.inf)
        for delta in (-notch, notch):
            v = round(c[ctrl.name] + delta, 6)
            if lo <= v <= max(ctrl.sweep):
                out.append({**c, ctrl.name: v})
    return out


def default_points(card: ModelCard) -> list[dict[str, Any]]:
    """The Sweep tab's default grid as page controls (what the landscape measures)."""
    return [{**p, "baseline": card["name"]} for p in Grid.page(card).points()]


@dataclass
class Landscape:
    card: ModelCard
    points: list[tuple[str, tuple[float, ...], Recipe]]  # key, slider place, recipe
    position: tuple[float, ...] = (0.0, 0.0, 0.0)
    first: list[tuple[str, Recipe]] = field(default_factory=list)  # neighbours of a page's last run
    last_seen: float = field(default_factory=time.monotonic)
    paused: bool = False
    failed: set[str] = field(default_factory=set)
    running: str | None = None
    done: int = 0  # configurations this landscape computed (the rest were in the cache already)
    own: list[tuple[str, Recipe]] = field(default_factory=list)  # the pages' own runs, latest first
    retimed: int = 0  # stored runs this landscape timed again (their figures had failed their checks)
    scanned: float = 0.0  # when the grid's stored runs were last looked through for a re-time

    def next(self, cached: Callable[[str], bool]) -> Recipe | None:
        step = self.next_step(cached)
        return None if step is None else step[0]

    def next_step(self, cached: Callable[[str], bool]) -> tuple[Recipe, scheduler.Priority] | None:
        """The next configuration to measure and its priority (a neighbour of a page's run, or the grid)."""
        recipes = {k: r for k, _, r in self.points} | dict(self.first)
        near = {k for k, _ in self.first}
        for key in order([(k, p) for k, p, _ in self.points], self.position, [k for k, _ in self.first]):
            if key not in self.failed and key != self.running and not cached(key):
                return recipes[key], scheduler.Priority.NEIGHBOURS if key in near else scheduler.Priority.LANDSCAPE
        return None

    def status(self, cached: Callable[[str], bool]) -> dict[str, Any]:
        measured = sum(1 for k, _, _ in self.points if cached(k))
        return {"measured": measured, "total": len(self.points), "paused": self.paused, "running": self.running,
                "failed": len(self.failed), "computed_here": self.done, "retimed_here": self.retimed}


def _worker_main(jobs: Queue[Any], results: Queue[Any], threads: int) -> None:
    """The background worker process: its torch threads fixed, nice'd below the page (the scheduler's rules
    do the rest); it measures the points it is sent, one at a time, until it is sent None."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    compute_threads(threads)
    while (job := jobs.get()) is not None:
        recipe_json, priority, *how = job
        try:
            with scheduler.priority(priority):
                out = _retime(recipe_json) if how == [RETIME] else _measure(recipe_json, latency=how != [UNTIMED_POINT])
        except Exception as e:  # reported as a failed point; the worker goes on
            out = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        results.put(out)


RETIME = "retime"
UNTIMED_POINT = "untimed"  # a point measured without its latency first
RETIME_SCAN_S = 30.0  # how often the grid's stored runs are looked through for one due for a re-time


def _retime(recipe_json: str) -> dict[str, Any]:
    """A stored run timed again in the worker (its figures had failed their checks)."""
    key = runner.run_key(Recipe.from_json(recipe_json))
    res = retime.retime(RunCache(), key)
    return {"status": "ok" if res is not None else "skipped", "key": key, "retime": True}


def _measure(recipe_json: str, latency: bool = True) -> dict[str, Any]:
    """One landscape point in the worker, through the cache like every run; untimed (its accuracy and sizes first,
    so the curves fill; its timing follows once the grid is measured, or when a page asks for it)."""
    recipe = Recipe.from_json(recipe_json)
    try:
        res = RunCache().get_or_run(recipe, latency=latency)
    except ValueError as e:
        return {"status": "failed", "error": str(e)}
    return {"status": res.get("status"), "key": res.get("key") or (res.get("cache") or {}).get("key"),
            "error": res.get("error")}


class Landscapes:
    """Every model's landscape in this server process, and the thread that feeds the worker."""

    def __init__(self, cache_factory: Callable[[], RunCache], key_of: Callable[[Recipe], str], idle_s: float,
                 tick_s: float = 0.5, asked: Callable[[str], bool] | None = None,
                 page_waiting: Callable[[], bool] | None = None):
        """`asked(key)`: whether a page is computing that configuration itself (on its run board): the landscape
        leaves it to the page, whose run would otherwise wait on the cache lock for the worker's, at background
        priority (the point under a page's sliders is the landscape's nearest). `page_waiting()`: whether a page
        waits for its own run now; no new point starts meanwhile (a point's start, and a first one's worker
        process importing PyTorch, took two cores' worth from a page's first figures: 11 s to them against 6 s)."""
        self._cache, self._key_of, self.idle_s, self.tick_s = cache_factory, key_of, idle_s, tick_s
        self._asked = asked or (lambda key: False)
        self._page_waiting = page_waiting or (lambda: False)
        self._all: dict[str, Landscape] = {}
        self._lock = threading.Lock()
        self._pool: workers.Worker | None = None
        self._future: tuple[str, str, Point, bool] | None = None  # (landscape name, key, future, is a re-time)
        self._stopping = threading.Event()
        self._thread = scheduler.start_service(self._loop, "explorer-landscape")
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop feeding the worker and end it: at exit nothing waits for a background point (a worker ended
        mid-run leaves only scratch, which the next start-up removes)."""
        self._stopping.set()
        if self._pool is not None:
            self._pool.terminate()

    def cached(self, key: str) -> bool:
        return self._cache().peek(key) is not None

    def status_of(self, card: ModelCard, controls: dict[str, Any]) -> dict[str, Any]:
        """A page looks at `card` (touch) and reads its landscape's status: the points stored, counted from the
        cache folder's listing, which is read again only when the folder changed."""
        stored = self._cache().stored()
        return self.touch(card, controls).status(stored.__contains__)

    def next_step(self, land: Landscape) -> tuple[Recipe, scheduler.Priority] | None:
        """The landscape's next point: neither stored nor one a page is computing itself."""
        return land.next_step(lambda key: self.cached(key) or self._asked(key))

    def touch(self, card: ModelCard, controls: dict[str, Any]) -> Landscape:
        """A page looks at `card` with its sliders at `controls`: the landscape (one per model) starts or goes on."""
        with self._lock:
            land = self._all.get(card["name"])
            if land is None:
                points: list[tuple[str, tuple[float, ...], Recipe]] = []
                for c in default_points(card):
                    try:
                        r = build(c, card)
                        points.append((self._key_of(r), coords(c), r))
                    except ValueError:
                        continue  # a grid point this model cannot take (an ONNX model, say)
                land = self._all[card["name"]] = Landscape(card, points)
            land.position, land.last_seen = coords(controls), time.monotonic()
            return land

    def after_run(self, card: ModelCard, controls: dict[str, Any]) -> None:
        """A page's own run finished: its neighbouring slider positions go to the front of the queue."""
        with self._lock:
            land = self._all.get(card["name"])
            if land is None:
                return
            first = []
            for c in neighbours(controls):
                with contextlib.suppress(ValueError):
                    r = build(c, card)
                    first.append((self._key_of(r), r))
            land.first = first
            with contextlib.suppress(ValueError):
                r = build(controls, card)
                own = self._key_of(r)
                land.own = [(own, r), *((k, o) for k, o in land.own if k != own)][:8]

    def pause(self, name: str, paused: bool) -> None:
        with self._lock:
            if name in self._all:
                self._all[name].paused = paused

    def get(self, name: str) -> Landscape | None:
        with self._lock:
            return self._all.get(name)

    def _worker(self) -> workers.Worker:
        if self._pool is None or not self._pool.alive():
            self._pool = workers.Worker(_worker_main, runner.train_threads(), name="explorer-landscape-worker",
                                        priority=scheduler.Priority.LANDSCAPE)
        return self._pool

    def _loop(self) -> None:
        while not self._stopping.is_set():
            time.sleep(self.tick_s)
            try:
                self._tick()
            except Exception:  # the background must never take the server down; the next tick tries again
                time.sleep(5)

    def _tick(self) -> None:
        with self._lock:
            if self._future is not None:
                name, key, fut, is_retime = self._future
                if not fut.done():
                    return
                self._future = None
                land = self._all.get(name)
                if land is not None:
                    land.running = None
                    try:
                        out = fut.result()
                    except Exception as e:  # a worker that died: that point is left out
                        out = {"status": "failed", "error": str(e)}
                    if is_retime:
                        land.retimed += out.get("status") == "ok"
                    elif out.get("status") == "ok":
                        land.done += 1
                    else:
                        land.failed.add(key)
            now = time.monotonic()
            live = [land for land in self._all.values() if now - land.last_seen < self.idle_s and not land.paused]
            if not live:
                return
            land = max(live, key=lambda x: x.last_seen)
        if self._page_waiting():
            return
        is_retime = False
        step = self.next_step(land)
        due = self._retime_key(land, grid=step is None)  # a page's own run first; the grid's once it is measured
        if due is not None:
            step, is_retime = (self._recipes(land)[due], scheduler.Priority.LANDSCAPE), True
        if step is None:
            return
        recipe, priority = step
        key = self._key_of(recipe)
        land.running = key
        future = self._submit(recipe, priority, is_retime, not is_retime)  # outside the lock: pages touch landscapes
        with self._lock:
            self._future = (land.card["name"], key, future, is_retime)

    def _recipes(self, land: Landscape) -> dict[str, Recipe]:
        return {k: r for k, _, r in land.points} | dict(land.first) | dict(land.own)

    def _retime_key(self, land: Landscape, grid: bool) -> str | None:
        """A stored run of this landscape due for a re-time (explorer.run.retime): the pages' own runs, and,
        when `grid` and at most every RETIME_SCAN_S, every point of the grid."""
        keys = [k for k, _ in land.own]
        now = time.time()
        if grid and now - land.scanned >= RETIME_SCAN_S:
            land.scanned = now
            keys += [k for k, _, _ in land.points if k not in keys]
        if not keys:
            return None
        load = load_average()
        cache = self._cache()
        key = retime.next_key(keys, cache.peek, now, load[0] if load else None, scheduler.cores(),
                              timed_at=cache.stored_at)
        hit = cache.peek(key) if key is not None else None
        if hit is not None and untimed(hit):
            land.scanned = 0.0  # the grid's untimed points one after another, not one per RETIME_SCAN_S
        return key

    def _submit(self, recipe: Recipe, priority: scheduler.Priority, is_retime: bool = False,
                untimed_point: bool = False) -> Point:
        if os.environ.get("RAY_ADDRESS") and not is_retime:  # a re-time is only timing: it stays on this machine
            return _RayPoint(recipe, self._cache, priority)
        how = [RETIME] if is_retime else [UNTIMED_POINT] if untimed_point else []
        return self._worker().submit((recipe.to_json(indent=None), priority, *how))


class _RayPoint:
    """A landscape point as a Ray task: compressed on the cluster (executor.prepare_portable), its latency timed
    here, on the machine whose figures the page shows, and stored here. Looks like a future."""

    def __init__(self, recipe: Recipe, cache_factory: Callable[[], RunCache], priority: scheduler.Priority):
        self._recipe, self._cache, self._priority = recipe, cache_factory, priority
        self._key = runner.run_key(recipe)
        self._outcome: dict[str, Any] | None = None
        self._refs = list(executor.parallel([(self._key, recipe.to_json(indent=None))], "ray", 1))

    def done(self) -> bool:
        if self._outcome is None:  # the timing waits in the scheduler while a page's own run goes
            res = executor.finish(self._cache(), self._key, self._recipe, self._refs[0], latency=True,
                                  priority=self._priority)
            self._outcome = {"status": res.get("status"), "key": self._key, "error": res.get("error")}
        return self._outcome is not None

    def result(self) -> dict[str, Any]:
        return self._outcome or {"status": "failed", "error": "not finished"}


Point = workers.Handle | _RayPoint  # a point in flight: done() and result(), like a future
