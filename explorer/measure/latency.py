"""Latency with warm-up, interleaved rounds, median, p90 and an interval for the median, a fixed thread
count, and the hardware beside it; speed-ups as ratios timed in the same rounds.

Engines: PyTorch eager on the CPU, ONNX Runtime on the CPU (fp32 and int8 models), and on a CUDA GPU
PyTorch eager fp32/fp16/bf16 timed with CUDA events plus ONNX Runtime's CUDA provider when present.
An engine that cannot run says so ("not available" with the reason), never a 0 or a made-up figure.

Every engine at a batch size, and the baseline it is compared with, is timed in the same rounds: each
round times each of them for a slice of the budget, in a rotated order. A change in the machine's load
during the session (another process, a frequency step) then hits the baseline and the run alike, and a
speed-up is the median of the per-round ratios, with its interval (explorer.core.stats).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from explorer.core.engines import (
    BATCH_SIZES,
    ORT_CPU_FP32,
    ORT_CPU_INT8,
    ORT_CUDA_FP32,
    TORCH_CPU,
    TORCH_CUDA_BF16,
    TORCH_CUDA_FP16,
    TORCH_CUDA_FP32,
    batch_key,
)
from explorer.core.errors import first_line
from explorer.core.stats import median_ci, ratio_of_medians
from explorer.measure.hardware import hardware

BATCHES = BATCH_SIZES  # the batch sizes every run is timed at
ROUNDS = 10  # an even count balances who opens a round; the median's interval spans ranks 2 to 9 (98% coverage)
# A timer runs the engine once; it returns None to be timed by the host clock, or the milliseconds it
# measured itself (CUDA events: the host clock would see the launch, not the work)
Timer = Callable[[], "float | None"]


def summarise(times_ms: list[float]) -> dict:
    ts = sorted(times_ms)
    p90 = ts[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
    lo, hi = median_ci(ts)
    return {"median_ms": round(statistics.median(ts), 5), "p90_ms": round(p90, 5), "min_ms": round(ts[0], 5),
            "mean_ms": round(statistics.fmean(ts), 5), "ci_ms": [round(lo, 5), round(hi, 5)],
            "spread_pct": round(100 * (p90 - ts[0]) / ts[0], 2) if ts[0] else None, "runs": len(ts)}


def _call(timer: Timer) -> float:
    t = time.perf_counter()
    own = timer()
    return own if own is not None else 1000 * (time.perf_counter() - t)


def interleave(timers: dict[str, Timer], *, rounds: int = ROUNDS, budget_s: float = 0.3, warmup: int = 3,
               min_calls: int = 2, between_rounds: Callable[[float], None] | None = None) -> dict[str, dict]:
    """Time every timer in the same rounds: each round gives each `budget_s / rounds` seconds (at least
    `min_calls` calls), the order rotating from round to round. Returns per timer the summary of all its
    calls plus its per-round medians (`round_ms`), which pair up across timers for ratios.
    `between_rounds(fraction done)` is called before each round, outside the timed calls: a background run
    waits there while a page's own run goes, so neither times the other's work."""
    names = list(timers)
    if not names:
        return {}
    for name in names:
        for _ in range(warmup):
            timers[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    slice_s = budget_s / rounds / 2
    for r in range(rounds):
        if between_rounds is not None:
            between_rounds(r / rounds)
        order = names[r % len(names):] + names[:r % len(names)]
        in_round: dict[str, list[float]] = {n: [] for n in names}
        # there and back (A B C C B A): a slow drift within the round, or an advantage of coming first or
        # after another engine, falls on every timer alike
        for name in order + order[::-1]:
            start = time.perf_counter()
            while len(in_round[name]) < min_calls or time.perf_counter() - start < slice_s:
                in_round[name].append(_call(timers[name]))
        for name in names:
            samples[name] += in_round[name]
            per_round[name].append(statistics.median(in_round[name]))
    return {n: {"available": True, **summarise(samples[n]), "round_ms": [round(v, 5) for v in per_round[n]],
                "rounds": rounds} for n in names}


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def torch_cpu_timer(model: nn.Module, x: torch.Tensor, threads: int) -> Timer:
    model = model.eval()

    def run() -> None:
        with torch_threads(threads), torch.inference_mode():
            model(x)

    return run


def ort_session(path: str, threads: int, provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=[provider])


def ort_timer(path: str | None, x: np.ndarray, threads: int, provider: str = "CPUExecutionProvider",
              reason: str | None = None) -> Timer | dict:
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


def cuda_timer(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> Timer | dict:
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
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            start.record()
            m(xd)
            end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return run


def _alone(timer: Timer | dict, budget_s: float, rounds: int = 5) -> dict:
    return timer if isinstance(timer, dict) else interleave({"t": timer}, rounds=rounds, budget_s=budget_s)["t"]


def torch_cpu(model: nn.Module, x: torch.Tensor, threads: int, budget_s: float = 0.5) -> dict:
    """One engine timed alone (tools and tests; runs time engines interleaved)."""
    return _alone(torch_cpu_timer(model, x, threads), budget_s)


def onnx_runtime(path: str | None, x: np.ndarray, threads: int, provider: str = "CPUExecutionProvider",
                 reason: str | None = None, budget_s: float = 0.5) -> dict:
    return _alone(ort_timer(path, x, threads, provider, reason), budget_s)


def torch_cuda(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, budget_s: float = 0.3) -> dict:
    """GPU eager latency timed with CUDA events, plus the peak memory of one batch."""
    timer = cuda_timer(model, x, dtype)
    out = _alone(timer, budget_s)
    if out.get("available"):
        torch.cuda.reset_peak_memory_stats()
        timer()
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


REFERENCE = "baseline, PyTorch eager fp32"


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, onnx_fp32: str | None = None,
                    onnx_int8: str | None = None, onnx_reason: str | None = None, threads: int = 1,
                    batches: tuple[int, ...] = BATCHES, budget_s: float = 0.5, gpu: bool = True,
                    reference: nn.Module | None = None, rounds: int = ROUNDS,
                    between_rounds: Callable[[float], None] | None = None) -> dict:
    """Latency per engine and batch: {"engines": {engine: {"b1": stats, ...}}, "speedup": {engine: {"b1":
    {"ratio", "ci", "rounds"}}}, "hardware": ...}. Each batch's engines and the `reference` model (the
    baseline; `model` itself when None) are timed in the same interleaved rounds; CPU engines are compared
    with the reference in PyTorch eager fp32 on the CPU, CUDA engines with it on the GPU; `between_rounds` as
    in `interleave`, with the fraction over all batches."""
    import onnxruntime as ort

    reference = model if reference is None else reference
    engines: dict[str, dict] = {}
    speedup: dict[str, dict] = {}
    for i, b in enumerate(batches):
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()
        key = batch_key(b)
        timers: dict[str, Timer | dict] = {
            TORCH_CPU: torch_cpu_timer(model, x, threads),
            ORT_CPU_FP32: ort_timer(onnx_fp32, xn, threads, reason=onnx_reason),
            ORT_CPU_INT8: ort_timer(onnx_int8, xn, threads,
                                              reason=onnx_reason or "no int8 model (the recipe has no int8 step)"),
            "reference_cpu": torch_cpu_timer(reference, x, threads)}
        if gpu:
            timers.update({TORCH_CUDA_FP32: cuda_timer(model, x, torch.float32),
                           TORCH_CUDA_FP16: cuda_timer(model, x, torch.float16),
                           TORCH_CUDA_BF16: cuda_timer(model, x, torch.bfloat16)})
            if "CUDAExecutionProvider" in ort.get_available_providers():
                timers[ORT_CUDA_FP32] = ort_timer(onnx_fp32, xn, 1, provider="CUDAExecutionProvider",
                                                            reason=onnx_reason)
            else:
                timers[ORT_CUDA_FP32] = unavailable(
                    "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
            if not isinstance(timers[TORCH_CUDA_FP32], dict):
                timers["reference_cuda"] = cuda_timer(reference, x, torch.float32)
        live = {k: t for k, t in timers.items() if not isinstance(t, dict)}
        timed = {**{k: t for k, t in timers.items() if isinstance(t, dict)},
                 **interleave(live, rounds=rounds, budget_s=budget_s, between_rounds=None if between_rounds is None
                              else lambda f, i=i: between_rounds((i + f) / len(batches)))}
        for engine, r in timed.items():
            if not engine.startswith("reference"):
                engines.setdefault(engine, {})[key] = r
                ref = timed.get("reference_cuda" if "cuda" in engine else "reference_cpu")
                if r.get("available") and ref and ref.get("available"):
                    speedup.setdefault(engine, {})[key] = ratio_of_medians(ref["round_ms"], r["round_ms"])
    return {"engines": engines, "speedup": speedup, "threads": threads, "batches": list(batches),
            "hardware": hardware(threads), "reference": REFERENCE}
