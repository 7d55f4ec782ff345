"""Trade-off metrics over a table of runs: accuracy delta, reduction factor, seed 001's normalised
AD x RF score, Pareto fronts and a sweet-spot picker. Pure functions of numbers and DataFrames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer.errors import bad_value, check_choice


def accuracy_delta(top1: float, baseline_top1: float) -> float:
    """Points of top-1 gained (positive) or lost (negative)."""
    return top1 - baseline_top1


def reduction_factor(size_bytes: float, baseline_bytes: float) -> float:
    if size_bytes <= 0:
        raise bad_value("size_bytes", size_bytes, "a positive byte count")
    return baseline_bytes / size_bytes


def normalized_ad_rf(accuracy_deltas: Sequence[float], reduction_factors: Sequence[float]) -> np.ndarray:
    """Seed 001's "Norm. AD x RF": the product of accuracy delta (points) and reduction factor,
    standardised across the variants compared (minus the mean, over the sample standard deviation).
    It reproduces the seed's column from the seed's own AD and RF columns to within 0.003.

    What it rewards: among the variants in the table, those whose accuracy delta times reduction
    factor is least negative. Where it misleads: (1) it is relative: adding or removing one variant
    changes every score, so scores from different tables do not compare; (2) a variant with no
    accuracy change scores AD x RF = 0 whatever its size, so fp16 (+0.05 points, 1.97x) beats every
    smaller variant in the seed's table; (3) any accuracy gain, however small, beats any compression
    with any loss, and a large loss is amplified by a large reduction factor (95% pruning: -2.43);
    (4) delta is in points, so the same score means different things at 60% and at 99% accuracy.
    Read it beside the Pareto front, not instead of it.
    """
    ad = np.asarray(accuracy_deltas, dtype=np.float64)
    rf = np.asarray(reduction_factors, dtype=np.float64)
    if ad.shape != rf.shape or ad.ndim != 1:
        raise ValueError("accuracy_deltas and reduction_factors must be equal-length lists; "
                         f"got {ad.shape} and {rf.shape}")
    if len(ad) < 2:
        raise ValueError(f"the normalised score compares variants: need at least 2, got {len(ad)}")
    if not np.isfinite(ad).all() or not np.isfinite(rf).all():
        raise ValueError("accuracy deltas and reduction factors must be finite numbers")
    p = ad * rf
    sd = p.std(ddof=1)
    return np.zeros_like(p) if sd == 0 else (p - p.mean()) / sd


def pareto_front(df: pd.DataFrame, cost: str, gain: str = "top1") -> pd.Series:
    """True for rows no other row beats: another row with cost <= and gain >= (one strictly) dominates.
    Rows with a missing cost or gain are never on the front."""
    for col in (cost, gain):
        if col not in df.columns:
            raise bad_value("column", col, list(df.columns))
    c = pd.to_numeric(df[cost], errors="coerce").to_numpy(dtype=float)
    g = pd.to_numeric(df[gain], errors="coerce").to_numpy(dtype=float)
    valid = np.isfinite(c) & np.isfinite(g)
    on = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(valid):
        better = valid & (c <= c[i]) & (g >= g[i]) & ((c < c[i]) | (g > g[i]))
        on[i] = not better.any()
    return pd.Series(on, index=df.index, name=f"pareto_{cost}")


OBJECTIVES = {"smallest": ("size", True), "fastest": ("latency", True), "most_accurate": ("top1", False)}


@dataclass(frozen=True)
class Pick:
    row: pd.Series | None
    reason: str


def sweet_spot(df: pd.DataFrame, *, max_drop: float | None = None, size_budget: float | None = None,
               latency_budget: float | None = None, objective: str = "smallest", size_col: str = "packed_bytes",
               latency_col: str = "latency_ms", delta_col: str = "accuracy_delta") -> Pick:
    """The best run under the constraints (top-1 drop at most `max_drop` points, size at most
    `size_budget` bytes, latency at most `latency_budget` ms) for the objective, with the reason; or
    no row and the constraint that no run meets."""
    check_choice("objective", objective, list(OBJECTIVES))
    rows = df[df.get("status", pd.Series("ok", index=df.index)) == "ok"] if len(df) else df
    if rows.empty:
        return Pick(None, "no successful run to choose from")
    constraints = []
    if max_drop is not None:
        unit = "point" if max_drop == 1 else "points"
        constraints.append((f"top-1 drop at most {max_drop:g} {unit}", rows[delta_col] >= -max_drop))
    if size_budget is not None:
        constraints.append((f"size at most {size_budget:,.0f} bytes", rows[size_col] <= size_budget))
    if latency_budget is not None:
        constraints.append((f"latency at most {latency_budget:g} ms", rows[latency_col] <= latency_budget))
    keep = pd.Series(True, index=rows.index)
    for text, ok in constraints:
        ok = ok.fillna(False)
        if not (keep & ok).any():
            alone = "" if ok.any() else " (no run meets it even alone)"
            return Pick(None, f"no run meets: {text}{alone}")
        keep &= ok
    cand = rows[keep]
    col = {"size": size_col, "latency": latency_col, "top1": "top1"}[OBJECTIVES[objective][0]]
    ascending = OBJECTIVES[objective][1]
    cand = cand.dropna(subset=[col])
    if cand.empty:
        return Pick(None, f"no run under the constraints has a {col} figure")
    # ties on the objective go to the more accurate, then the smaller run
    if col == "top1":
        order, asc = [col, size_col], [False, True]
    else:
        order, asc = [col, "top1", size_col], [ascending, False, True]
    best = cand.sort_values(order, ascending=asc, kind="stable").iloc[0]
    met = "; ".join(t for t, _ in constraints) or "no constraints"
    return Pick(best, f"{objective.replace('_', ' ')} of {len(cand)} run(s) meeting {met}: "
                      f"{best.get('label', '')} with top-1 {best['top1']:.2f}%, {describe_column(col)} "
                      f"{best[col]:,.6g}")


def describe_column(col: str) -> str:
    """'packed_bytes' -> 'packed size (bytes)', 'lat_onnxruntime_cpu_int8_b256_ms' -> readable words."""
    if col == "top1":
        return "top-1 (%)"
    if col.startswith("lat_") and col.endswith("_ms"):
        engine, _, batch = col[4:-3].rpartition("_b")
        names = {"torch_cpu_fp32": "PyTorch CPU", "onnxruntime_cpu_fp32": "ONNX Runtime fp32",
                 "onnxruntime_cpu_int8": "ONNX Runtime int8"}
        return f"{names.get(engine, engine)} latency at batch {batch} (ms)"
    if col.endswith("_bytes"):
        return f"{col[:-6].replace('_', ' ')} size (bytes)"
    return col.replace("_", " ")
