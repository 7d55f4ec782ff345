"""Where the explorer starts its threads and processes: every one is started here, under its name, so that
docs/ARCHITECTURE.md's table of how work runs names them all and nothing starts anywhere else (test_spawn holds
the code to that). When work runs, and at what priority, is the scheduler's to decide (explorer.run.scheduler,
which starts its threads through `thread`); this module only starts things and makes children die with their
parent. Standard library only.

Processes use multiprocessing's "spawn" start method: a child imports the parent's `__main__` file again, as
`__mp_main__`. The one guard that keeps a page's child from drawing the page is app.py's own
`if __name__ == "__main__"`; every other entry (the command line, a benchmark, pytest) has its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.context import SpawnProcess
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def thread(target: Callable[[], Any], name: str) -> threading.Thread:
    """A daemon thread, started: a thread left running never holds the process open at exit."""
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t


def scorers(n: int) -> ThreadPoolExecutor:
    """The threads that score test images side by side, each batch as one thread would (explorer.core.train)."""
    return ThreadPoolExecutor(n, thread_name_prefix="explorer-score")


def process(target: Callable[..., Any], args: Sequence[Any], name: str) -> SpawnProcess:
    """A child process of the "spawn" start method, a daemon (it ends when its parent ends normally), started."""
    p = multiprocessing.get_context("spawn").Process(target=target, args=tuple(args), name=name, daemon=True)
    p.start()
    return p


def process_pool(workers: int, initializer: Callable[..., Any], initargs: Sequence[Any]) -> ProcessPoolExecutor:
    """A pool of `workers` "spawn" processes, started as jobs are submitted."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=tuple(initargs))


def pipe() -> tuple[Any, Any]:
    """Both ends of a pipe for a "spawn" child."""
    return multiprocessing.get_context("spawn").Pipe()


def queue() -> Any:
    """A queue a "spawn" child shares with its parent."""
    return multiprocessing.get_context("spawn").Queue()


def command(argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """A program of the machine's own (nvidia-smi), its output as text; OSError or SubprocessError where it fails."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)


def die_with_parent(parent: int, code: int = 1, every_s: float = 1.0) -> None:
    """In a child: end (with `code`) when the process `parent` ends, whatever it died of. The kernel is asked
    for SIGKILL when the parent goes (prctl PR_SET_PDEATHSIG on Linux) and, because it sends that when the
    starting *thread* ends and not everywhere, a thread watches the parent's pid too; it runs beside work that
    holds no interpreter lock (torch, ONNX Runtime), so even a hostile graph is stopped."""
    with contextlib.suppress(Exception):  # not Linux, or no libc: the watch below still holds
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(code)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(code)

    thread(watch, "explorer-parent-watch")
