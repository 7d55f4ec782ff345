"""The landscape: a model's default grid measured in the background while pages look at it, so the curves and
Pareto fronts fill in on their own.

When a page opens a model, the model's landscape (the Sweep tab's default grid, explorer.run.grid.Grid) is
measured through the run cache in a worker process (or as Ray tasks where RAY_ADDRESS is set), nearest the
page's slider position first, and after a page's own run its neighbouring slider positions first of all.
Every page looking at a model shares its one landscape; the cache's per-key locks keep a configuration
from being computed twice. The worker runs at a lower priority and waits, between fine-tuning steps,
whenever a page's own run is going (explorer.run.jobs sets `busy`), so a slider move gets the cores first.
A landscape no page has looked at for EXPLORER_LANDSCAPE_IDLE_S seconds stops; EXPLORER_LANDSCAPE=0 turns
them off. The ordering and neighbours are pure functions, tested alone.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from explorer.compress.recipe import Recipe
from explorer.run import executor, runner
from explorer.run.cache import RunCache
from explorer.run.controls import BIT_OPTIONS, CLUSTER_OPTIONS, DEFAULTS, build
from explorer.run.grid import Grid

SPARSITY_STEP = 0.05  # one notch of the page's sparsity slider
_BIT_RANK = {b: i for i, b in enumerate(BIT_OPTIONS)}
_CLUSTER_RANK = {c: i for i, c in enumerate(CLUSTER_OPTIONS)}


def coords(c: dict[str, Any]) -> tuple[float, float, float]:
    """A configuration's place on the sliders, in notches: sparsity, bit-width, clusters."""
    return (c["sparsity"] / SPARSITY_STEP, float(_BIT_RANK.get(c["bits"], 0)),
            float(_CLUSTER_RANK.get(c["clusters"], 0)))


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
    """The slider positions one notch either way on sparsity, bit-width and clusters, other controls as they are."""
    out = []
    for delta in (-SPARSITY_STEP, SPARSITY_STEP):
        s = round(c["sparsity"] + delta, 2)
        if 0.0 <= s <= 0.95:
            out.append({**c, "sparsity": s})
    for options, name in ((BIT_OPTIONS, "bits"), (CLUSTER_OPTIONS, "clusters")):
        i = options.index(c[name])
        for j in (i - 1, i + 1):
            if 0 <= j < len(options) and options[j] != "bf16":
                out.append({**c, name: options[j]})
    return out


def default_points(card: dict) -> list[dict[str, Any]]:
    """The Sweep tab's default grid as page controls (what the landscape measures)."""
    g = Grid()
    names = {32: "fp32", 16: "fp16"}
    out = []
    for s in g.sparsity:
        for b in g.bits:
            for k in g.clusters:
                out.append({**DEFAULTS, "baseline": card["name"], "sparsity": s, "bits": names.get(b, str(b)),
                            "clusters": "off" if not k else str(k), "bn_adapt": bool(card.get("batchnorm"))})
    return out


@dataclass
class Landscape:
    card: dict
    points: list[tuple[str, tuple[float, ...], Recipe]]  # key, slider place, recipe
    position: tuple[float, ...] = (0.0, 0.0, 0.0)
    first: list[tuple[str, Recipe]] = field(default_factory=list)  # neighbours of a page's last run
    last_seen: float = field(default_factory=time.monotonic)
    paused: bool = False
    failed: set[str] = field(default_factory=set)
    running: str | None = None
    done: int = 0  # configurations this landscape computed (the rest were in the cache already)

    def next(self, cached) -> Recipe | None:
        recipes = {k: r for k, _, r in self.points} | dict(self.first)
        for key in order([(k, p) for k, p, _ in self.points], self.position, [k for k, _ in self.first]):
            if key not in self.failed and key != self.running and not cached(key):
                return recipes[key]
        return None

    def status(self, cached) -> dict:
        measured = sum(1 for k, _, _ in self.points if cached(k))
        return {"measured": measured, "total": len(self.points), "paused": self.paused, "running": self.running,
                "failed": len(self.failed), "computed_here": self.done}


_BUSY = None


def _worker_main(jobs, results, busy, threads: int) -> None:
    """The background worker process: lower priority, its torch threads fixed, the foreground's flag kept;
    it measures the points it is sent, one at a time, until it is sent None (or its parent ends: it is a
    daemon process, terminated at the parent's exit)."""
    global _BUSY
    _BUSY = busy
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    torch.set_num_threads(threads)
    while (recipe_json := jobs.get()) is not None:
        try:
            out = _measure(recipe_json)
        except Exception as e:  # reported as a failed point; the worker goes on
            out = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        results.put(out)


def _wait_for_foreground(fraction: float, message: str) -> None:
    """Progress callback of a background run: it waits here while a page's own run is going."""
    while _BUSY is not None and _BUSY.is_set():
        time.sleep(0.05)


def _measure(recipe_json: str) -> dict:
    """One landscape point in the worker, through the cache like every run."""
    recipe = Recipe.from_json(recipe_json)
    try:
        res = RunCache().get_or_run(recipe, progress=_wait_for_foreground)
    except ValueError as e:
        return {"status": "failed", "error": str(e)}
    return {"status": res.get("status"), "key": res.get("key") or (res.get("cache") or {}).get("key"),
            "error": res.get("error")}


