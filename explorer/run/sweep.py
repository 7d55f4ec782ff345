"""Sweeps: a grid (or list) of recipes run through the cache, compressed in parallel (a local process
pool or Ray tasks), then timed one at a time so parallel work never distorts a latency figure.

Work goes in chunks: a chunk is compressed in parallel, then each of its runs is timed alone and
committed to the cache, so an interrupted sweep resumes from the cache having lost one chunk at most.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from explorer.compress.recipe import Recipe
from explorer.core import paths
from explorer.core.errors import bad_value, check_choice, check_range
from explorer.core.words import recipe_words, scheme_of
from explorer.run.controls import grid_point

SweepProgress = Callable[[int, int, float | None], None]  # done, total, seconds left (None until known)
BACKENDS = ("local", "ray")
BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)


@dataclass(frozen=True)
class Grid:
    """Sparsity x bit-width x clusters, with technique details fixed or swept too. bits 32 = no
    quantisation, 16 = fp16, 8 = static int8 (weights and activations, the ONNX Runtime path), 2-7 =
    k-bit weights; clusters 0 = off; sparsity 0 = no pruning."""

    model: str = "digits_cnn"
    dataset: str = "digits"
    sparsity: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9, 0.95)
    bits: tuple[int, ...] = (32, 16, 8, 4)
    clusters: tuple[int, ...] = (0, 16)
    granularity: tuple[str, ...] = ("unstructured",)
    schedule: tuple[str, ...] = ("oneshot",)
    finetune_epochs: tuple[int, ...] = (2,)
    seed: int = 0
    bn_adapt: bool = False  # BatchNorm adaptation after pruning or clustering
    repeats: int = 1  # each recipe with seeds seed .. seed + repeats - 1 (fine-tuning order, calibration, k-means)
    checkpoint: str | None = None  # a user's model instead of models/<model>-<dataset>.safetensors
    quant_mode: str = "auto"  # the page's mode control: auto = static int8 at 8 bits, weights-only below

    def __post_init__(self):
        for name in ("sparsity", "bits", "clusters", "granularity", "schedule", "finetune_epochs"):
            if not getattr(self, name):
                raise ValueError(f"grid {name} is empty: give at least one value")
        for s in self.sparsity:
            check_range("sparsity", s, 0.0, 0.99)
        for b in self.bits:
            check_choice("bits", b, BITS)
        for c in self.clusters:
            if c != 0:
                check_range("clusters", c, 2, 256, integer=True)
        for e in self.finetune_epochs:
            check_range("finetune_epochs", e, 0, 1000, integer=True)
        check_range("repeats", self.repeats, 1, 100, integer=True)

    def recipes(self) -> list[Recipe]:
        out, seen = [], set()
        for s, b, c, g, sch, e, seed in itertools.product(self.sparsity, self.bits, self.clusters, self.granularity,
                                                          self.schedule, self.finetune_epochs,
                                                          range(self.seed, self.seed + self.repeats)):
            r = grid_point(self.model, self.dataset, sparsity=s, bits=b, clusters=c, granularity=g, schedule=sch,
                           finetune_epochs=e, seed=seed, bn_adapt=self.bn_adapt, checkpoint=self.checkpoint,
                           quant_mode=self.quant_mode)
            if r.canonical_json() not in seen:  # e.g. details that do not apply at sparsity 0
                seen.add(r.canonical_json())
                out.append(r)
        return out


# ---------------------------------------------------------------- running


def _init_worker() -> None:
    import torch

    from explorer.run.runner import train_threads

    torch.set_num_threads(train_threads())  # runner.prepare sets it again; a worker per that many cores


def prepare_portable(job: tuple[str, str]) -> dict:
    """Compress and measure everything but latency in a worker; bring the artifacts back as bytes so
    the worker may be another machine (Ray)."""
    from explorer.core import scratch
    from explorer.run import runner

    key, recipe_json = job
    recipe = Recipe.from_json(recipe_json)
    with scratch.folder("worker") as tmp:
        try:
            result = runner.prepare(recipe, tmp)
        except Exception as e:  # recorded as a failed run; the sweep goes on
            return {"key": key, "result": runner.failed_result(recipe, e), "files": {}}
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
    from explorer.run import runner

    err = RuntimeError(f"the worker process died ({type(error).__name__}: {error}); killed, or out of memory")
    return {"key": job[0], "result": runner.failed_result(Recipe.from_json(job[1]), err), "files": {}}


@contextlib.contextmanager
def _bare_main():
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
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker)
        done, broken = [], []
        with _bare_main():  # workers start on submit: give them no script to re-run
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


def _parallel(jobs: list[tuple[str, str]], backend: str, workers: int,
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
    from explorer.run import runner
    from explorer.run.cache import RunCache

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
    from explorer.run import runner

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
            prepared = {out["key"]: out for out in (_parallel(jobs, backend, workers, pool=pool) if jobs else [])}
            # timing happens here, after the chunk's parallel work, one run at a time
            for k, r in todo:
                out = prepared.get(k) or {"result": runner.failed_result(r, RuntimeError("worker returned nothing"))}
                results[k] = _finish(cache, k, r, out, latency)
                report(True)


def _finish(cache, key: str, recipe: Recipe, out: dict, latency: bool) -> dict:
    from explorer.run import runner

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
            return runner.failed_result(recipe, e)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- tables

SIZE_KINDS = ("file_bytes", "gzip_bytes", "zstd_bytes", "packed_bytes", "onnx_bytes", "onnx_int8_bytes")


def _recipe_params(recipe: dict) -> dict:
    p = {"sparsity_requested": 0.0, "bits": 32, "clusters": 0, "granularity": None, "technique": "baseline"}
    kinds = []
    for s in recipe.get("steps", []):
        kinds.append(s["kind"])
        if s["kind"] == "prune":
            p["sparsity_requested"] = 1 - s["n"] / s["m"] if s["granularity"] == "nm" else s["sparsity"]
            p["granularity"] = s["granularity"]
        elif s["kind"] == "cluster":
            p["clusters"] = s["clusters"]
        elif s["kind"] == "quantize":
            p["bits"] = s["bits"]
    p["technique"] = "+".join(kinds) or "baseline"
    return p


def flatten(result: dict) -> dict:
    """One table row from a RunResult: accuracy, sizes, factors, latency medians, the grid point."""
    recipe = result.get("recipe", {})
    row: dict[str, Any] = {"key": result.get("key"), "label": result.get("label"), "status": result.get("status"),
                           "error": result.get("error"), "model": result.get("model"), "dataset": result.get("dataset"),
                           **_recipe_params(recipe), "scheme": scheme_of(recipe.get("steps", [])),
                           "words": recipe_words(recipe), "seed": recipe.get("seed", 0),
                           "steps": len(recipe.get("steps", [])),
                           "config": json.dumps({k: v for k, v in recipe.items() if k not in ("seed", "name")},
                                                sort_keys=True),
                           "recipe_json": json.dumps(recipe, sort_keys=True),
                           "cache_hit": (result.get("cache") or {}).get("hit")}
    if result.get("status") != "ok":
        return row
    acc = result["accuracy"]
    row.update(top1=acc["top1"], top3=acc["top3"], top5=acc["top5"], baseline_top1=result["baseline_accuracy"]["top1"],
               accuracy_delta=result["accuracy_delta"], sparsity=result["sparsity"], params=result["params"],
               nonzero_params=result["nonzero_params"], macs=result["macs"], test_samples=result.get("test_samples"))
    for k, (lo, hi) in (result.get("accuracy_ci") or {}).items():
        row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
    vs = result.get("vs_baseline") or {}
    if vs:
        row.update({c: vs[c] for c in ("both_right", "baseline_only", "run_only", "both_wrong")},
                   delta_lo=vs["delta_ci"][0], delta_hi=vs["delta_ci"][1], p_value=vs["p_value"],
                   significant=vs["significant"])
    for k in SIZE_KINDS:
        row[k] = result["size"].get(k)
        row[f"rf_{k.replace('_bytes', '')}"] = result["reduction_factor"]["vs_fp32_file"].get(k)
        row[f"rf_same_{k.replace('_bytes', '')}"] = result["reduction_factor"]["same_kind"].get(k)
    for engine, per_batch in (result.get("latency") or {}).items():
        for b, v in per_batch.items():
            ok = v.get("available")
            row[lat_col(engine, b)] = v.get("median_ms") if ok else None
            row[lat_col(engine, b, "p90")] = v.get("p90_ms") if ok else None
            lo, hi = (v.get("ci_ms") or (None, None)) if ok else (None, None)
            row[lat_col(engine, b, "lo")], row[lat_col(engine, b, "hi")] = lo, hi
    for engine, per_batch in (result.get("speedup") or {}).items():
        for b, v in per_batch.items():
            row[f"speedup_{engine}_{b}"] = v["ratio"]
            row[f"speedup_{engine}_{b}_lo"], row[f"speedup_{engine}_{b}_hi"] = v["ci"]
    onnx = result.get("onnx", {})
    row["onnx_int8_top1"] = (onnx.get("int8", {}).get("accuracy") or {}).get("top1")
    row["onnx_fp32_top1"] = (onnx.get("fp32", {}).get("accuracy") or {}).get("top1")
    row["latency_ms"] = row.get("lat_torch_cpu_fp32_b1_ms")
    return row


def lat_col(engine: str, batch: str, stat: str | None = None) -> str:
    """The table column of a latency figure: lat_<engine>_<batch>_ms (the median), or _p90_ms, _lo_ms,
    _hi_ms (the median's interval)."""
    return f"lat_{engine}_{batch}_{stat}_ms" if stat else f"lat_{engine}_{batch}_ms"


def results_frame(results: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame([flatten(r) for r in results])


def parse_list(text: str, kind: type, name: str) -> tuple:
    """'0,0.5,0.9' -> (0.0, 0.5, 0.9); a bad item names the option and the value."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{name} is empty: give comma-separated values")
    out = []
    for t in items:
        if kind is str:
            out.append(t)
            continue
        try:
            out.append(int(t) if kind is int else float(t))
        except ValueError:
            raise bad_value(name, t, f"a comma-separated list of {kind.__name__}s") from None
    return tuple(out)
