"""Latency per engine and batch size, and speed-ups like for like: a run in an engine against the baseline in
the same engine and at the same batch size (ONNX Runtime int8 against the baseline's ONNX Runtime int8, fp32
against fp32, PyTorch against PyTorch), both timed in the same interleaved rounds of one session.

What an engine change buys is a second figure, the deployment gain: the run in ONNX Runtime against the
baseline as it runs today, in PyTorch eager fp32 on the CPU. It is never the speed-up.

The baseline itself is not compared with itself: its speed-up is 1.0 by construction. Every measured
figure checks itself (explorer.measure.timing_checks); a session whose figures fail is timed again, at most
`retimes` times (not when the session could not keep enough rounds on the CPU: the machine is busy then, and
timing again at once only adds load), its rounds added to the earlier sessions' (`pool_rounds`: on this shared
machine one round in ten or so is off by 20%, and ten rounds with two such rounds on one side give an interval
too wide to show), and a figure that still fails is recorded as disturbed ("status": "disturbed"), which no view
shows as a number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from explorer.core.engines import (
    GPU_ENGINES,
    ORT_CPU_FP32,
    ORT_CPU_INT8,
    ORT_CUDA_FP32,
    TORCH_CPU,
    TORCH_CUDA_BF16,
    TORCH_CUDA_FP16,
    TORCH_CUDA_FP32,
    batch_key,
)
from explorer.core.figures import Latency, LatencyFigure, Speedup, Speedups, Timing
from explorer.measure.hardware import hardware
from explorer.measure.latency import (
    BATCHES,
    ROUNDS,
    Session,
    Timer,
    cuda_timer,
    load_average,
    ort_timer,
    time_rounds,
    torch_cpu_timer,
    unavailable,
)
from explorer.measure.timing_checks import MIN_CPU_SHARE, REFERENCE_TOLERANCE, check_speedup, max_spread

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing's own from Python 3.13

BASE = "baseline "  # a baseline's timer in a session: "baseline onnxruntime_cpu_int8"
RETIMES = 2  # sessions timed again while a figure fails its checks
DEPLOYMENT_ENGINES = (ORT_CPU_FP32, ORT_CPU_INT8)  # their deployment gain is against the baseline in TORCH_CPU
REFERENCE = "the baseline in the same engine and batch size, timed in the same rounds"
DEPLOYMENT_REFERENCE = "the baseline as run today: PyTorch eager fp32 on the CPU, same batch size, same rounds"
BASELINE = Speedup(ratio=1.0, ci=[1.0, 1.0], rounds=0, status="baseline")  # not measured: 1.0 by construction


def engine_timers(model: nn.Module | None, x: torch.Tensor, *, threads: int, onnx_fp32: str | None,
                  onnx_int8: str | None, onnx_reason: str | None = None,
                  gpu: bool = True) -> dict[str, Timer | LatencyFigure]:
    """A timer per engine (or the record of why it cannot run) for one model at one batch."""
    import onnxruntime as ort

    xn = x.numpy()
    timers: dict[str, Timer | LatencyFigure] = {
        TORCH_CPU: torch_cpu_timer(model, x, threads) if model is not None else unavailable(
            onnx_reason or "no PyTorch model"),
        ORT_CPU_FP32: ort_timer(onnx_fp32, xn, threads, reason=onnx_reason),
        ORT_CPU_INT8: ort_timer(onnx_int8, xn, threads,
                                reason=onnx_reason or "no int8 model (the recipe has no int8 step)")}
    if gpu and model is not None:
        timers.update({TORCH_CUDA_FP32: cuda_timer(model, x, torch.float32),
                       TORCH_CUDA_FP16: cuda_timer(model, x, torch.float16),
                       TORCH_CUDA_BF16: cuda_timer(model, x, torch.bfloat16)})
        if "CUDAExecutionProvider" in ort.get_available_providers():
            timers[ORT_CUDA_FP32] = ort_timer(onnx_fp32, xn, 1, provider="CUDAExecutionProvider", reason=onnx_reason)
        else:
            timers[ORT_CUDA_FP32] = unavailable(
                "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
    return timers


def _over_batches(between_rounds: Callable[[float], None] | None, i: int,
                  n: int) -> Callable[[float], None] | None:
    """`between_rounds` for the i-th of n batches: its fraction is over all of them."""
    if between_rounds is None:
        return None
    return lambda f: between_rounds((i + f) / n)


def _live(t: Timer | LatencyFigure | None) -> TypeIs[Timer]:
    return t is not None and not isinstance(t, dict)


def _record(check: dict[str, Any], against: str) -> Speedup:
    """The speed-up as a RunResult keeps it: the figure, and whether it passed its checks."""
    return Speedup(ratio=check["ratio"], ci=check["ci"], rounds=check["rounds"],
                   status="measured" if check["accepted"] else "disturbed", against=against)


def bounds(batches: Sequence[int]) -> dict[str, Any]:
    return {"min_cpu_share": MIN_CPU_SHARE, "max_spread": {batch_key(b): max_spread(b) for b in batches},
            "reference_tolerance": REFERENCE_TOLERANCE}


def measure_latency(model: nn.Module | None, input_shape: tuple[int, ...], *, onnx_fp32: str | None = None,
                    onnx_int8: str | None = None, onnx_reason: str | None = None, threads: int = 1,
                    batches: tuple[int, ...] = BATCHES, budget_s: float = 0.5, gpu: bool = True,
                    reference: nn.Module | None = None, reference_onnx_fp32: str | None = None,
                    reference_onnx_int8: str | None = None, reference_reason: str | None = None,
                    is_baseline: bool | None = None, reference_times: dict[str, dict[str, Any]] | None = None,
                    rounds: int = ROUNDS, retimes: int = RETIMES,
                    between_rounds: Callable[[float], None] | None = None) -> Timing:
    """Latency per engine and batch and the speed-ups, like for like.

    `model` and its ONNX files are the run; `reference` and `reference_onnx_*` the baseline. With no
    reference at all (`is_baseline`, the default when `reference` and its files are all None) the run is the
    baseline: its engines are timed once and its speed-ups are 1.0 by construction. `reference_times`
    ("engine/b256" -> {"median_ms", "ci_ms"}) is the baseline's own reference timing on this machine, for the
    reference check. `between_rounds` as in `time_rounds`, with the fraction over all batches.

    Returns {"engines": {engine: {"b1": figure}}, "speedup" and "deployment_gain": {engine: {"b1":
    {"ratio", "ci", "rounds", "status", "against"}}}, "baseline": the baseline's figures from the same
    sessions, "timing_quality": the sessions and every check, "threads", "batches", "hardware", "reference",
    "deployment_reference"}."""
    if is_baseline is None:
        is_baseline = reference is None and reference_onnx_fp32 is None and reference_onnx_int8 is None
    engines: Latency = {}
    speedup: Speedups = {}
    gain: Speedups = {}
    base_figs: Latency = {}
    quality: dict[str, Any] = {"sessions": [], "figures": {"speedup": {}, "deployment_gain": {}}, "retimes": 0,
                     "bounds": bounds(batches), "threads": threads,
                     "cpu_time": "CPU time of the timing thread" if threads == 1 else
                     f"CPU time of the whole process over {threads} threads",
                     "load_average": {"before": load_average()}}
    refs = reference_times or {}
    for i, b in enumerate(batches):
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(0))
        key = batch_key(b)
        run = engine_timers(model, x, threads=threads, onnx_fp32=onnx_fp32, onnx_int8=onnx_int8,
                            onnx_reason=onnx_reason, gpu=gpu)
        base = {} if is_baseline else engine_timers(reference, x, threads=threads, onnx_fp32=reference_onnx_fp32,
                                                    onnx_int8=reference_onnx_int8, onnx_reason=reference_reason,
                                                    gpu=gpu)
        for e, t in run.items():
            if not _live(t):
                engines.setdefault(e, {})[key] = t
        pending = [e for e, t in run.items() if _live(t)]
        pooled: dict[str, list[list[float]]] = {}  # per timer, the rounds of each of this batch's sessions with the CPU
        beside: list[float | None] = []  # the other cores' busy share in each of those sessions
        for attempt in range(retimes + 1):
            timers: dict[str, Timer] = {e: cast(Timer, run[e]) for e in pending}
            torch_base = TORCH_CPU if is_baseline else BASE + TORCH_CPU
            if not is_baseline:
                timers.update({BASE + e: cast(Timer, base[e]) for e in pending if _live(base.get(e))})
            if any(e in DEPLOYMENT_ENGINES for e in pending) and _live((run if is_baseline else base).get(TORCH_CPU)):
                timers[torch_base] = cast(Timer, (run if is_baseline else base)[TORCH_CPU])
            sess = time_rounds(timers, rounds=rounds, budget_s=budget_s, threads=threads,
                               unchecked=[n for n in timers if n.removeprefix(BASE) in GPU_ENGINES],
                               between_rounds=_over_batches(between_rounds, i, len(batches)))
            quality["sessions"].append({"batch": key, "attempt": attempt, "timers": list(timers), **sess.record()})
            quality["retimes"] += attempt > 0
            view = pool_rounds(sess, pooled)
            if sess.cpu_ok:  # pooled as its rounds are (pool_rounds)
                beside.append(sess.others_busy)
            judged = beside if sess.cpu_ok else [sess.others_busy]
            others = None if None in judged else max(cast(list[float], judged))
            pending = [e for e in pending if not _settle(e, key, b, view, is_baseline, refs, engines, speedup, gain,
                                                         base_figs, quality, len(quality["sessions"]) - 1, others)]
            if not pending:
                break
            if not sess.cpu_ok and not all(e in GPU_ENGINES for e in pending):
                # more than a few rounds lost the CPU: the machine is busy now, and timing again at once would only
                # add to its load; the figures stay disturbed until a re-time when it is quieter (needs_retime)
                quality["stopped"] = "the machine was too busy: too few rounds had the CPU"
                break
    quality["load_average"]["after"] = load_average()
    quality["disturbed"] = [f"{kind} {e} {k}" for kind, table in (("speed-up", speedup), ("deployment gain", gain))
                            for e, per in table.items() for k, v in per.items() if v.get("status") == "disturbed"]
    return Timing(engines=engines, speedup=speedup, deployment_gain=gain, baseline=base_figs, timing_quality=quality,
                  threads=threads, batches=list(batches), hardware=hardware(threads), reference=REFERENCE,
                  deployment_reference=DEPLOYMENT_REFERENCE)


def pool_rounds(sess: Session, pooled: dict[str, list[list[float]]]) -> Session:
    """The session as its figures are judged: where it had the CPU, its rounds added to those of the batch's earlier
    sessions that had it (`pooled`, updated). A re-time then adds rounds instead of starting over: an interval
    too wide after 10 rounds is judged again on 20, then 30. Each round is a pair timed side by side, so the pairs
    stay pairs; a session without the CPU is judged alone (its figures are flagged) and pools nothing."""
    if not sess.cpu_ok:
        return sess
    figures: dict[str, LatencyFigure] = {}
    for name, fig in sess.figures.items():
        pooled.setdefault(name, []).append(list(fig.get("round_ms") or []))
        rounds = [v for session in pooled[name] for v in session]
        figures[name] = {**fig, "round_ms": rounds, "rounds": len(rounds),
                         "round_sessions": [len(session) for session in pooled[name]]}
    return dataclasses.replace(sess, figures=figures)


def _settle(e: str, key: str, b: int, sess: Session, is_baseline: bool, refs: dict[str, dict[str, Any]],
            engines: Latency, speedup: Speedups, gain: Speedups, base_figs: Latency, quality: dict[str, Any],
            index: int, others: float | None = None) -> bool:
    """Record engine `e`'s figures from this session; True when they passed their checks (no re-time). `others`:
    the busiest share of the other cores over the sessions its rounds come from (timing_checks.check_speedup)."""
    fig = sess.figures[e]
    engines.setdefault(e, {})[key] = fig
    cpu_ok = sess.cpu_ok or e in GPU_ENGINES
    own_base = fig if is_baseline else sess.figures.get(BASE + e)
    if own_base is not None:
        base_figs.setdefault(e, {})[key] = own_base
    ok = cpu_ok
    if is_baseline:
        speedup.setdefault(e, {})[key] = BASELINE.copy()
    elif own_base is not None:
        check = check_speedup(own_base["round_ms"], fig["round_ms"], batch=b, reference=refs.get(f"{e}/{key}"),
                              cpu_ok=cpu_ok, sessions=fig.get("round_sessions"), others_busy=others)
        speedup.setdefault(e, {})[key] = _record(check, e)
        quality["figures"]["speedup"].setdefault(e, {})[key] = {**check, "session": index}
        ok = check["accepted"]
    torch_base = sess.figures.get(TORCH_CPU if is_baseline else BASE + TORCH_CPU)
    if e in DEPLOYMENT_ENGINES and torch_base is not None:
        check = check_speedup(torch_base["round_ms"], fig["round_ms"], batch=b,
                              reference=refs.get(f"{TORCH_CPU}/{key}"), cpu_ok=sess.cpu_ok,
                              sessions=fig.get("round_sessions"), others_busy=others)
        gain.setdefault(e, {})[key] = _record(check, TORCH_CPU)
        quality["figures"]["deployment_gain"].setdefault(e, {})[key] = {**check, "session": index}
        ok = ok and check["accepted"]
    return ok
