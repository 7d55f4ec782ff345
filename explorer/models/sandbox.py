"""Checking a user's model in a child process, under a wall-clock and a memory limit.

Reading a model file and running it on a few images is where a hostile file does its harm: an ONNX Loop of
10^12 iterations never returns, nested If branches or a ConstantOfShape ask for gigabytes, a deflated
checkpoint record unpacks to gigabytes. So that work runs in a child process (multiprocessing's "spawn":
the page's server has threads, and forking a threaded torch process is unsafe), which is killed once it runs
past EXPLORER_CHECK_TIMEOUT_S or grows past EXPLORER_CHECK_MAX_MB. The caller's process never runs the
model: paths go in, a small picklable verdict (the function's return value, or one line) comes back.
A child that answered, within the limits and without growing, is kept for the next check (loading torch
costs seconds); one that was killed, or ran code the user trusted, never is; an idle one leaves after IDLE_S.

Each check may take EXPLORER_CHECK_MAX_MB, so at most EXPLORER_MAX_CHECKS run at once, across the page's sessions
and the command lines that share the cache folder (explorer.core.slots); the others wait their turn, and the
caller is told how many go first. A model whose weights alone would pass the memory limit is refused before it
is built (`check_weights`): the limit kills it anyway, after it has taken the memory.

The memory limit is enforced twice: the child caps its own address space (RLIMIT_AS, with room for the
address space that libraries and threads reserve without using), so an allocation past it fails at once;
and the parent watches the child's resident memory and kills it past the limit. The clock and the memory
baseline start once torch and ONNX Runtime are loaded (trusted code, slow on a busy machine, bounded by
START_S), and the checked function may start them again (`start_clock`) after loading trusted data. Work it
marks with `preparing` (the data set it checks the model on) is named instead of the model when it runs out of
memory: an image size too large for the limit is the data's fault, not the model's.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from explorer.core import settings, slots, spawn
from explorer.core.errors import first_line

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

START_S = 600.0  # loading the libraries in the fresh process: our own code, but minutes on a loaded machine
POLL_S = 0.05
IDLE_S = 300.0  # an idle checking process leaves after this long
WEIGHT_MARGIN = 1.25  # building a model (its initialisation) and running it on the test images take more
KEEP_GROWTH = 512 * 2**20  # a process that kept more memory than this from a check is not used again
MEMORY_SIGNS = ("bad_alloc", "can't allocate memory", "cannot allocate memory", "failed to allocate",
                "out of memory", "memoryerror")

_conn: Connection | None = None  # the child's end of the pipe; None in any other process
_preparing: str | None = None  # in the child: what `preparing` marks now (or marked when memory ran out)
_idle: list[_Worker] = []  # in the caller: checking processes waiting for the next check
_idle_lock = threading.Lock()


def limits() -> tuple[float, int]:
    """(seconds, megabytes) a check may take."""
    return settings.get("EXPLORER_CHECK_TIMEOUT_S"), int(settings.get("EXPLORER_CHECK_MAX_MB"))


def max_checks() -> int:
    return int(settings.get("EXPLORER_MAX_CHECKS"))


def waiting(ahead: int) -> str:
    """What a check waiting its turn says, `ahead` being the checks running and those queued before it."""
    return (f"The check is waiting for {ahead} other{'s' if ahead != 1 else ''} to finish (at most {max_checks()} "
            "run at once: EXPLORER_MAX_CHECKS).")


def check_weights(arch: str, params: int) -> None:
    """A model of `params` parameters refused, before it is built, where its weights (4 bytes each, with
    WEIGHT_MARGIN for building and running it) pass the check's memory limit."""
    max_mb = limits()[1]
    need_mb = math.ceil(params * 4 * WEIGHT_MARGIN / 2**20)
    if need_mb > max_mb:
        raise ValueError(f"architecture {arch!r} has {params:,} parameters, which need about {need_mb:,} MB to check "
                         f"(4 bytes each, and a quarter more to build and run it), over the limit of {max_mb:,} MB: "
                         f"refused before it is built (the limit is EXPLORER_CHECK_MAX_MB={max_mb})")


def timeout_refusal(what: str, seconds: float) -> ValueError:
    return ValueError(f"{what} took longer than {seconds:g} s to check (a loop, or a graph too large to run "
                      f"here): refused (the limit is EXPLORER_CHECK_TIMEOUT_S={seconds:g})")


