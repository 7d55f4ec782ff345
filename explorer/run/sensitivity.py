"""Per-layer sensitivity of a run: the top-1 drop when only that layer is compressed at the run's
setting (its weights from the packed file, every other layer the baseline's). Computed on request, since
it costs one evaluation per layer, and stored with the run in the cache (RunCache.attach, as FILE)."""

from __future__ import annotations

import copy
import json
from typing import cast

import torch

from explorer.artifact import pack
from explorer.compress.recipe import Recipe
from explorer.core.train import evaluate
from explorer.models.baselines import baseline_data, load_baseline
from explorer.run import scheduler

FILE = "sensitivity.json"


def layer_sensitivity(recipe: Recipe, packed: bytes) -> dict[str, float | None]:
    """{layer: top-1 points lost with only that layer compressed}; None where the layer's shape changed
    (structured pruning, low-rank, distillation), which has no one-layer counterpart. Scheduler work at the
    caller's priority (the page asks: foreground), pausing between scoring batches for any timing."""
    with scheduler.work():
        return _layer_sensitivity(recipe, packed)


def _layer_sensitivity(recipe: Recipe, packed: bytes) -> dict[str, float | None]:
    baseline, card = load_baseline(recipe.checkpoint_path)
    data = baseline_data(card)
    compressed = pack.unpack(packed).model
    base_top1 = evaluate(baseline, data.test)["top1"]
    ours = dict(compressed.named_modules())
    out: dict[str, float | None] = {}
    for name, mod in baseline.named_modules():
        if not isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        other = ours.get(name)
        if not isinstance(other, type(mod)) or other.weight.shape != mod.weight.shape:
            out[name] = None
            continue
        probe = copy.deepcopy(baseline)
        target = cast(torch.nn.Conv2d | torch.nn.Linear, probe.get_submodule(name))  # a copy of the baseline's `mod`
        with torch.no_grad():
            target.weight.copy_(other.weight)
            if mod.bias is not None and other.bias is not None and target.bias is not None:  # (target: a copy of mod)
                target.bias.copy_(other.bias)
        out[name] = round(base_top1 - evaluate(probe, data.test)["top1"], 4)
    return out


def to_bytes(values: dict[str, float | None]) -> bytes:
    return json.dumps(values).encode()


def from_bytes(data: bytes) -> dict[str, float | None]:
    values: dict[str, float | None] = json.loads(data)
    return values
