"""MACs per forward pass (torch.utils.flop_counter) and peak memory (CPU resident-set growth, GPU
allocator peak)."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from explorer.compress.quantize import remove_activation_quant
from explorer.core import spawn

T = TypeVar("T")


class Macs(TypedDict):
    total: int
    per_layer: dict[str, int]  # leaf module name -> its MACs


def macs(model: nn.Module, input_shape: tuple[int, ...]) -> Macs:
    """Dense multiply-accumulates for one sample, in total and per layer (FLOPs / 2). Unstructured zeros
    are still multiplied by dense kernels, so they do not lower this figure."""
    m = remove_activation_quant(copy.deepcopy(model)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m(torch.zeros(1, *input_shape))
    root = type(m).__name__
    per_layer: dict[str, int] = {}
    leaves = {n for n, mod in m.named_modules() if n and not list(mod.children())}
    for key, ops in counter.get_flop_counts().items():
        name = key[len(root) + 1:] if key.startswith(root + ".") else None
        if name is not None and name in leaves:
            per_layer[name] = int(sum(ops.values()) // 2)
    return {"total": int(counter.get_total_flops() // 2), "per_layer": per_layer}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    """The process's resident set high-water mark (the kernel's VmHWM), 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_growth(fn: Callable[[], T], interval_s: float = 0.002) -> tuple[T, int | None]:
    """Run fn while sampling the resident set every `interval_s`; return (fn's result, peak growth in bytes).
    Where fn takes the process past its high-water mark, the kernel's mark is the exact peak and the sampling
    only covers peaks below it. None where /proc is missing (not Linux). A long fn wants a long interval: each
    wake-up takes the interpreter's lock from fn's thread, and sampling every 2 ms made a fine-tuning 35% to 50%
    slower."""
    try:
        start = _rss_bytes()
    except OSError:
        return fn(), None
    hwm = _hwm_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(interval_s)  # woken at once when fn returns

    t = spawn.thread(sample, "explorer-memory-sample")
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], _rss_bytes())
    if (after := _hwm_bytes()) > hwm:  # fn (or work beside it) set a new high-water mark
        peak[0] = max(peak[0], after)
    return out, max(0, peak[0] - start)


def inference_memory(model: nn.Module, input_shape: tuple[int, ...], batch: int = 256) -> dict[str, Any]:
    x = torch.zeros(batch, *input_shape)
    model = model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    run()  # the first call allocates kernels' workspaces; measure the steady state's peak over it too
    _, cpu = peak_rss_growth(run)
    out: dict[str, Any] = {"batch": batch, "cpu_rss_growth_bytes": cpu, "gpu_peak_bytes": None}
    if torch.cuda.is_available():
        m = copy.deepcopy(model).cuda()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            m(x.cuda())
        torch.cuda.synchronize()
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