def memory_refusal(what: str, max_mb: int, preparing: str | None = None) -> ValueError:
    if preparing is not None:  # the data the model is checked on, before the model ran: say so, not "a graph"
        return ValueError(f"{preparing} needed more than {max_mb:,} MB of memory while {what} was being checked: "
                          f"the data is too large to check on here, not the model: refused (the limit is "
                          f"EXPLORER_CHECK_MAX_MB={max_mb}; a smaller image size, --image-size, needs less)")
    return ValueError(f"{what} needed more than {max_mb:,} MB of memory to check (a graph or a tensor too large "
                      f"to run here): refused (the limit is EXPLORER_CHECK_MAX_MB={max_mb})")


class _Worker:
    """A spawned checking process and the caller's end of its pipe."""

    def __init__(self) -> None:
        self.conn, child_end = spawn.pipe()
        self.proc = spawn.process(_serve, (child_end, os.getpid()), "explorer-check")
        child_end.close()  # the child holds the only other end: its death reads as end-of-file here
        self.base: int | None = None  # resident bytes at its first clock: libraries loaded

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()


def _take() -> _Worker:
    with _idle_lock:
        while _idle:
            w = _idle.pop()
            if w.proc.is_alive():
                return w
            w.close()
    return _Worker()


def _give_back(w: _Worker) -> None:
    now = _rss(w.proc.pid)
    with _idle_lock:
        keep = not _idle and now is not None and w.base is not None and now - w.base < KEEP_GROWTH
        if keep:
            _idle.append(w)
    if not keep:
        w.close()


