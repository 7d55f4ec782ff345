"""Latency with warm-up, interleaved rounds, median, p90 and an interval for the median, a fixed thread
count, and the hardware beside it; speed-ups as ratios timed in the same rounds.

Engines: PyTorch eager on the CPU, ONNX Runtime on the CPU (fp32 and int8 models), and on a CUDA GPU
PyTorch eager fp32/fp16/bf16 timed with CUDA events plus ONNX Runtime's CUDA provider when present.
An engine that cannot run says so ("not available" with the reason), never a 0 or a made-up figure.

Every engine at a batch size, and the baseline it is compared with, is timed in the same rounds: each
round times each of them for a slice of the budget, in a rotated order. A change in the machine's load
during the session (another process, a frequency step) then hits the baseline and the run alike, and a
speed-up is the median of the per-round ratios, with its interval (explorer.core.stats). A round in which
the timing did not have the CPU is dropped and replaced (explorer.measure.timing_checks). Which timers are
timed together, and the speed-ups, are explorer.measure.speedup's.

Before the first timing the process's memory allocator is set to keep freed blocks (`steady_allocator`):
by default glibc hands a large freed block back to the system and faults the pages in again on the next
call, about 1,600 page faults per batch-256 call of the digits CNN in a fresh process (15 ms against 9 ms),
and how often it does so depends on what the process allocated before. The same model's time then moved
40% between quiet sessions while its speed-ups stayed put, and the reference check failed on it.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import numpy as np
import torch
from torch import nn

from explorer.core.engines import BATCH_SIZES
from explorer.core.errors import first_line
from explorer.core.figures import LatencyFigure
from explorer.core.stats import median_ci
from explorer.core.train import timing_threads
from explorer.measure.timing_checks import cpu_share, round_kept

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

BATCHES = BATCH_SIZES  # the batch sizes every run is timed at
WARM_ROUNDS = 1  # whole rounds run first and not kept
WARM_CALL_MS = 50.0  # a timer whose calls take less gets one untimed call before each of its slices
ROUNDS = 10  # an even count balances who opens a round; the median's interval spans ranks 2 to 9 (98% coverage)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes: blocks below it come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept for the next call instead of handed back
_allocator: list[str] = []  # what steady_allocator did, once per process
# A timer runs the engine once; it returns None to be timed by the host clock, or the milliseconds it
# measured itself (CUDA events: the host clock would see the launch, not the work)
Timer = Callable[[], "float | None"]


class Summary(TypedDict):
    """A timer's calls summed up, in milliseconds (a LatencyFigure holds these keys)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    ci_ms: list[float]
    spread_pct: float | None
    runs: int


