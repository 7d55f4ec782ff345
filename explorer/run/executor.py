"""Running many recipes: through the cache, compressed in parallel by the scheduler's workers (explorer.run.workers:
a local pool, or Ray tasks where the backend is "ray"), then timed here one at a time, in the scheduler's quiet
slot, so parallel work never distorts a latency figure.

Work goes in chunks: a chunk is compressed in parallel, then each of its runs is timed alone and
committed to the cache, so an interrupted sweep resumes from the cache having lost one chunk at most.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from explorer.compress.recipe import Recipe
from explorer.core import scratch
from explorer.core.errors import check_choice, check_range
from explorer.core.train import compute_threads
from explorer.run import runner, scheduler, workers
from explorer.run.cache import RunCache
from explorer.run.result import UNTIMED, RunResult, failed, results_frame, untimed

SweepProgress = Callable[[int, int, float | None], None]  # done, total, seconds left (None until known)
BACKENDS = tuple(workers.POOLS)
Pool = workers.LocalPool | workers.RayPool  # the scheduler's workers, on this machine or Ray's


def _init_worker() -> None:
    compute_threads(runner.train_threads())  # a worker per that many cores
    os.environ["EXPLORER_EVAL_WORKERS"] = "1"  # every core has a worker of its own already


def prepare_portable(job: tuple[str, str]) -> dict[str, Any]:
    """Compress and measure everything but latency in a worker; bring the artifacts back as bytes so
    the worker may be another machine (Ray)."""

    key, recipe_json = job
    recipe = Recipe.from_json(recipe_json)
    with scratch.folder("worker") as tmp:
        try:
            result = runner.prepare(recipe, tmp)
        except Exception as e:  # recorded as a failed run; the sweep goes on
            return {"key": key, "result": failed(recipe, e), "files": {}}
        files = {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file() and not p.name.startswith(".")}
    return {"key": key, "result": result, "files": files}


def _died(job: tuple[str, str], error: BaseException) -> dict[str, Any]:
    err = RuntimeError(f"the worker process died ({type(error).__name__}: {error}); killed, or out of memory")
    return {"key": job[0], "result": failed(Recipe.from_json(job[1]), err), "files": {}}


def pool(backend: str, n: int, fn: Callable[[tuple[str, str]], dict[str, Any]] | None = None,
         priority: int = scheduler.Priority.SWEEP) -> Pool:
    """The scheduler's workers for `backend` ("local" or "ray"), running `fn` (default: prepare_portable)."""
    check_choice("backend", backend, BACKENDS)
    return workers.POOLS[backend](n, fn or prepare_portable, _init_worker, priority)


def parallel(jobs: list[tuple[str, str]], backend: str, n: int,
             fn: Callable[[tuple[str, str]], dict[str, Any]] | None = None,
             pool_: Pool | None = None) -> Iterable[dict[str, Any]]:
    """Each job's output, computed by the workers, as they finish (a job whose worker died: a failed run)."""
    with contextlib.ExitStack() as stack:
        if pool_ is None:
            pool_ = pool(backend, n, fn)
            stack.callback(pool_.close)
        yield from pool_.results(jobs, _died)


@dataclass(frozen=True)
class Estimate:
    """What a sweep will cost before it starts: how many of its runs are stored already, and the seconds the rest
    will take (None where no run of this model has been measured yet), from `basis` runs measured so far."""

    total: int
    stored: int
    seconds: float | None
    basis: int


def estimate(recipes: Sequence[Recipe], measured: Sequence[Mapping[str, Any]], stored: set[str] | frozenset[str],
             workers: int) -> Estimate:
    """The seconds the runs not stored will take, from the runs of the same model measured so far: each run's
    compression and scoring as a fixed part plus a part per training epoch (least squares over the measured runs'
    seconds against their epochs), shared by `workers` side by side, and its latency timing one run at a time."""
    keys = [runner.run_key(r) for r in recipes]
    todo = [r for k, r in zip(keys, recipes, strict=True) if k not in stored]
    points = []
    for m in measured:
        t = m.get("timings") or {}
        if "total_prepare" not in t:
            continue
        try:
            epochs = sum(s.training_epochs() for s in Recipe.from_dict(m["recipe"]).steps)
        except (KeyError, ValueError, TypeError):
            continue
        points.append((float(epochs), float(t["total_prepare"]), float(t.get("latency") or 0.0)))
    if not todo or not points:
        return Estimate(len(recipes), len(recipes) - len(todo), 0.0 if not todo else None, len(points))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    per_epoch = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var) if var else 0.0
    fixed = max(0.0, my - per_epoch * mx)
    timing = statistics.median(p[2] for p in points)
    work = sum(fixed + per_epoch * sum(s.training_epochs() for s in r.steps) for r in todo)
    return Estimate(len(recipes), len(recipes) - len(todo), work / max(workers, 1) + timing * len(todo), len(points))