def run_checked(fn: Callable[..., Any], *args: Any, what: str, reuse: bool = True,
                on_wait: Callable[[int], None] | None = None, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a child process under the check limits, once fewer than EXPLORER_MAX_CHECKS checks
    run (`on_wait` is told how many go first while it waits). `fn` is a module-level function and its
    arguments and result are small and picklable (paths, not models). Its ValueError is raised here as the
    same one line; a timeout, a memory kill, or a crash is a one-line ValueError naming `what`. `reuse=False`
    for code the user trusted: the process it ran in is not used again."""
    with slots.slot("checks", max_checks(), on_wait):
        return _run(fn, args, kwargs, what, reuse)


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], what: str, reuse: bool) -> Any:
    timeout_s, max_mb = limits()
    w = _take()
    job = ("job", fn, args, kwargs, dict(os.environ), os.getcwd(), list(sys.path))
    try:
        w.conn.send(job)
    except (BrokenPipeError, OSError):  # it left while idle, just now
        w.close()
        w = _Worker()
        w.conn.send(job)
    try:
        msg = _wait(w, what, timeout_s, max_mb)
    except BaseException:  # killed, crashed, or the caller interrupted: this process is done
        w.close()
        raise
    if reuse and msg[0] in ("ok", "error"):
        _give_back(w)
    else:  # a memory failure may leave it half-broken; trusted code may have changed it
        w.close()
    return _verdict(msg, what, max_mb)


def _wait(w: _Worker, what: str, timeout_s: float, max_mb: int) -> tuple[str, Any]:
    """The child's verdict, ("ok" | "error" | "memory" | "crash", value); a kill or a death is raised."""
    deadline, base, preparing = time.monotonic() + START_S, None, None
    while True:
        if w.conn.poll(POLL_S):
            try:
                msg: tuple[str, Any] = w.conn.recv()
            except (EOFError, OSError):
                w.proc.join(10)
                if base is not None and w.proc.exitcode == -getattr(signal, "SIGXCPU", 0):
                    raise timeout_refusal(what, timeout_s) from None  # the child's own backstop
                raise ValueError(f"{what} crashed the process that checked it ({_how(w.proc.exitcode)}; the check "
                                 f"allows {timeout_s:g} s and {max_mb:,} MB): refused") from None
            if msg[0] == "clock":
                deadline, base = time.monotonic() + timeout_s, msg[1]
                w.base = base if w.base is None else w.base
                continue
            if msg[0] == "preparing":
                preparing = msg[1]
                continue
            return msg
        now_rss = _rss(w.proc.pid)
        if base is not None and now_rss is not None and now_rss - base > max_mb * 2**20:
            w.proc.kill()
            raise memory_refusal(what, max_mb, preparing)
        if time.monotonic() > deadline:
            w.proc.kill()
            if base is None:
                raise ValueError(f"the process that checks {what} did not start within {START_S:g} s "
                                 "(the machine is too busy): try again")
            raise timeout_refusal(what, timeout_s)


def _verdict(msg: tuple[str, Any], what: str, max_mb: int) -> Any:
    kind, value = msg
    if kind == "ok":
        return value
    if kind == "memory":
        raise memory_refusal(what, max_mb, value)
    if kind == "error":
        raise ValueError(value)
    raise ValueError(f"{what} could not be checked: {value}")


def _how(code: int | None) -> str:
    if code is None:
        return "it did not answer"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _rss(pid: int | None) -> int | None:  # None: a process not started (no /proc entry)
    """Resident bytes of a process (Linux); None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- in the child


def start_clock() -> None:
    """In the child: the time and memory limits count from now (call it after loading trusted data). A no-op
    in any other process."""
    if _conn is None:
        return
    import resource

    timeout_s, max_mb = limits()
    size = _address_space()
    if size is not None:  # twice the limit: threads' stacks and malloc's arenas reserve address space they never use
        _soft_limit(resource.RLIMIT_AS, size + 2 * max_mb * 2**20)
    # a backstop should the parent die without killing this process: CPU seconds for every core, and a minute
    used = resource.getrusage(resource.RUSAGE_SELF)
    _soft_limit(resource.RLIMIT_CPU, int(used.ru_utime + used.ru_stime + timeout_s * (os.cpu_count() or 1) + 60))
    _conn.send(("clock", _rss(os.getpid()) or 0))


@contextlib.contextmanager
def preparing(what: str) -> Iterator[None]:
    """In the child: the work inside is `what` ("the fashion-mnist images at 512x512"), data the model is checked
    on, so running out of memory inside it is reported as that, not as the model's. A no-op in any other process."""
    global _preparing
    if _conn is None:
        yield
        return
    _preparing = what
    _conn.send(("preparing", what))
    try:
        yield
    except BaseException as e:
        if not _is_memory(e):  # a memory failure keeps the mark, for the verdict _serve sends
            _preparing = None
            _conn.send(("preparing", None))
        raise
    _preparing = None
    _conn.send(("preparing", None))


def _soft_limit(which: int, want: int) -> None:
    import resource

    try:
        _, hard = resource.getrlimit(which)
        resource.setrlimit(which, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    except (OSError, ValueError):  # a platform without this limit: the parent's watch still applies
        pass


def _few_arenas() -> None:
    """glibc gives each thread its own 64 MB malloc arena (address space, counted by RLIMIT_AS): keep two."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _silence() -> None:
    """The verdict is the child's only output: ONNX Runtime's and torch's own logging (an allocation failure is
    logged in colour before it is raised) would add lines to a refusal that is one line."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _is_memory(e: BaseException) -> bool:
    seen: BaseException | None = e
    while seen is not None:  # `raise ... from None` keeps the original as __context__
        if isinstance(seen, MemoryError) or any(s in str(seen).lower() for s in MEMORY_SIGNS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _serve(conn: Connection, parent: int) -> None:
    """The checking process: one job at a time until told to stop, idle for IDLE_S, or its caller is gone."""
    global _conn, _preparing
    _conn = conn
    _few_arenas()
    _silence()
    import resource
    import tempfile

    _soft_limit(resource.RLIMIT_CORE, 0)  # a crash leaves no core file of up to the memory limit behind
    # a child whose parent has gone (killed, so its kill never came) stops itself, beside a hostile graph too
    spawn.die_with_parent(parent, code=3, every_s=0.5)
    while conn.poll(IDLE_S):
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        _, fn, args, kwargs, env, cwd, path = job
        os.environ.clear()  # the caller's settings and folders as they are now, not when this process began
        os.environ.update(env)
        sys.path[:] = path  # where the caller's trusted plugins (EXPLORER_PLUGINS) are imported from
        tempfile.tempdir = None
        _preparing = None
        try:
            os.chdir(cwd)
            start_clock()
            msg: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except BaseException as e:  # everything goes back as one line; nothing is printed
            if _is_memory(e):
                msg = ("memory", _preparing)
            elif isinstance(e, ValueError):
                msg = ("error", str(e))
            else:
                msg = ("crash", f"{type(e).__name__}: {first_line(e, 200)}")
        try:
            conn.send(msg)
        except MemoryError:
            conn.send(("memory", None))
