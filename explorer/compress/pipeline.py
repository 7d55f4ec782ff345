"""compress(model, recipe, data): run a recipe's steps in order, threading the compression state."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from explorer.compress.base import CompressionState, Context, step_type_of
from explorer.core.data import DataBundle
from explorer.core.train import Progress


@dataclass
class CompressResult:
    model: nn.Module
    state: CompressionState
    timings: list[dict[str, Any]] = field(default_factory=list)  # one {"step", "kind", "seconds"} per step


def _step_progress(progress: Progress | None, i: int, n: int, kind: str) -> Progress | None:
    if progress is None:
        return None
    return lambda f, msg: progress((i + f) / n, f"step {i + 1}/{n} {kind}: {msg}")


def compress(model: nn.Module, recipe_or_steps: Any, data: DataBundle | None, *, progress: Progress | None = None,
             seed: int | None = None) -> CompressResult:
    """Apply each step to a copy of the previous model; `model` itself is never changed."""
    steps: Sequence[Any] = getattr(recipe_or_steps, "steps", recipe_or_steps)
    seed = getattr(recipe_or_steps, "seed", 0) if seed is None else seed
    name = getattr(recipe_or_steps, "model", None)  # a step's refusal names the model the user chose
    state = CompressionState()
    current, timings = model, []
    for i, cfg in enumerate(steps):
        technique = step_type_of(cfg)
        ctx = Context(data=data, state=state, progress=_step_progress(progress, i, len(steps), technique.kind),
                      seed=seed, baseline=model, model_name=name)
        t0 = time.perf_counter()
        out = technique.apply(current, cfg, ctx)
        timings.append({"step": i + 1, "kind": technique.kind, "seconds": round(time.perf_counter() - t0, 3)})
        current, state = out.model, out.state
    if progress is not None:
        progress(1.0, "compressed")
    return CompressResult(current.eval(), state, timings)