class Landscapes:
    """Every model's landscape in this server process, and the thread that feeds the worker."""

    def __init__(self, cache_factory, key_of, busy, idle_s: float, tick_s: float = 0.5):
        self._cache, self._key_of, self._busy, self.idle_s, self.tick_s = cache_factory, key_of, busy, idle_s, tick_s
        self._all: dict[str, Landscape] = {}
        self._lock = threading.Lock()
        self._pool = None
        self._future = None  # (landscape name, key, future)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="explorer-landscape", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop feeding the worker and end it: at exit nothing waits for a background point (a worker ended
        mid-run leaves only scratch, which the next start-up removes)."""
        self._stopping.set()
        if self._pool is not None:
            self._pool.terminate()

    def cached(self, key: str) -> bool:
        return self._cache().peek(key) is not None

    def touch(self, card: dict, controls: dict[str, Any]) -> Landscape:
        """A page looks at `card` with its sliders at `controls`: the landscape (one per model) starts or goes on."""
        with self._lock:
            land = self._all.get(card["name"])
            if land is None:
                points = []
                for c in default_points(card):
                    try:
                        r = build(c, card)
                        points.append((self._key_of(r), coords(c), r))
                    except ValueError:
                        continue  # a grid point this model cannot take (an ONNX model, say)
                land = self._all[card["name"]] = Landscape(card, points)
            land.position, land.last_seen = coords(controls), time.monotonic()
            return land

    def after_run(self, card: dict, controls: dict[str, Any]) -> None:
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

    def pause(self, name: str, paused: bool) -> None:
        with self._lock:
            if name in self._all:
                self._all[name].paused = paused

    def get(self, name: str) -> Landscape | None:
        with self._lock:
            return self._all.get(name)

    def _worker(self) -> _Worker:
        if self._pool is None or not self._pool.alive():
            self._pool = _Worker(runner.train_threads())
        return self._pool

    def _loop(self) -> None:
        while not self._stopping.is_set():
            time.sleep(self.tick_s)
            try:
                self._tick()
            except Exception:  # the background must never take the server down; the next tick tries again
                time.sleep(5)

    def _tick(self) -> None:
        if self._pool is not None:  # the worker's copy of the foreground's flag
            self._pool.follow(self._busy.is_set())
        with self._lock:
            if self._future is not None:
                name, key, fut = self._future
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
                    if out.get("status") == "ok":
                        land.done += 1
                    else:
                        land.failed.add(key)
            now = time.monotonic()
            live = [land for land in self._all.values() if now - land.last_seen < self.idle_s and not land.paused]
            if not live:
                return
            land = max(live, key=lambda x: x.last_seen)
        recipe = land.next(self.cached)
        if recipe is None:
            return
        key = self._key_of(recipe)
        land.running = key
        future = self._submit(recipe)  # outside the lock: pages touch landscapes meanwhile
        with self._lock:
            self._future = (land.card["name"], key, future)

    def _submit(self, recipe: Recipe):
        if os.environ.get("RAY_ADDRESS"):
            return _RayPoint(recipe, self._cache, self._busy)
        return self._worker().submit(recipe.to_json(indent=None))


class _RayPoint:
    """A landscape point as a Ray task: compressed on the cluster (executor.prepare_portable), its latency timed
    here and stored here, one at a time, when no page's own run is going. Looks like a future."""

    def __init__(self, recipe: Recipe, cache_factory, busy):
        self._recipe, self._cache, self._busy = recipe, cache_factory, busy
        self._key = runner.run_key(recipe)
        self._outcome: dict | None = None
        self._refs = list(executor.parallel([(self._key, recipe.to_json(indent=None))], "ray", 1))

    def done(self) -> bool:
        if self._outcome is None and not self._busy.is_set():
            res = executor.finish(self._cache(), self._key, self._recipe, self._refs[0], latency=True)
            self._outcome = {"status": res.get("status"), "key": self._key, "error": res.get("error")}
        return self._outcome is not None

    def result(self) -> dict:
        return self._outcome or {"status": "failed", "error": "not finished"}


class _Worker:
    """One daemon worker process and its queues; `submit` returns a future-like handle of the one point in
    flight. A worker that dies fails its point and is replaced on the next submit."""

    def __init__(self, threads: int):
        ctx = multiprocessing.get_context("spawn")
        self._jobs, self._results, self._busy = ctx.Queue(), ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_worker_main, args=(self._jobs, self._results, self._busy, threads),
                                 name="explorer-landscape-worker", daemon=True)
        with executor.bare_main():  # the spawned worker must not run the page's script again
            self._proc.start()

    def alive(self) -> bool:
        return self._proc.is_alive()

    def follow(self, busy: bool) -> None:
        (self._busy.set if busy else self._busy.clear)()

    def submit(self, recipe_json: str) -> _Point:
        self._jobs.put(recipe_json)
        return _Point(self)

    def terminate(self) -> None:
        with contextlib.suppress(Exception):
            self._busy.clear()
            self._proc.terminate()
            self._proc.join(timeout=5)


class _Point:
    def __init__(self, worker: _Worker):
        self._worker, self._out = worker, None

    def done(self) -> bool:
        if self._out is None:
            with contextlib.suppress(Exception):
                self._out = self._worker._results.get_nowait()
            if self._out is None and not self._worker.alive():
                self._out = {"status": "failed", "error": "the background worker process died"}
        return self._out is not None

    def result(self) -> dict:
        return self._out or {"status": "failed", "error": "not finished"}
