"""Mixed precision: per-layer bit-widths from measured sensitivity under an average-bits budget.

Sensitivity of a layer at b bits = the validation loss increase when only that layer is quantised to
b bits (seed 001 cites NNCF's Hessian-trace criterion; the measured loss increase is its direct,
model-agnostic counterpart). A greedy search then lowers, one step at a time, the layer whose next
step down costs the least loss per bit saved, until the weighted average fits the budget.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from explorer.compress import qmath
from explorer.compress.base import Context
from explorer.compress.quantize_config import QuantizeConfig
from explorer.core.data import Split
from explorer.core.train import evaluate


def _quantized_copy_loss(model: nn.Module, name: str, bits: int, cfg: QuantizeConfig, val: Split) -> float:
    p = model.get_parameter(name)
    saved = p.detach().clone()
    with torch.no_grad():
        scale, zp, axis = qmath.weight_qparams(p, bits, cfg.symmetric, cfg.per_channel, cfg.weight_grid or "restricted")
        p.copy_(qmath.dequantize(qmath.quantize(p, scale, zp, bits, cfg.symmetric, axis), scale, zp, axis))
    try:
        loss: float = evaluate(model, val)["loss"]
        return loss
    finally:
        with torch.no_grad():
            p.copy_(saved)


def choose_bits(model: nn.Module, weights: list[str], cfg: QuantizeConfig, ctx: Context) -> tuple[dict[str, int],
                                                                                              list[dict[str, Any]]]:
    val = ctx.need_data("mixed precision (validation data for sensitivity)").val
    candidates = list(range(2, cfg.bits + 1))
    base_loss = evaluate(model, val)["loss"]
    sens = {w: {b: _quantized_copy_loss(model, w, b, cfg, val) - base_loss for b in candidates} for w in weights}
    size = {w: model.get_parameter(w).numel() for w in weights}
    total = sum(size.values())
    bits = {w: cfg.bits for w in weights}

    def avg() -> float:
        return sum(bits[w] * size[w] for w in weights) / total

    while avg() > cfg.budget_bits + 1e-9:
        best, best_cost = None, float("inf")
        for w in weights:
            b = bits[w]
            if b <= candidates[0]:
                continue
            cost = max(sens[w][b - 1] - sens[w][b], 0.0) / size[w]  # loss added per bit saved
            if cost < best_cost:
                best, best_cost = w, cost
        if best is None:
            break
        bits[best] -= 1
    table = [{"layer": w, "params": size[w], "bits": bits[w],
              **{f"loss_increase_{b}bit": round(sens[w][b], 5) for b in candidates}} for w in weights]
    return bits, table
