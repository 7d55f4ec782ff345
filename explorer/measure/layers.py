"""Per-layer table of a model: what each weighted layer holds."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own parameters, in definition order."""
    return [(n, m) for n, m in model.named_modules()
            if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def layer_table(model: nn.Module) -> pd.DataFrame:
    rows = []
    for name, mod in weighted_layers(model):
        w = getattr(mod, "weight", None)
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        nonzero = sum(int(torch.count_nonzero(p.detach())) for p in mod.parameters(recurse=False))
        rows.append({
            "layer": name,
            "type": type(mod).__name__,
            "shape": "x".join(str(s) for s in w.shape) if isinstance(w, torch.Tensor) else "",
            "params": params,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / params if params else 0.0,
        })
    return pd.DataFrame(rows, columns=["layer", "type", "shape", "params", "nonzero", "sparsity"])


def emptied_layers(model: nn.Module) -> list[str]:
    """The Conv and Linear layers whose every weight is zero: a layer emptied cuts what flows through it (its bias,
    if any, is all that is left), so the model's output no longer depends on its input there."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and m.weight.numel() and not bool(torch.count_nonzero(m.weight.detach()))]
