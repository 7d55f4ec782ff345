"""Uniform quantisation maths on plain tensors (the formulas of seeds 001 and 004, as NNCF, PyTorch and
ONNX define them).

Affine: q = clamp(round(x / s) + z, qmin, qmax), x_hat = (q - z) s.
  asymmetric: s = (max - min) / (2^b - 1), z = round(-min / s), q in [0, 2^b - 1]; the range is widened
              to include 0 so that zero (a pruned weight, a ReLU output) is exactly representable;
  symmetric:  s = max|x| / (2^(b-1) - 1), z = 0, q in [-2^(b-1), 2^(b-1) - 1] (the restricted grid: the code
              -2^(b-1) is never reached, so 4 bits use 15 of their 16 codes);
  full grid:  symmetric with s = max(max / (2^(b-1) - 1), -min / 2^(b-1)): the negative side may reach the code
              -2^(b-1), so a channel whose largest weight is negative gets a finer step and nothing is clipped
              (AIMET's symmetric weights; at 3 bits the step of such a channel is 3/4 of the restricted one's);
  closest:    each channel (or group) on whichever of the two rounds its weights with the smaller error.
round() is round-half-to-even (torch.round), the banker's rounding NNCF uses (seed 001). Seed 004 writes
the zero point as (f_max + f_min) / 2, a midpoint convention in float units; the integer zero point
above is what runtimes (ONNX Runtime, PyTorch) store, so the explorer uses it.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, full: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point for the range [lo, hi] (tensors: one value per channel); `full`: symmetric on
    the full grid (the code -2^(b-1) in use)."""
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(hi / qmax, -lo / -qmin) if full else torch.maximum(hi, -lo) / qmax
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = torch.zeros_like(scale)
    tiny = torch.finfo(torch.float32).tiny
    scale = torch.where(scale > tiny, scale, torch.ones_like(scale))  # an all-zero channel: any scale works
    if not symmetric:
        zp = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    return scale, zp


def _bcast(v: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or v.numel() == 1:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes (int64) of x."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _bcast(scale, x, axis), _bcast(zp, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    s, z = _bcast(scale, q, axis), _bcast(zp, q, axis)
    return ((q.float() - z) * s).float()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool,
                  axis: int | None = None) -> torch.Tensor:
    """Quantise-dequantise with a straight-through gradient (identity inside the range), as QAT needs:
    the rounding's true gradient is zero almost everywhere (seed 002)."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _bcast(scale, x, axis).to(x.dtype), _bcast(zp, x, axis).to(x.dtype)
    q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    xq = (q - z) * s
    return x + (xq - x).detach()


GRID_KINDS = ("restricted", "full", "closest")


def row_qparams(rows: torch.Tensor, bits: int, symmetric: bool, grid: str = "restricted"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of `rows` (a channel, or a group of inputs) from its own min and max, on
    `grid` (GRID_KINDS): the restricted or the full signed grid, or for each row whichever of the two rounds it
    with the smaller squared error (symmetric weights; a channel of nine weights can lose accuracy on the finer
    full grid that its rounding does not show, and a sensitive first layer then costs points)."""
    lo, hi = rows.amin(1), rows.amax(1)
    if grid != "closest" or not symmetric:
        return qparams(lo, hi, bits, symmetric, full=grid == "full")
    qmin, qmax = qrange(bits, symmetric)
    best_scale, best_zp, best_err = None, None, None
    for full in (False, True):
        scale, zp = qparams(lo, hi, bits, symmetric, full=full)
        err = ((torch.clamp(torch.round(rows / scale[:, None]), qmin, qmax) * scale[:, None] - rows) ** 2).sum(1)
        if best_err is None or best_scale is None or best_zp is None:
            best_scale, best_zp, best_err = scale, zp, err
            continue
        closer = err < best_err  # ties keep the restricted grid, the one every runtime takes
        best_scale, best_zp = torch.where(closer, scale, best_scale), torch.where(closer, zp, best_zp)
        best_err = torch.minimum(err, best_err)
    assert best_scale is not None and best_zp is not None
    return best_scale, best_zp


