"""The processes the scheduler (explorer.run.scheduler) starts: a sweep's pool of workers, here or on a Ray
cluster, and the landscape's one long-lived worker.

Every local worker dies with the process that started it (explorer.core.spawn.die_with_parent): a killed sweep or
page never leaves workers behind, each holding a gigabyte and blocked on a pipe nobody writes. They are started
through explorer.core.spawn, like every thread and process of the explorer. Pools and workers are started
and closed by the same long-lived thread (a sweep's own call, the landscape's feeding loop).

A worker process does its work at the priority its starter gives it (`set_default_priority`), under the
same rules as a thread of the page: the lock files of the cache folder are shared by every process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from explorer.core import paths, spawn
from explorer.run import scheduler

Job = tuple[str, str]  # (run key, recipe JSON)


def _start(parent: int, priority: int, setup: Callable[[], None] | None) -> None:
    spawn.die_with_parent(parent)
    scheduler.set_default_priority(priority)
    if setup is not None:
        setup()


class LocalPool:
    """Workers on this machine, started once for a whole sweep (a worker costs about two seconds to start: it
    imports torch). A worker that dies breaks the pool, which is then started again on the next use."""

    def __init__(self, workers: int, fn: Callable[[Job], dict[str, Any]], setup: Callable[[], None] | None = None,
                 priority: int = scheduler.Priority.SWEEP):
        self.workers, self.fn, self.setup, self.priority = workers, fn, setup, priority
        self.pool: ProcessPoolExecutor | None = None

    def run(self, jobs: list[Job]) -> tuple[list[dict[str, Any]], list[Job]]:
        """(finished, jobs whose pool broke under them)."""
        if self.pool is None:
            self.pool = spawn.process_pool(self.workers, _start, (os.getpid(), self.priority, self.setup))
        done: list[dict[str, Any]] = []
        broken: list[Job] = []
        futures = {self.pool.submit(self.fn, j): j for j in jobs}
        for f in as_completed(futures):
            try:
                done.append(f.result())
            except BrokenProcessPool:
                broken.append(futures[f])
        if broken:
            self.close()
        return done, broken

    def results(self, jobs: list[Job], died: Callable[[Job, BaseException], dict[str, Any]]
                ) -> Iterable[dict[str, Any]]:
        """Each job's output as it finishes; a job that kills its worker gives `died(job, error)`."""
        if self.workers == 1 and len(jobs) == 1 and self.pool is None:  # one run: here, no worker started for it
            with scheduler.priority(self.priority):
                if self.setup is not None:
                    self.setup()
                out = self.fn(jobs[0])
            yield out
            return
        done, broken = self.run(jobs)
        yield from done
        # the jobs a dying worker took down with it, each alone, to find the one that really kills its worker
        for job in broken:
            with LocalPool(1, self.fn, self.setup, self.priority) as alone:
                again, still = alone.run([job])
            yield from again
            for j in still:
                yield died(j, RuntimeError("process pool broken"))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ray_check(address: str | None) -> None:
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


LOOPBACK = "127.0.0.1"
RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _single_node() -> Iterator[None]:
    """While a local Ray starts: its cluster mode off, so that it stays on loopback. Each of Ray's servers (the
    GCS, raylet, object manager, agents and their HTTP job API, metrics, every worker) listens on all
    interfaces unless the node's address is loopback, and Ray replaces a node address of 127.0.0.1 with the
    machine's own while that mode is on: anyone on the network could then send the cluster a program to run
    (ShadowRay, CVE-2023-48022). The switch is read once, when ray is imported (hence the constant too), and by
    the processes Ray starts (hence the environment); both are put back, for a later RAY_ADDRESS."""
    constants: Any = importlib.import_module("ray._private.ray_constants")
    saved = constants.ENABLE_RAY_CLUSTER, os.environ.get(RAY_CLUSTER_SWITCH)
    constants.ENABLE_RAY_CLUSTER = False
    os.environ[RAY_CLUSTER_SWITCH] = "0"
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[RAY_CLUSTER_SWITCH] = saved[1]