def run_sweep(recipes: Sequence[Recipe], *, backend: str = "local", workers: int | None = None,
              progress: SweepProgress | None = None, cache: RunCache | None = None, chunk: int | None = None,
              latency: bool = True) -> pd.DataFrame:
    """Run every recipe through the cache and return one row per run (failed runs included)."""

    check_choice("backend", backend, BACKENDS)
    if not recipes:
        raise ValueError("the sweep is empty: give at least one recipe or grid value")
    n = workers or max(1, scheduler.cores() // runner.train_threads())
    check_range("workers", n, 1, 256, integer=True)
    cache = cache or RunCache()
    keys = [runner.run_key(r) for r in recipes]  # bad input (a missing checkpoint) fails here, before work
    results: dict[str, RunResult] = {}
    t0, total = time.perf_counter(), len(recipes)
    computed = [0]

    def report(computed_now: bool = False) -> None:
        computed[0] += computed_now
        if progress:
            done = len(results)
            rate = (time.perf_counter() - t0) / computed[0] if computed[0] else None
            progress(done, total, None if rate is None else rate * (total - done))

    report()
    for k, r in zip(keys, recipes, strict=True):
        hit = cache.get(k)
        timed_now = hit is not None and latency and untimed(hit)
        if timed_now:  # a landscape point stored untimed: timed here, first (seconds each, so said as it goes)
            with scheduler.priority(scheduler.Priority.SWEEP):
                hit = cache.get_or_run(r)
        if hit is not None:
            results[k] = {**hit, "cache": {"hit": True, "key": k}}
            if timed_now:
                report(computed_now=True)
    report()
    pending = [(k, r) for k, r in zip(keys, recipes, strict=True) if k not in results]
    pending = list({k: r for k, r in pending}.items())  # the same run asked twice is computed once
    size = chunk or max(2 * n, 4)
    with contextlib.closing(pool(backend, n)) as workers_:  # one pool for the whole sweep: workers start once
        _chunks(pending, size, cache, workers_, results, latency, report)
    rows = [results[k] for k in keys]
    return results_frame(rows)


def _chunks(pending: list[tuple[str, Recipe]], size: int, cache: RunCache, workers_: Pool,
            results: dict[str, RunResult], latency: bool, report: Callable[[bool], None]) -> None:
    """Compress a chunk in parallel, then time and store each of its runs one at a time."""

    for i in range(0, len(pending), size):
        part = pending[i:i + size]
        with contextlib.ExitStack() as locks:
            todo: list[tuple[str, Recipe]] = []
            for k, r in part:
                locks.enter_context(cache.lock(k))
                hit = cache.get(k)  # another session may have computed it meanwhile
                if hit is not None:
                    results[k] = {**hit, "cache": {"hit": True, "key": k}}
                else:
                    todo.append((k, r))
            jobs = [(k, r.to_json(indent=None)) for k, r in todo]
            prepared = {out["key"]: out for out in (workers_.results(jobs, _died) if jobs else [])}
            # timing happens here, after the chunk's parallel work, one run at a time
            for k, r in todo:
                out = prepared.get(k) or {"result": failed(r, RuntimeError("worker returned nothing"))}
                results[k] = finish(cache, k, r, out, latency)
                report(True)


def finish(cache: RunCache, key: str, recipe: Recipe, out: dict[str, Any], latency: bool,
           priority: int = scheduler.Priority.SWEEP) -> RunResult:
    """Time a run prepared by a worker, here (the machine whose figures are shown), and store it."""

    res: RunResult = out["result"]
    if res.get("status") != "ok":
        return res
    # in the cache's scratch space: a killed sweep's leftovers are removed by the next start or verify --fix
    with cache.workspace("work", key) as work:
        for name, data in out["files"].items():
            (work / name).write_bytes(data)
        try:
            with scheduler.priority(priority):
                res = runner.time_run(res, work) if latency else RunResult(**{**res, "pending": [UNTIMED]})
            return {**cache.commit(key, work, res), "cache": {"hit": False, "key": key}}
        except Exception as e:  # one failed row, not a stopped sweep
            return failed(recipe, e)