def weight_qparams(w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool, grid: str = "restricted"
                   ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(scale, zero_point, axis) from the weight's own min and max (per output channel or whole), on `grid`."""
    w = w.detach().float()
    if per_channel and w.dim() > 1:
        scale, zp = row_qparams(w.reshape(w.shape[0], -1), bits, symmetric, grid)
        return scale, zp, 0
    scale, zp = row_qparams(w.reshape(1, -1), bits, symmetric, grid)
    return scale, zp, None


# ---------------------------------------------------------------- group-wise (weight-only, Linear layers)


def expand_groups(v: torch.Tensor, cols: int, group: int) -> torch.Tensor:
    """(rows, groups) per-group values repeated over each group's `group` columns, cut to `cols`."""
    return v.repeat_interleave(group, dim=1)[:, :cols]


def group_qparams(w: torch.Tensor, bits: int, symmetric: bool, group: int, grid: str = "restricted"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of every group of `group` consecutive inputs of each row of a 2-D weight (GPTQ's and
    AWQ's group-wise layout): shape (rows, ceil(cols / group)). The last group of a row may be shorter; padding it
    with zeros changes nothing, since every range is widened to include 0."""
    if w.dim() != 2:
        raise ValueError(f"group-wise quantisation takes a 2-D (Linear) weight, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    groups = math.ceil(cols / group)
    padded = torch.nn.functional.pad(w.detach().float(), (0, groups * group - cols)).reshape(rows, groups, group)
    scale, zp = row_qparams(padded.reshape(rows * groups, group), bits, symmetric, grid)
    return scale.reshape(rows, groups), zp.reshape(rows, groups)


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool,
                    group: int) -> torch.Tensor:
    """Integer codes (int64) of a 2-D weight on its group-wise grid."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = expand_groups(scale, w.shape[1], group), expand_groups(zp, w.shape[1], group)
    return torch.clamp(torch.round(w / s) + z, qmin, qmax).to(torch.int64)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, group: int) -> torch.Tensor:
    s, z = expand_groups(scale, q.shape[1], group), expand_groups(zp, q.shape[1], group)
    return ((q.float() - z) * s).float()


# ---------------------------------------------------------------- activation range calibration


def percentile_range(x: torch.Tensor, pct: float) -> tuple[float, float]:
    flat = x.detach().reshape(-1).float()
    if flat.numel() > 2_000_000:  # quantile's input limit; a seeded subsample keeps it exact enough
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    lo = torch.quantile(flat, (100 - pct) / 100).item()
    hi = torch.quantile(flat, pct / 100).item()
    return min(lo, 0.0), max(hi, 0.0)


def entropy_threshold(values: torch.Tensor, bits: int = 8, bins: int = 2048) -> float:
    """TensorRT's KL-divergence calibration: the clipping threshold T on |x| whose 2^(b-1)-level
    quantised histogram stays closest (in KL) to the reference histogram clipped at T."""
    a = values.detach().abs().reshape(-1).double().numpy()
    amax = float(a.max()) if a.size else 0.0
    if amax == 0.0:
        return 0.0
    hist, edges = np.histogram(a, bins=bins, range=(0, amax))
    levels = 1 << (bits - 1)
    best_kl, best_i = math.inf, bins
    for i in range(levels, bins + 1, max(1, bins // 256)):
        ref = hist[:i].astype(np.float64).copy()
        ref[i - 1] += hist[i:].sum()  # clipped mass folds into the last bin
        # quantise the first i bins into `levels` groups, spreading each group's mass over its non-empty bins
        groups = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for g in groups:
            nz = hist[g] > 0
            if nz.any():
                q[g[nz]] = hist[g].sum() / nz.sum()
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def calibrated_range(samples: torch.Tensor, method: str, percentile: float = 99.99,
                     bits: int = 8) -> tuple[float, float]:
    """Activation range from calibration samples: min-max, percentile, or entropy (KL)."""
    if method == "minmax":
        return min(samples.min().item(), 0.0), max(samples.max().item(), 0.0)
    if method == "percentile":
        return percentile_range(samples, percentile)
    t = entropy_threshold(samples, bits)
    lo = samples.min().item()
    return (max(lo, -t) if lo < 0 else 0.0), min(max(samples.max().item(), 0.0), t)
