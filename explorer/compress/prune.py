"""Pruning: unstructured magnitude, block, N:M semi-structured, structured channel pruning that
physically removes channels through Torch-Pruning's dependency graph, and for transformers the removal
of whole attention heads or MLP hidden neurons (explorer.compress.attention); one-shot, iterative or
gradual (Zhu & Gupta's cubic schedule) with masked fine-tuning.

The mask maths works on plain tensors (`magnitude_masks`, `block_mask`, `nm_mask`) so it can be
checked against torch.nn.utils.prune alone; `apply` does the module surgery and fine-tuning.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from explorer.compress.attention import prune_units
from explorer.compress.base import (
    Compressed,
    Context,
    Layer,
    apply_masks,
    clone,
    compressible,
    finetune,
    record,
    register_step,
)
from explorer.compress.channel import prune_channels
from explorer.compress.lamp import MAX_LAYER_SPARSITY, MIN_KEPT, adaptive_keep, lamp_scores, layer_floor
from explorer.compress.prune_config import (  # noqa: F401
    ADAPTIVE,
    CRITERIA,
    GRANULARITIES,
    REMOVES,
    SCHEDULES,
    PruneConfig,
)
from explorer.compress.schedules import cubic_sparsity, geometric_sparsity
from explorer.core.train import TrainHook

# ---------------------------------------------------------------- mask maths (plain tensors)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str, p: int = 1,
                    old: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Prune the round(sparsity * n) smallest |w| (per tensor, or over all tensors when global), the
    same count and the same torch.topk selection as torch.nn.utils.prune.l1_unstructured and
    global_unstructured. Already-pruned weights (`old`) rank lowest so masks only grow."""
    scores = {k: _score(w, p, None if old is None else old.get(k)) for k, w in weights.items()}
    masks = {}
    if scope == "global":
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        k = round(sparsity * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k:
            keep[torch.topk(flat, k, largest=False).indices] = False
        offset = 0
        for name, w in weights.items():
            masks[name] = keep[offset:offset + w.numel()].view_as(w)
            offset += w.numel()
        return masks
    for name, s in scores.items():
        k = round(sparsity * s.numel())
        keep = torch.ones(s.numel(), dtype=torch.bool)
        if k:
            keep[torch.topk(s.reshape(-1), k, largest=False).indices] = False
        masks[name] = keep.view_as(s)
    return masks


def _score(w: torch.Tensor, p: int, old: torch.Tensor | None) -> torch.Tensor:
    s = w.detach().abs().float() if p == 1 else w.detach().float() ** 2
    return s if old is None else s.masked_fill(~old, -1.0)


def _as_matrix(w: torch.Tensor) -> torch.Tensor:
    """(out, in) view of a Linear or conv weight; conv kernels flatten into the input dimension."""
    return w.reshape(w.shape[0], -1)


def _blocks(w: torch.Tensor, block: tuple[int, int], p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean |w| or w^2, weight count) of each (bh, bw) block of the (out, in) matrix. Edge blocks are
    partial: scored by their mean so they are not favoured for being small, counted by their size."""
    m = _as_matrix(w.detach().float())
    bh, bw = block
    rows, cols = math.ceil(m.shape[0] / bh), math.ceil(m.shape[1] / bw)
    padded = torch.zeros(rows * bh, cols * bw)
    counts = torch.zeros_like(padded)
    padded[:m.shape[0], :m.shape[1]] = m.abs() if p == 1 else m ** 2
    counts[:m.shape[0], :m.shape[1]] = 1
    sums = padded.reshape(rows, bh, cols, bw).sum(dim=(1, 3))
    sizes = counts.reshape(rows, bh, cols, bw).sum(dim=(1, 3))
    return sums / sizes, sizes


def _prune_lowest(scores: torch.Tensor, sizes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask over blocks: prune the lowest-scoring blocks until the pruned weights come as close
    as possible to round(sparsity * weights), so the achieved sparsity is within one block."""
    target = round(sparsity * sizes.sum().item())
    order = torch.argsort(scores, stable=True)
    cum = torch.cumsum(sizes[order], 0)
    cum0 = torch.cat([torch.zeros(1), cum])
    j = int(torch.argmin((cum0 - target).abs()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[order[:j]] = False
    return keep


def block_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str, block: tuple[int, int],
                p: int = 1) -> dict[str, torch.Tensor]:
    """Prune whole blocks by score (per layer, or ranked across layers by one threshold when global)."""
    scored = {k: _blocks(w, block, p) for k, w in weights.items()}
    if scope == "global":
        flat = _prune_lowest(torch.cat([s.reshape(-1) for s, _ in scored.values()]),
                             torch.cat([z.reshape(-1) for _, z in scored.values()]), sparsity)
        keep, offset = {}, 0
        for k, (s, _) in scored.items():
            keep[k] = flat[offset:offset + s.numel()].view_as(s)
            offset += s.numel()
    else:
        keep = {k: _prune_lowest(s.reshape(-1), z.reshape(-1), sparsity).view_as(s) for k, (s, z) in scored.items()}
    return {name: _block_to_weights(keep[name], w, block) for name, w in weights.items()}


def _block_to_weights(keep: torch.Tensor, w: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A keep-mask over the blocks of w's (out, in) matrix, as a mask over w's own weights."""
    m = _as_matrix(w)
    bh, bw = block
    return keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:m.shape[0], :m.shape[1]].reshape(w.shape)


def lamp_masks(weights: dict[str, torch.Tensor], sparsity: float, p: int = 1, block: tuple[int, int] | None = None,
               old: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Global pruning with layer-adaptive scores: single weights (or `block`s, scored by their mean |w|, or the root
    of their mean w^2 for L2) ranked across layers by LAMP, each layer keeping its floor. Already-pruned weights
    (`old`) rank lowest, so masks only grow."""
    scores, sizes = {}, {}
    for name, w in weights.items():
        if block is None:
            mag = w.detach().abs().float()
            was = None if old is None else old.get(name)
            if was is not None:
                mag = mag.masked_fill(~was, 0.0)
            s = lamp_scores(mag)
            scores[name] = s if was is None else s.masked_fill(~was, -1.0)
            sizes[name] = torch.ones_like(s)
        else:
            mean, sizes[name] = _blocks(w, block, p)
            scores[name] = lamp_scores(mean if p == 1 else mean.sqrt())
    keep = adaptive_keep(scores, sizes, sparsity)
    if block is None:
        return keep
    return {name: _block_to_weights(keep[name], w, block) for name, w in weights.items()}


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| in every group of m consecutive input channels (NVIDIA's 2:4 layout:
    groups run along the reduction dimension, channels innermost as in NHWC kernels)."""
    if w.dim() == 4:
        moved = w.detach().permute(0, 2, 3, 1)  # (out, kh, kw, in)
    else:
        moved = w.detach()
    in_size = moved.shape[-1]
    if in_size % m:
        raise ValueError(f"{n}:{m} pruning needs the input size to be a multiple of {m}; got {in_size}")
    groups = moved.abs().reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    keep = keep.reshape(moved.shape)
    return keep.permute(0, 3, 1, 2).contiguous() if w.dim() == 4 else keep


def _input_size(mod: Layer) -> int:
    """The input channels each filter sees: a grouped convolution's filters see in_channels / groups."""
    return mod.in_channels // mod.groups if isinstance(mod, nn.Conv2d) else mod.in_features


def _nm_unfit(mod: nn.Module, m: int) -> bool:
    """A grouped convolution whose filters see no multiple of m input channels: a depthwise one sees a single
    channel, so there is no group of m to keep n of. N:M leaves these dense, as NVIDIA's automatic sparsity tool
    (apex ASP) skips the layers whose shape its sparse kernels cannot take."""
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and _input_size(mod) % m != 0


# ---------------------------------------------------------------- apply


def _targets(model: nn.Module, cfg: PruneConfig) -> dict[str, Layer]:
    mods = compressible(model, cfg.layers)
    if not mods:
        raise ValueError(f"layers={cfg.layers!r} selects no Conv2d or Linear layer in this model")
    if cfg.granularity == "nm":
        mods = [(n, m) for n, m in mods if not _nm_unfit(m, cfg.m)]
        if not mods:
            raise ValueError(f"{cfg.n}:{cfg.m} pruning finds no layer in layers={cfg.layers!r} whose filters see a "
                             f"multiple of {cfg.m} input channels (all are grouped convolutions)")
    return {f"{n}.weight": m for n, m in mods}


def _nm_dense_note(model: nn.Module, cfg: PruneConfig) -> str | None:
    """What N:M left dense among the selected layers, in words, with their share of the selected weights."""
    mods = compressible(model, cfg.layers)
    left = [m for _, m in mods if _nm_unfit(m, cfg.m)]
    if not left:
        return None
    share = sum(m.weight.numel() for m in left) / sum(m.weight.numel() for _, m in mods)
    return (f"{cfg.n}:{cfg.m} left {len(left)} depthwise or grouped convolutions dense ({share:.1%} of the selected "
            f"layers' weights): their filters see no multiple of {cfg.m} input channels (a depthwise one sees one), so "
            f"there is no group of {cfg.m} to keep {cfg.n} of.")


def compute_masks(model: nn.Module, cfg: PruneConfig, sparsity: float,
                  old: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    targets = _targets(model, cfg)
    weights = {k: m.weight for k, m in targets.items()}
    p = 2 if cfg.criterion == "l2" else 1
    if cfg.granularity in ADAPTIVE and cfg.scope == "global":
        new = lamp_masks(weights, sparsity, p, cfg.block if cfg.granularity == "block" else None, old)
    elif cfg.granularity == "unstructured":
        new = magnitude_masks(weights, sparsity, cfg.scope, p, old)
    elif cfg.granularity == "block":
        new = block_masks(weights, sparsity, cfg.scope, cfg.block, p)
    else:
        new = {k: nm_mask(w, cfg.n, cfg.m) for k, w in weights.items()}
    if old:  # masks only grow: a weight pruned by an earlier step stays pruned
        new = {k: v & old[k] if k in old else v for k, v in new.items()}
        new.update({k: v for k, v in old.items() if k not in new})
    return new


def _check_nm(model: nn.Module, cfg: PruneConfig) -> None:
    for name, mod in _targets(model, cfg).items():
        if _input_size(mod) % cfg.m:
            raise ValueError(f"{cfg.n}:{cfg.m} pruning needs every layer's input size to be a multiple of {cfg.m}; "
                             f"{name[:-7]} has {_input_size(mod)} (use layers='inner' to skip the first layer)")


class GradualHook(TrainHook):
    """Raise the masks' sparsity along the cubic schedule during fine-tuning: n pruning steps spread
    over the first 75% of the steps, the rest recovers at the final sparsity."""

    def __init__(self, cfg: PruneConfig, masks: dict[str, torch.Tensor], total_steps: int, n: int = 10):
        self.cfg, self.masks = cfg, masks
        self.n = max(1, min(n, total_steps))
        self.dt = max(1, int(0.75 * total_steps) // self.n)
        self.history: list[tuple[int, float]] = []

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if (step - 1) % self.dt or step - 1 > self.n * self.dt:
            return
        s = cubic_sparsity(step - 1 + self.dt, self.cfg.initial_sparsity, self.cfg.sparsity, 0, self.n, self.dt)
        self.masks.update(compute_masks(model, self.cfg, s, self.masks))
        apply_masks(model, self.masks)
        self.history.append((step, round(s, 4)))


def _prune_unstructured(model: nn.Module, cfg: PruneConfig, ctx: Context) -> dict[str, Any]:
    state = ctx.state
    if cfg.granularity == "nm":
        _check_nm(model, cfg)
    info: dict[str, Any] = {"rounds": []}
    if cfg.schedule == "gradual":
        data = ctx.need_data("gradual pruning")
        steps = math.ceil(len(data.train) / 64) * cfg.finetune_epochs
        if cfg.initial_sparsity > 0:
            state.masks.update(compute_masks(model, cfg, cfg.initial_sparsity, state.masks))
            apply_masks(model, state.masks)
        hook = GradualHook(cfg, state.masks, steps)
        info["finetune"] = finetune(model, ctx, cfg.finetune_epochs, cfg.lr, "gradual pruning", extra_hooks=[hook])
        # the last pruning step lands at 75% of training; make sure the final target holds exactly
        state.masks.update(compute_masks(model, cfg, cfg.target, state.masks))
        apply_masks(model, state.masks)
        info["schedule_points"] = hook.history
        return info
    rounds = cfg.rounds if cfg.schedule == "iterative" else 1
    for r in range(1, rounds + 1):
        s = cfg.target if r == rounds else geometric_sparsity(cfg.target, r, rounds)  # equal fractions per round
        state.masks.update(compute_masks(model, cfg, s, state.masks))
        apply_masks(model, state.masks)
        epochs = cfg.finetune_epochs if rounds == 1 else max(1, cfg.finetune_epochs // rounds)
        info["rounds"].append({"sparsity": round(s, 4), **finetune(model, ctx, epochs, cfg.lr, "pruning")})
    return info


@register_step(PruneConfig)
def apply(model: nn.Module, cfg: PruneConfig, ctx: Context) -> Compressed:
    t0 = time.perf_counter()
    model = clone(model)
    state = ctx.state.copy()
    ctx = dataclasses.replace(ctx, state=state)
    if cfg.granularity == "channel":
        info = prune_channels(model, cfg, ctx)
    elif cfg.granularity in REMOVES:
        info = prune_units(model, cfg, ctx)
    else:
        info = _prune_unstructured(model, cfg, ctx)
        if cfg.adaptive():
            info["allocation"] = "layer-adaptive (LAMP)"
            state.notes.append(_adaptive_note(model, cfg))
        if cfg.layers != "all":
            info["left_dense"] = _left_dense(model, cfg)
        if cfg.granularity == "unstructured":
            state.notes.append("Unstructured sparsity shrinks the packed file, not dense latency: the zeros are "
                               "still multiplied by dense kernels (compression in storage only).")
        elif cfg.granularity == "nm":
            state.notes.append(f"{cfg.n}:{cfg.m} sparsity runs faster only on GPUs with sparse tensor cores "
                               "(NVIDIA Ampere and later, through sparse kernels such as cuSPARSELt); the CPU "
                               "runtimes here multiply the zeros, so its latency is the dense one.")
            if dense := _nm_dense_note(model, cfg):
                state.notes.append(dense)
        else:
            state.notes.append("Block sparsity needs block-sparse kernels to run faster; the runtimes here are "
                               "dense, so it shrinks the packed file, not the latency.")
    if cfg.granularity in REMOVES:  # sparsity here is the share of channels (heads, neurons) removed
        ch = info["channels"]
        layers = {k: 1 - v["after"] / v["before"] for k, v in ch.items()}
        achieved = 1 - sum(v["after"] for v in ch.values()) / sum(v["before"] for v in ch.values())
    else:
        layers, achieved = layer_sparsity(model, cfg), overall_sparsity(model, cfg)
    info.update(requested=cfg.target, granularity=cfg.granularity, layers=layers, achieved=achieved,
                seconds=round(time.perf_counter() - t0, 3))
    record(state, cfg, info)
    return Compressed(model.eval(), state)


def _left_dense(model: nn.Module, cfg: PruneConfig) -> list[str]:
    """The Conv and Linear layers the step's `layers` left out (for "inner": the first and the last)."""
    chosen = set(_targets(model, cfg))
    return [n for n, _ in compressible(model, "all") if f"{n}.weight" not in chosen]


def _adaptive_note(model: nn.Module, cfg: PruneConfig) -> str:
    """What the global ranking did, in words: how it allocated the sparsity, the layers at the cap, those left dense."""
    capped = [k[:-7] for k, m in _targets(model, cfg).items()
              if int(torch.count_nonzero(m.weight)) <= layer_floor(m.weight.numel(), cfg.target)]
    cap = max(MAX_LAYER_SPARSITY, cfg.target)
    said = ("The weights of all layers were ranked together by layer-adaptive scores (LAMP, Lee et al. 2021): each "
            "weight is compared with the larger weights of its own layer, so a layer whose weights are small in scale "
            f"is pruned like the others rather than emptied, and no layer went above {cap:.0%} zeros or below "
            f"{MIN_KEPT} weights")
    if capped:
        said += f" ({', '.join(capped)} stopped there)"
    dense = _left_dense(model, cfg)
    if dense and cfg.layers == "inner":
        said += f". Kept dense: {' and '.join(dense)}, the first and last layers"
    return said + "."


def layer_sparsity(model: nn.Module, cfg: PruneConfig) -> dict[str, float]:
    return {k: 1.0 - int(torch.count_nonzero(m.weight)) / m.weight.numel() for k, m in _targets(model, cfg).items()}


def overall_sparsity(model: nn.Module, cfg: PruneConfig) -> float:
    t = _targets(model, cfg)
    total = sum(m.weight.numel() for m in t.values())
    zeros = sum(m.weight.numel() - int(torch.count_nonzero(m.weight)) for m in t.values())
    return zeros / total if total else 0.0

