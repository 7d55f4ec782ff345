"""Layer-adaptive allocation for global pruning, on plain tensors: LAMP scores (Lee et al., "Layer-adaptive
Sparsity for the Magnitude-based Pruning", ICLR 2021) and the choice of the lowest scores across layers under a
per-layer floor. Pure functions, tested alone against numpy (tests/test_lamp.py); prune.py does the surgery."""

from __future__ import annotations

import math

import torch

# One threshold over all layers removed whole layers whose weights are small in scale (MobileNetV3-small's classifier
# and squeeze-excitation layers at 70% global: every weight zero, the model guessing at 10% top-1). A global ranking
# therefore scores by LAMP, and on top no layer goes above MAX_LAYER_SPARSITY of its weights (or the target itself
# where that is higher, so any target stays reachable) nor keeps fewer than MIN_KEPT weights.
MAX_LAYER_SPARSITY = 0.98
MIN_KEPT = 4


def lamp_scores(magnitude: torch.Tensor) -> torch.Tensor:
    """LAMP scores (Lee et al., "Layer-adaptive Sparsity for the Magnitude-based Pruning", ICLR 2021) of one
    layer's units: each unit's squared magnitude over the sum of the squared magnitudes of the layer's units not
    smaller than it (itself and its equals included). The layer's largest unit scores 1 whatever its scale, so
    a ranking of the scores across layers compares each weight with its own layer's, never empties a layer, and
    keeps each layer's own magnitude order. A unit of magnitude 0 scores 0."""
    sq = magnitude.detach().double().reshape(-1) ** 2
    ordered, order = torch.sort(sq)
    # the sum over ordered[i:], and for each unit the index of the first unit equal to it (ties share the sum)
    suffix = torch.flip(torch.cumsum(torch.flip(ordered, (0,)), 0), (0,))
    denom = suffix[torch.searchsorted(ordered, ordered)]
    scores = torch.empty_like(sq)
    scores[order] = torch.where(denom > 0, ordered / denom.clamp_min(1e-300), torch.zeros_like(ordered))
    return scores.float().view_as(magnitude)


def layer_floor(weights: int, sparsity: float) -> int:
    """The fewest weights a global ranking leaves a layer of `weights`: the share above MAX_LAYER_SPARSITY (or
    above the target, where the target is higher), and never fewer than MIN_KEPT (or all, for a smaller layer)."""
    return min(weights, max(MIN_KEPT, math.ceil((1 - max(MAX_LAYER_SPARSITY, sparsity)) * weights - 1e-9)))


def adaptive_keep(scores: dict[str, torch.Tensor], sizes: dict[str, torch.Tensor],
                  sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks over each layer's units (single weights or blocks, of `sizes` weights each): the lowest scores
    across all layers pruned until the pruned weights come as close as they can to round(sparsity * weights),
    except that each layer keeps its top-scoring units up to `layer_floor` weights (pruning within a layer goes
    lowest first, so this is the best global choice under the cap). Where the floors leave too little to prune,
    fewer weights are pruned than asked; the achieved sparsity is reported."""
    flat, flat_sizes, guarded = [], [], []
    for name, s in scores.items():
        s, z = s.reshape(-1).float(), sizes[name].reshape(-1).double()  # double: exact counts past 2^24 weights
        top = torch.argsort(s, descending=True, stable=True)
        floor = layer_floor(int(z.sum().item()), sparsity)
        held = torch.cumsum(z[top], 0) - z[top] < floor  # the top units until the floor is reached
        g = torch.zeros_like(s, dtype=torch.bool)
        g[top[held]] = True
        flat.append(s.masked_fill(g, math.inf))
        flat_sizes.append(z)
        guarded.append(g)
    s, z = torch.cat(flat), torch.cat(flat_sizes)
    order = torch.argsort(s, stable=True)
    prunable = int(s.numel() - torch.cat(guarded).sum().item())
    cum0 = torch.cat([torch.zeros(1, dtype=z.dtype), torch.cumsum(z[order][:prunable], 0)])
    j = int(torch.argmin((cum0 - round(sparsity * z.sum().item())).abs()))
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[order[:j]] = False
    out, offset = {}, 0
    for name, sc in scores.items():
        out[name] = keep[offset:offset + sc.numel()].view_as(sc)
        offset += sc.numel()
    return out
