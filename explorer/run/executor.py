"""Running many recipes: through the cache, compressed in parallel (a local process pool or Ray tasks), then
timed one at a time so parallel work never distorts a latency figure.

Work goes in chunks: a chunk is compressed in parallel, then each of its runs is timed alone and
committed to the cache, so an interrupted sweep resumes from the cache having lost one chunk at most.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import torch

from explorer.compress.recipe import Recipe
from explorer.core import paths, scratch
from explorer.core.errors import check_choice, check_range
from explorer.run import runner
from explorer.run.cache import RunCache
from explorer.run.result import failed, results_frame

SweepProgress = Callable[[int, int, float | None], None]  # done, total, seconds left (None until known)
BACKENDS = ("local", "ray")


def _init_worker() -> None:
    torch.set_num_threads(runner.train_threads())  # runner.prepare sets it again; a worker per that many cores
    os.environ["EXPLORER_EVAL_WORKERS"] = "1"  # every core has a worker of its own already


def prepare_portable(job: tuple[str, str]) -> dict:
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


def _ray_check(address: str | None) -> None:
    """Fail fast, in one line, when RAY_ADDRESS names a cluster that does not answer."""
    if not address or address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://")[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError):
        raise ValueError(f"RAY_ADDRESS={address!r} does not answer: expected a running Ray cluster "
                         "(host:port of its GCS), or unset it to start Ray on this machine") from None


def _died(job: tuple[str, str], error: BaseException) -> dict:

    err = RuntimeError(f"the worker process died ({type(error).__name__}: {error}); killed, or out of memory")
    return {"key": job[0], "result": failed(Recipe.from_json(job[1]), err), "files": {}}


@contextlib.contextmanager
def bare_main():
    """Spawned workers re-import the parent's __main__ from its file. Under Streamlit (and AppTest) that
    file is app.py, so each worker would run the whole page and wait on the very cache lock the sweep
    holds. While workers start, __main__ is an empty module, so they import only what a job needs."""
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


class _LocalPool:
    """One pool of spawned workers for the whole sweep: a worker costs about two seconds to start (it
    imports torch), so a pool per chunk would spend more on starting than on small runs. A worker that
    dies breaks the pool; it is then replaced on the next use."""

    def __init__(self, workers: int, fn: Callable[[tuple[str, str]], dict] | None = None):
        self.workers, self.fn, self.pool = workers, fn or prepare_portable, None

    def run(self, jobs: list[tuple[str, str]]) -> tuple[list[dict], list[tuple[str, str]]]:
        """(finished, jobs whose pool broke under them)."""
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker)
        done, broken = [], []
        with bare_main():  # workers start on submit: give them no script to re-run
            futures = {self.pool.submit(self.fn, j): j for j in jobs}
        for f in as_completed(futures):
            try:
                done.append(f.result())
            except BrokenProcessPool:
                broken.append(futures[f])
        if broken:
            self.close()
        return done, broken

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> _LocalPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parallel(jobs: list[tuple[str, str]], backend: str, workers: int,
              fn: Callable[[tuple[str, str]], dict] | None = None, pool: _LocalPool | None = None) -> Iterable[dict]:
    if backend == "ray":
        import ray

        address = os.environ.get("RAY_ADDRESS")
        _ray_check(address)
        if not ray.is_initialized():
            root = str(paths.ROOT)
            if address:  # a remote cluster gets the code and the baselines shipped as the working dir
                kw = {"address": address, "runtime_env": {"working_dir": root, "excludes": [".venv", "cache", ".git"]}}
            else:
                path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                kw = {"num_cpus": workers, "include_dashboard": False,
                      "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
            ray.init(ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR", **kw)
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_prepare)
        refs = {task.remote(j): j for j in jobs}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(ready[0])
            except Exception as e:  # a crashed or killed Ray worker
                yield _died(refs[ready[0]], e)
        return
    if workers == 1 and len(jobs) == 1:
        _init_worker()
        yield prepare_portable(jobs[0])
        return
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(_LocalPool(workers, fn))
        done, broken = pool.run(jobs)
        yield from done
    # the jobs a dying worker took down with it, each alone, to find the one that really kills its worker
    for job in broken:
        with _LocalPool(1, fn) as alone:
            again, still = alone.run([job])
        yield from again
        for j in still:
            yield _died(j, RuntimeError("process pool broken"))


def _ray_prepare(job: tuple[str, str]) -> dict:
    _init_worker()
    return prepare_portable(job)


def run_sweep(recipes: Sequence[Recipe], *, backend: str = "local", workers: int | None = None,
              progress: SweepProgress | None = None, cache=None, chunk: int | None = None,
              latency: bool = True) -> pd.DataFrame:
    """Run every recipe through the cache and return one row per run (failed runs included)."""

    check_choice("backend", backend, BACKENDS)
    if not recipes:
        raise ValueError("the sweep is empty: give at least one recipe or grid value")
    workers = workers or max(1, (os.cpu_count() or 1) // runner.train_threads())
    check_range("workers", workers, 1, 256, integer=True)
    cache = cache or RunCache()
    keys = [runner.run_key(r) for r in recipes]  # bad input (a missing checkpoint) fails here, before work
    results: dict[str, dict] = {}
    t0, total = time.perf_counter(), len(recipes)
    computed = [0]

    def report(computed_now: bool = False):
        computed[0] += computed_now
        if progress:
            done = len(results)
            rate = (time.perf_counter() - t0) / computed[0] if computed[0] else None
            progress(done, total, None if rate is None else rate * (total - done))

    for k in keys:
        hit = cache.get(k)
        if hit is not None:
            results[k] = {**hit, "cache": {"hit": True, "key": k}}
    report()
    pending = [(k, r) for k, r in zip(keys, recipes, strict=True) if k not in results]
    pending = list({k: r for k, r in pending}.items())  # the same run asked twice is computed once
    size = chunk or max(2 * workers, 4)
    pool = _LocalPool(workers) if backend == "local" else None
    try:
        _chunks(pending, size, cache, backend, workers, pool, results, latency, report)
    finally:
        if pool is not None:
            pool.close()
    rows = [results[k] for k in keys]
    return results_frame(rows)


def _chunks(pending, size, cache, backend, workers, pool, results, latency, report) -> None:
    """Compress a chunk in parallel, then time and store each of its runs one at a time."""

    for i in range(0, len(pending), size):
        part = pending[i:i + size]
        with contextlib.ExitStack() as locks:
            todo = []
            for k, r in part:
                locks.enter_context(cache.lock(k))
                hit = cache.get(k)  # another session may have computed it meanwhile
                if hit is not None:
                    results[k] = {**hit, "cache": {"hit": True, "key": k}}
                else:
                    todo.append((k, r))
            jobs = [(k, r.to_json(indent=None)) for k, r in todo]
            prepared = {out["key"]: out for out in (parallel(jobs, backend, workers, pool=pool) if jobs else [])}
            # timing happens here, after the chunk's parallel work, one run at a time
            for k, r in todo:
                out = prepared.get(k) or {"result": failed(r, RuntimeError("worker returned nothing"))}
                results[k] = finish(cache, k, r, out, latency)
                report(True)


def finish(cache, key: str, recipe: Recipe, out: dict, latency: bool) -> dict:

    res = out["result"]
    if res.get("status") != "ok":
        return res
    # named like the cache's own scratch folders, so a killed sweep's leftovers are cleaned up by it
    work = Path(tempfile.mkdtemp(prefix=f".work-{key}-{os.getpid()}-", dir=cache.root))
    try:
        for name, data in out["files"].items():
            (work / name).write_bytes(data)
        try:
            res = runner.time_run(res, work) if latency else res
            return {**cache.commit(key, work, res), "cache": {"hit": False, "key": key}}
        except Exception as e:  # one failed row, not a stopped sweep
            return failed(recipe, e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
