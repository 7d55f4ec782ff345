"""The hardware beside every latency figure: CPU model, the ISA flags that decide int8 and fp16 speed,
threads, and the GPU (or that there is none)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Mapping
from typing import Any

from explorer.core import spawn

# flags that change what int8/bf16/fp16 cost on x86 (VNNI: int8 dot products; AMX: tile matmuls)
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "asimddp", "i8mm")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
                elif key in ("flags", "Features"):
                    flags |= set(val.split())
    except OSError:
        pass
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "logical_cores": os.cpu_count(),
            "machine": platform.machine(), "os": f"{platform.system()} {platform.release()}"}


@functools.lru_cache(maxsize=1)
def gpu_info() -> dict[str, Any] | None:
    """Name and driver of the first CUDA GPU, or None when torch sees none."""
    import torch

    if not torch.cuda.is_available():
        return None
    info = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "driver": None,
            "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    try:
        out = spawn.command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout_s=10)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def hardware(threads: int | None = None) -> dict[str, Any]:
    import onnxruntime as ort

    from explorer.measure.latency import steady_allocator

    return {**cpu_info(), "threads": threads, "gpu": gpu_info(), "onnxruntime_providers": ort.get_available_providers(),
            "memory_allocator": steady_allocator()}


def describe(hw: Mapping[str, Any]) -> str:
    """One line for under a chart: 'AMD EPYC (avx2, avx512_vnni), 1 thread; GPU: not available'."""
    isa = ", ".join(hw.get("isa") or []) or "no SIMD flags read"
    gpu = hw.get("gpu")
    gpu_s = f"GPU: {gpu['name']} (driver {gpu.get('driver') or '?'})" if gpu else "GPU: not available on this machine"
    threads = hw.get("threads")
    t = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    return f"{hw.get('cpu', '?')} ({isa}){t}; {gpu_s}"
