"""Per-layer sensitivity of a run: the top-1 drop when only that layer is compressed at the run's
setting (its weights from the packed file, every other layer the baseline's). Computed on request and
kept beside the cache, since it costs one evaluation per layer."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from explorer.artifact import pack
from explorer.compress.recipe import Recipe
from explorer.core.train import evaluate
from explorer.models.baselines import baseline_data, load_baseline


def layer_sensitivity(recipe: Recipe, packed: bytes) -> dict[str, float | None]:
    """{layer: top-1 points lost with only that layer compressed}; None where the layer's shape changed
    (structured pruning, low-rank, distillation), which has no one-layer counterpart."""
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
        target = probe.get_submodule(name)
        with torch.no_grad():
            target.weight.copy_(other.weight)
            if mod.bias is not None and other.bias is not None:
                target.bias.copy_(other.bias)
        out[name] = round(base_top1 - evaluate(probe, data.test)["top1"], 4)
    return out


def _path(cache_root: Path, key: str) -> Path:
    return cache_root / ".sensitivity" / f"{key}.json"


def stored(cache_root: Path, key: str) -> dict | None:
    try:
        return json.loads(_path(cache_root, key).read_text())
    except (OSError, ValueError):
        return None


def store(cache_root: Path, key: str, values: dict) -> None:
    p = _path(cache_root, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, p)  # atomic: a reader sees the old file or the whole new one
