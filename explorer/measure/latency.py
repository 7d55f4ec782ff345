"""Latency with warm-up, repeats, median and p90, a fixed thread count, and the hardware beside it.

Engines: PyTorch eager on the CPU, ONNX Runtime on the CPU (fp32 and int8 models), and on a CUDA GPU
PyTorch eager fp32/fp16/bf16 timed with CUDA events plus ONNX Runtime's CUDA provider when present.
An engine that cannot run says so ("not available" with the reason), never a 0 or a made-up figure.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from explorer.errors import first_line
from explorer.measure.hardware import hardware

BATCHES = (1, 256)


def summarise(times_ms: list[float]) -> dict:
    ts = sorted(times_ms)
    p90 = ts[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
    return {"median_ms": round(statistics.median(ts), 5), "p90_ms": round(p90, 5), "min_ms": round(ts[0], 5),
            "mean_ms": round(statistics.fmean(ts), 5),
            "spread_pct": round(100 * (p90 - ts[0]) / ts[0], 2) if ts[0] else None,
            "runs": len(ts)}


def time_calls(fn: Callable[[], object], *, warmup: int = 5, min_runs: int = 10, max_runs: int = 200,
               budget_s: float = 0.5) -> dict:
    """Warm up, then time repeated calls until `budget_s` has passed (at least `min_runs`)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return summarise(times)


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


def torch_cpu(model: nn.Module, x: torch.Tensor, threads: int, **kw) -> dict:
    model = model.eval()
    with torch_threads(threads), torch.inference_mode():
        return {"available": True, **time_calls(lambda: model(x), **kw)}


def ort_session(path: str, threads: int, provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=[provider])


def onnx_runtime(path: str | None, x: np.ndarray, threads: int, provider: str = "CPUExecutionProvider",
                 reason: str | None = None, **kw) -> dict:
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
    return {"available": True, **time_calls(lambda: sess.run(None, feed), **kw)}


def torch_cuda(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, repeats: int = 50) -> dict:
    """GPU eager latency timed with CUDA events (host timers would measure the launch, not the work)."""
    if not torch.cuda.is_available():
        return unavailable("no CUDA GPU on this machine")
    import copy

    try:
        m = copy.deepcopy(model).to("cuda", dtype=dtype).eval()
        xd = x.to("cuda", dtype=dtype)
        with torch.inference_mode():
            for _ in range(10):
                m(xd)
            torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                m(xd)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            m(xd)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"available": True, **summarise(times), "peak_memory_bytes": int(peak)}
    except Exception as e:
        return unavailable(f"{type(e).__name__}: {first_line(e)}")


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, onnx_fp32: str | None = None,
                    onnx_int8: str | None = None, onnx_reason: str | None = None, threads: int = 1,
                    batches: tuple[int, ...] = BATCHES, budget_s: float = 0.5, gpu: bool = True) -> dict:
    """Latency per engine and batch: {"engines": {engine: {"b1": stats, "b256": stats}}, "hardware": ...}."""
    import onnxruntime as ort

    engines: dict[str, dict] = {}
    for b in batches:
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()
        key = f"b{b}"
        engines.setdefault("torch_cpu_fp32", {})[key] = torch_cpu(model, x, threads, budget_s=budget_s)
        engines.setdefault("onnxruntime_cpu_fp32", {})[key] = onnx_runtime(onnx_fp32, xn, threads, reason=onnx_reason,
                                                                          budget_s=budget_s)
        engines.setdefault("onnxruntime_cpu_int8", {})[key] = onnx_runtime(
            onnx_int8, xn, threads, reason=onnx_reason or "no int8 model (the recipe has no int8 step)",
            budget_s=budget_s)
        if gpu:
            engines.setdefault("torch_cuda_fp32", {})[key] = torch_cuda(model, x, torch.float32)
            engines.setdefault("torch_cuda_fp16", {})[key] = torch_cuda(model, x, torch.float16)
            engines.setdefault("torch_cuda_bf16", {})[key] = torch_cuda(model, x, torch.bfloat16)
            if "CUDAExecutionProvider" in ort.get_available_providers():
                engines.setdefault("onnxruntime_cuda_fp32", {})[key] = onnx_runtime(
                    onnx_fp32, xn, 1, provider="CUDAExecutionProvider", reason=onnx_reason, budget_s=budget_s)
            else:
                engines.setdefault("onnxruntime_cuda_fp32", {})[key] = unavailable(
                    "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
    return {"engines": engines, "threads": threads, "batches": list(batches), "hardware": hardware(threads)}