def summarise(times_ms: list[float]) -> Summary:
    ts = sorted(times_ms)
    p90 = ts[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
    lo, hi = median_ci(ts)
    return Summary(median_ms=round(statistics.median(ts), 5), p90_ms=round(p90, 5), min_ms=round(ts[0], 5),
                   mean_ms=round(statistics.fmean(ts), 5), ci_ms=[round(lo, 5), round(hi, 5)],
                   spread_pct=round(100 * (p90 - ts[0]) / ts[0], 2) if ts[0] else None, runs=len(ts))


def _call(timer: Timer) -> float:
    t = time.perf_counter()
    own = timer()
    return own if own is not None else 1000 * (time.perf_counter() - t)


# The scheduler's hook (explorer.run): every timing round runs inside `quiet_slot()`, which holds the machine
# quiet (no other work of ours runs) for the round and gives it back after. Until a scheduler installs one,
# a round takes no slot, and a background run still waits in `between_rounds` (its progress callback).
QuietSlot = Callable[[], contextlib.AbstractContextManager[object]]
_quiet_slot: QuietSlot = contextlib.nullcontext


def set_quiet_slot(factory: QuietSlot | None) -> None:
    """Install the context-manager factory every timing round runs inside (None: no slot)."""
    global _quiet_slot
    _quiet_slot = factory or contextlib.nullcontext


def quiet_slot() -> contextlib.AbstractContextManager[object]:
    return _quiet_slot()


@dataclass
class Session:
    """What one interleaved timing session measured: per timer, the summary of the calls of its kept rounds
    and their per-round medians (`round_ms`); per attempted round, the CPU share of its timed calls; the
    rounds dropped for want of the CPU (attempt indices); the load average before and after."""

    figures: dict[str, LatencyFigure]
    rounds: int  # wanted
    kept: int
    cpu_share: list[float] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    load_average: dict[str, list[float]] = field(default_factory=dict)
    others_busy: float | None = None  # the other cores' share busy with other processes' work (machine_busy)
    stolen: float | None = None  # the share of the rounds' time the hypervisor gave other machines (stolen_share)

    @property
    def cpu_ok(self) -> bool:
        """Whether enough rounds had the CPU: the figures come from those rounds only."""
        return self.kept >= self.rounds

    def record(self) -> dict[str, Any]:
        return {"rounds_wanted": self.rounds, "rounds_kept": self.kept, "rounds_dropped": len(self.dropped),
                "dropped": self.dropped, "cpu_share": self.cpu_share, "cpu_ok": self.cpu_ok,
                "load_average": self.load_average, "others_busy": self.others_busy,
                "stolen": self.stolen}


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not every system has one
        return []


class Jiffies(NamedTuple):
    """The whole machine's CPU time since boot in clock ticks (/proc/stat): busy (user, nice, system, interrupts),
    stolen by the hypervisor (other virtual machines on the same host ran instead), and in all."""

    busy: int
    stolen: int
    total: int


def cpu_jiffies() -> Jiffies | None:
    """This machine's `Jiffies` now, from /proc/stat (Linux; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle, stolen = fields[3] + fields[4], fields[7]  # idle and waiting for input/output; steal
    return Jiffies(sum(fields) - idle - stolen, stolen, sum(fields))


def machine_busy(before: Jiffies | None, after: Jiffies | None, own_cpu_s: float,
                 threads: int = 1) -> float | None:
    """The share of the other cores' time that other work on this machine kept busy between two `cpu_jiffies`
    readings: the machine's busy time less the timing's own CPU time `own_cpu_s` (its thread's, or the process's
    where it uses several threads), over the time of the cores this timing does not use. Load average counts
    waiting tasks over minutes; this is the session's own seconds. None where the system does not say, or no
    other core exists."""
    if before is None or after is None:
        return None
    cores = os.cpu_count() or 1
    total = after.total - before.total
    if total <= 0 or cores <= threads:
        return None
    tick = 1 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    others = (after.busy - before.busy) * tick - own_cpu_s
    return round(min(max(others / (total * tick * (cores - threads) / cores), 0.0), 1.0), 4)


def stolen_share(before: Jiffies | None, after: Jiffies | None) -> float | None:
    """The share of all cores' time the hypervisor gave to other virtual machines between two readings: load from
    outside this machine, which no process here sees (None where the system does not say)."""
    if before is None or after is None or after.total <= before.total:
        return None
    return round((after.stolen - before.stolen) / (after.total - before.total), 4)


# one timing round: the machine's CPU time before and after it (None where the system does not say), and its own
Beside = tuple[Jiffies | None, Jiffies | None, float]


def _sum(rounds: list[Beside]) -> tuple[Jiffies, Jiffies, float] | None:
    """A session's rounds, each (jiffies before, jiffies after, own CPU seconds), as one span: only the rounds' own
    seconds count, not the waits between them (where a page's run may go on by design)."""
    read = [(b, a, own) for b, a, own in rounds if b is not None and a is not None]
    if not rounds or len(read) < len(rounds):
        return None
    after = Jiffies(*(sum(a[k] - b[k] for b, a, _ in read) for k in range(3)))
    return Jiffies(0, 0, 0), after, sum(own for *_, own in read)


def others_busy(rounds: list[Beside], threads: int = 1) -> float | None:
    """`machine_busy` over a session's rounds (`_sum`)."""
    span = _sum(rounds)
    return None if span is None else machine_busy(*span, threads)


def stolen_in(rounds: list[Beside]) -> float | None:
    """`stolen_share` over a session's rounds (`_sum`)."""
    span = _sum(rounds)
    return None if span is None else stolen_share(span[0], span[1])


def steady_allocator() -> str:
    """Set this process's allocator (glibc's malloc) to keep freed blocks up to MMAP_THRESHOLD and free memory
    up to TRIM_THRESHOLD for reuse, as a long-running server's settles to, so a call does not fault in again
    the pages the last one freed; once per process. Says what it did, for the hardware line."""
    if not _allocator:
        try:
            libc = ctypes.CDLL(None)
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD) == 1
            _allocator.append("freed blocks kept for reuse" if ok else "the system's default (it refused)")
        except (OSError, AttributeError):  # not glibc: its own allocator, as it is
            _allocator.append("the system's default")
    return _allocator[0]


def time_rounds(timers: dict[str, Timer], *, rounds: int = ROUNDS, budget_s: float = 0.3, warmup: int = 3,
                min_calls: int = 2, between_rounds: Callable[[float], None] | None = None, threads: int = 1,
                unchecked: Collection[str] = (), max_extra_rounds: int | None = None) -> Session:
    """Time every timer in the same rounds: each round gives each `budget_s / rounds` seconds (at least
    `min_calls` calls), after WARM_ROUNDS whole rounds that are not kept, and after one untimed call where its
    calls take under WARM_CALL_MS: the first call after another engine's finds the caches holding that engine's
    weights, and how much slower it is depends on which engines share the session; the order rotating from round
    to round, inside the quiet slot. Around each timer's
    calls in a round the CPU time of the timing thread (the process's over `threads` where several are used)
    is read with the wall time: a round in which any timer (but those `unchecked`, GPU timers whose host
    thread waits) got less than MIN_CPU_SHARE of the CPU was preempted; it is dropped and another round is
    added, at most `max_extra_rounds` times (default: half of `rounds`). `between_rounds(fraction done)` is called
    before each round, outside the slot and the timed calls: a background run waits there while a page's
    own run goes, so neither times the other's work."""
    names = list(timers)
    if not names:
        return Session({}, rounds, rounds)
    steady_allocator()
    for name in names:
        for _ in range(warmup):
            timers[name]()
    clock = time.thread_time if threads == 1 else time.process_time
    checked = [n for n in names if n not in set(unchecked)]
    samples: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    every: dict[str, list[float]] = {n: [] for n in names}  # all rounds, kept or not
    every_round: dict[str, list[float]] = {n: [] for n in names}
    session = Session({}, rounds, 0, load_average={"before": load_average()})
    extra = rounds // 2 if max_extra_rounds is None else max_extra_rounds
    slice_s = budget_s / rounds / 2
    last: dict[str, float] = {}  # each timer's median call in the last round
    beside: list[Beside] = []  # per round

    def play(order: list[str]) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
        """One round in `order`: each timer's calls, and the CPU and wall time around them."""
        in_round: dict[str, list[float]] = {n: [] for n in names}
        cpu = dict.fromkeys(names, 0.0)
        wall = dict.fromkeys(names, 0.0)
        with quiet_slot():
            j0, own0 = cpu_jiffies(), clock()
            # there and back (A B C C B A): a slow drift within the round, or an advantage of coming first or
            # after another engine, falls on every timer alike
            for name in order + order[::-1]:
                if last.get(name, 0.0) < WARM_CALL_MS:
                    _call(timers[name])  # untimed: the first call after another engine's finds cold caches
                c0 = clock()
                start = time.perf_counter()
                while len(in_round[name]) < min_calls or time.perf_counter() - start < slice_s:
                    in_round[name].append(_call(timers[name]))
                wall[name] += time.perf_counter() - start
                cpu[name] += clock() - c0
            beside.append((j0, cpu_jiffies(), clock() - own0))
        return in_round, cpu, wall

    for _ in range(WARM_ROUNDS):  # not kept: the first round after the warm-up calls gave ratios off by 15-25%
        last.update({n: statistics.median(v) for n, v in play(names)[0].items()})  # in 6 of 10 sessions of one run
    attempt = 0
    while session.kept < rounds and attempt < rounds + extra:
        if between_rounds is not None:
            between_rounds(session.kept / rounds)
        order = names[attempt % len(names):] + names[:attempt % len(names)]
        in_round, cpu, wall = play(order)
        share = min((cpu_share(cpu[n], wall[n], threads) for n in checked), default=1.0)
        session.cpu_share.append(round(share, 4))
        for name in names:
            last[name] = statistics.median(in_round[name])
            every[name] += in_round[name]
            every_round[name].append(statistics.median(in_round[name]))
        if round_kept(share):
            session.kept += 1
            for name in names:
                samples[name] += in_round[name]
                per_round[name].append(statistics.median(in_round[name]))
        else:
            session.dropped.append(attempt)
        attempt += 1
    if not session.cpu_ok:  # too few clean rounds: the figures are of every round, and flagged by cpu_ok
        samples, per_round = every, every_round
    session.figures = {n: _figure(summarise(samples[n]), per_round[n]) for n in names}
    session.load_average["after"] = load_average()
    session.others_busy, session.stolen = others_busy(beside, threads), stolen_in(beside)
    return session


def _figure(s: Summary, per_round: list[float]) -> LatencyFigure:
    """A timer's figure from its calls' summary and its per-round medians (key by key: mypy takes no open TypedDict
    unpacked by ** into another)."""
    return LatencyFigure(available=True, median_ms=s["median_ms"], p90_ms=s["p90_ms"], min_ms=s["min_ms"],
                         mean_ms=s["mean_ms"], ci_ms=s["ci_ms"], spread_pct=s["spread_pct"], runs=s["runs"],
                         round_ms=[round(v, 5) for v in per_round], rounds=len(per_round))


def interleave(timers: dict[str, Timer], *, rounds: int = ROUNDS, budget_s: float = 0.3, warmup: int = 3,
               min_calls: int = 2, between_rounds: Callable[[float], None] | None = None) -> dict[str, LatencyFigure]:
    """The figures of `time_rounds` alone: per timer the summary of its calls plus its per-round medians
    (`round_ms`), which pair up across timers for ratios."""
    return time_rounds(timers, rounds=rounds, budget_s=budget_s, warmup=warmup, min_calls=min_calls,
                       between_rounds=between_rounds).figures


def unavailable(reason: str) -> LatencyFigure:
    return LatencyFigure(available=False, reason=reason)


def torch_cpu_timer(model: nn.Module, x: torch.Tensor, threads: int) -> Timer:
    model = model.eval()

    def run() -> None:
        with timing_threads(threads), torch.inference_mode():
            model(x)

    return run


def ort_session(path: str, threads: int, provider: str = "CPUExecutionProvider",
                profile_prefix: str | None = None) -> InferenceSession:
    """An ONNX Runtime session as every timing here runs one; `profile_prefix` turns on ONNX Runtime's own
    per-operator profiler, writing its JSON beside that prefix (for the benches' breakdowns, not for timing)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=[provider])


def ort_timer(path: str | None, x: np.ndarray, threads: int, provider: str = "CPUExecutionProvider",
              reason: str | None = None) -> Timer | LatencyFigure:
    """A timer for an ONNX model, or the `unavailable` record saying why it cannot run."""
    if path is None:
        return unavailable(reason or "no ONNX model")
    try:
        sess = ort_session(path, threads, provider)
    except Exception as e:  # e.g. NOT_IMPLEMENTED for an op the provider lacks (fp16 on x86)
        return unavailable(f"ONNX Runtime could not load the model: {first_line(e)}")
    if provider not in sess.get_providers():
        return unavailable(f"{provider} did not take the model")
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0 and fixed != x.shape[0]:
        return unavailable(f"the model was exported with a fixed batch of {fixed}; export it with a dynamic batch "
                           f"dimension to time batch {x.shape[0]}")
    feed = {name: x}
    try:
        sess.run(None, feed)
    except Exception as e:
        return unavailable(f"ONNX Runtime failed to run the model: {first_line(e)}")

    def run() -> None:
        sess.run(None, feed)

    return run


def cuda_timer(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> Timer | LatencyFigure:
    """A CUDA eager timer measuring itself with CUDA events, or why it cannot run."""
    if not torch.cuda.is_available():
        return unavailable("no CUDA GPU on this machine")
    try:
        m = copy.deepcopy(model).to("cuda", dtype=dtype).eval()
        xd = x.to("cuda", dtype=dtype)
        with torch.inference_mode():
            m(xd)
        torch.cuda.synchronize()
    except Exception as e:
        return unavailable(f"{type(e).__name__}: {first_line(e)}")

    def run() -> float:
        # torch (2.14) leaves Event.__new__ unannotated
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        with torch.inference_mode():
            start.record()
            m(xd)
            end.record()
        end.synchronize()
        return float(start.elapsed_time(end))  # (unannotated in torch: a float of milliseconds)

    return run


def _alone(timer: Timer | LatencyFigure, budget_s: float, rounds: int = 5, gpu: bool = False) -> LatencyFigure:
    if isinstance(timer, dict):
        return timer
    return time_rounds({"t": timer}, rounds=rounds, budget_s=budget_s, unchecked=["t"] if gpu else ()).figures["t"]


def torch_cpu(model: nn.Module, x: torch.Tensor, threads: int, budget_s: float = 0.5) -> LatencyFigure:
    """One engine timed alone (tools and tests; runs time engines interleaved)."""
    return _alone(torch_cpu_timer(model, x, threads), budget_s)


def onnx_runtime(path: str | None, x: np.ndarray, threads: int, provider: str = "CPUExecutionProvider",
                 reason: str | None = None, budget_s: float = 0.5) -> LatencyFigure:
    return _alone(ort_timer(path, x, threads, provider, reason), budget_s)


def torch_cuda(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, budget_s: float = 0.3) -> LatencyFigure:
    """GPU eager latency timed with CUDA events, plus the peak memory of one batch."""
    timer = cuda_timer(model, x, dtype)
    out = _alone(timer, budget_s, gpu=True)
    if out.get("available") and not isinstance(timer, dict):  # (available: the timer ran)
        torch.cuda.reset_peak_memory_stats()
        timer()
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