def _check_loopback(ray: Any) -> None:
    """A local Ray that came up on another address (a later Ray that moved the switch) is stopped, not used."""
    host = str(ray.get_runtime_context().gcs_address).rpartition(":")[0].strip("[]")
    if host not in (LOOPBACK, "::1"):
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {host}, reachable from the network, and was stopped: "
                           "this Ray version does not keep a local cluster on 127.0.0.1; set RAY_ADDRESS to "
                           "a cluster of your own, or use the local backend")


def _ray_job(fn: Callable[[Job], dict[str, Any]], setup: Callable[[], None] | None, priority: int,
             job: Job) -> dict[str, Any]:
    scheduler.set_default_priority(priority)
    if setup is not None:
        setup()
    return fn(job)


class RayPool:
    """Ray tasks, one core each: on the cluster RAY_ADDRESS names (the code and baselines shipped as the
    working folder), else on a Ray started here with `workers` cores."""

    def __init__(self, workers: int, fn: Callable[[Job], dict[str, Any]], setup: Callable[[], None] | None = None,
                 priority: int = scheduler.Priority.SWEEP):
        self.workers, self.fn, self.setup, self.priority = workers, fn, setup, priority

    def _init(self) -> Any:  # the ray module (imported only where Ray is used)
        import ray

        address = os.environ.get("RAY_ADDRESS")
        ray_check(address)
        if address == "local":  # Ray's word for a Ray started here, like none at all
            address = None
        if not ray.is_initialized():
            root = str(paths.ROOT)
            kw: dict[str, Any]
            if address:
                kw = {"address": address, "runtime_env": {"working_dir": root, "excludes": [".venv", "cache", ".git"]}}
            else:  # local workers share this machine's lock files, so they yield to timing like any other
                path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                env = {"PYTHONPATH": path, "EXPLORER_CACHE_DIR": str(paths.cache_dir())}
                kw = {"num_cpus": self.workers, "include_dashboard": False, "runtime_env": {"env_vars": env},
                      "_node_ip_address": LOOPBACK}
            with contextlib.nullcontext() if address else _single_node():
                # Ray takes a logging level by name too, though its annotation says int
                ray.init(ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR", **kw)  # type: ignore[arg-type]
            if not address:
                _check_loopback(ray)
        return ray

    def results(self, jobs: list[Job], died: Callable[[Job, BaseException], dict[str, Any]]
                ) -> Iterable[dict[str, Any]]:
        ray = self._init()
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_job)
        refs = {task.remote(self.fn, self.setup, self.priority, j): j for j in jobs}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(ready[0])
            except Exception as e:  # a crashed or killed Ray worker
                yield died(refs[ready[0]], e)

    def close(self) -> None:
        pass


POOLS: dict[str, type[LocalPool] | type[RayPool]] = {"local": LocalPool, "ray": RayPool}


class Worker:
    """One long-lived worker process that calls `main(jobs, results, *args)`: it takes jobs from `jobs` and
    puts what they give in `results`. `submit` returns a future-like handle of the one job in flight; a
    worker that dies fails that job (and its starter makes a new one)."""

    def __init__(self, main: Callable[..., None], *args: Any, name: str, priority: int):
        self._jobs, self._results = spawn.queue(), spawn.queue()
        self._proc = spawn.process(_worker_entry, (os.getpid(), priority, main, self._jobs, self._results, *args),
                                   name)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def submit(self, job: Any) -> Handle:
        self._jobs.put(job)
        return Handle(self)

    def terminate(self) -> None:
        with contextlib.suppress(Exception):
            self._proc.terminate()
            self._proc.join(timeout=5)


def _worker_entry(parent: int, priority: int, main: Callable[..., None], *args: Any) -> None:
    _start(parent, priority, None)
    main(*args)


class Handle:
    def __init__(self, worker: Worker):
        self._worker = worker
        self._out: dict[str, Any] | None = None

    def done(self) -> bool:
        if self._out is None:
            with contextlib.suppress(Exception):
                self._out = self._worker._results.get_nowait()
            if self._out is None and not self._worker.alive():
                self._out = {"status": "failed", "error": "the background worker process died"}
        return self._out is not None

    def result(self) -> dict[str, Any]:
        return self._out or {"status": "failed", "error": "not finished"}
