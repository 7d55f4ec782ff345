"""Trade-off metrics over a table of runs: accuracy delta, reduction factor, seed 001's normalised
AD x RF score, Pareto fronts and a sweet-spot picker. Pure functions of numbers and DataFrames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer.core import words
from explorer.core.engines import ORT_CPU_FP32, ORT_CPU_INT8, speedup_col
from explorer.core.engines import TORCH_CPU as PYTORCH_FP32
from explorer.core.errors import bad_value, check_choice
from explorer.core.stats import CONFIDENCE, from_counts, newcombe_paired, paired_counts


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
COUNTS = ("both_right", "baseline_only", "run_only", "both_wrong")


@dataclass(frozen=True)
class Pick:
    row: pd.Series | None
    reason: str
    point_row: pd.Series | None = None  # the pick by point estimates alone, where it differs
    confidence: float | None = None
    point_qualifies: bool = False  # whether that run meets the constraints at `confidence` too (then: a tie)


def _steps(rows: pd.DataFrame) -> pd.Series:
    if "steps" in rows.columns:
        return pd.to_numeric(rows["steps"], errors="coerce").fillna(0)

    def count(js) -> int:
        try:
            return len(json.loads(js).get("steps", []))
        except (TypeError, ValueError):
            return 0
    return rows.get("recipe_json", pd.Series("{}", index=rows.index)).map(count)


def delta_lower(rows: pd.DataFrame, confidence: float) -> pd.Series:
    """The lower end of each run's paired interval for its top-1 change, at `confidence`, from the 2x2
    counts a run keeps (NaN where a row has none)."""
    def one(r) -> float:
        if any(pd.isna(r.get(c)) for c in COUNTS):
            return float("nan")
        a, b, c, d = (int(r[c]) for c in COUNTS)
        return newcombe_paired(a, b, c, d, confidence=confidence)[0]
    return rows.apply(one, axis=1) if len(rows) else pd.Series(dtype=float)


def _interval(rows: pd.DataFrame, col: str) -> tuple[pd.Series, pd.Series] | None:
    """The columns holding `col`'s interval: top1 -> top1_lo/top1_hi, lat_..._ms -> lat_..._lo_ms/_hi_ms."""
    lo, hi = (f"{col[:-3]}_lo_ms", f"{col[:-3]}_hi_ms") if col.endswith("_ms") else (f"{col}_lo", f"{col}_hi")
    if lo in rows.columns and hi in rows.columns and rows[[lo, hi]].notna().all().all():
        return pd.to_numeric(rows[lo]), pd.to_numeric(rows[hi])
    return None


def _choose(cand: pd.DataFrame, col: str, ascending: bool, size_col: str, aware: bool) -> tuple[pd.Series, int]:
    """The best row for the objective column and how many runs tie with it. Point estimates: the best value,
    ties to the more accurate, then the smaller. Noise-aware: every run whose interval overlaps the best's
    ties with it; ties go to the other objective (size, or accuracy for the smallest), then to the recipe
    with fewer steps."""
    steps = _steps(cand)
    if not aware or (col != size_col and _interval(cand, col) is None):
        order, asc = ([col, size_col], [False, True]) if col == "top1" else ([col, "top1", size_col], [ascending, False,
                                                                                                         True])
        return cand.assign(_steps=steps).sort_values(order, ascending=asc, kind="stable").iloc[0], 1
    values = pd.to_numeric(cand[col])
    best = values.idxmin() if ascending else values.idxmax()
    if col == size_col:
        tied = values == values[best]
        other, other_asc = "top1", False
    else:
        interval = _interval(cand, col)
        assert interval is not None  # checked above: without one the choice is by point estimates
        lo, hi = interval
        tied = (lo <= hi[best]) & (hi >= lo[best])
        other, other_asc = (size_col, True)
    pool = cand[tied].assign(_steps=steps[tied])
    pick = pool.sort_values([other, "_steps", col], ascending=[other_asc, True, ascending], kind="stable").iloc[0]
    return pick, int(tied.sum())


def _check_constraints(max_drop, size_budget, latency_budget, confidence) -> None:
    """A NaN, a budget of 0 or below, a confidence outside (0, 1): no run could meet them (comparisons with NaN
    are all false), so the user would read "no run meets" about a typo; refused, naming the value."""
    for name, v, ok, allowed in (
            ("max_drop", max_drop, max_drop is None or -100 <= max_drop <= 100, "points in [-100, 100]"),
            ("size_budget", size_budget, size_budget is None or 0 < size_budget < math.inf, "a positive number"),
            ("latency_budget", latency_budget, latency_budget is None or 0 < latency_budget < math.inf,
             "a positive number of ms"),
            ("confidence", confidence, confidence is None or 0 < confidence < 1, "a fraction in (0, 1), or None")):
        if not ok:
            raise bad_value(name, v, allowed)


def sweet_spot(df: pd.DataFrame, *, max_drop: float | None = None, size_budget: float | None = None,
               latency_budget: float | None = None, objective: str = "smallest", size_col: str = "packed_bytes",
               latency_col: str = "latency_ms", delta_col: str = "accuracy_delta",
               confidence: float | None = CONFIDENCE) -> Pick:
    """The best run under the constraints (top-1 drop at most `max_drop` points, size at most `size_budget`
    bytes, latency at most `latency_budget` ms) for the objective, with the reason in words; or no row and
    the constraint that no run meets.

    With `confidence` (default 95%) and the paired counts the runs keep, a run qualifies under `max_drop`
    when the lower end of its paired interval loses at most that much ("95% sure it loses at most 1
    point"), under a latency budget when the upper end of its latency interval is within it, and runs whose
    intervals overlap the best one's are ties (see `_choose`). `point_row` is the pick by point estimates
    where that differs. None: point estimates only."""
    check_choice("objective", objective, list(OBJECTIVES))
    _check_constraints(max_drop, size_budget, latency_budget, confidence)
    rows = df[df.get("status", pd.Series("ok", index=df.index)) == "ok"] if len(df) else df
    fell = collapsed_rows(rows)
    if fell.any() and fell.all():
        return Pick(None, f"every successful run here ({int(fell.sum())}) collapsed, its model guessing: there is "
                          "no trade-off to choose from")
    rows = rows[~fell]  # a collapsed model is no trade-off: never the pick, however small or fast
    if rows.empty:
        return Pick(None, "no successful run to choose from")
    aware = confidence is not None and set(COUNTS) <= set(rows.columns)
    sure = confidence if confidence is not None else CONFIDENCE  # read only where `aware`
    pct = f"{confidence:.0%}" if aware else ""
    constraints, point = [], []
    if max_drop is not None:
        unit = "point" if max_drop == 1 else "points"
        point.append((f"top-1 drop at most {max_drop:g} {unit}", rows[delta_col] >= -max_drop))
        if aware:
            constraints.append((f"{pct} sure to lose at most {max_drop:g} {unit} of top-1",
                                delta_lower(rows, sure) >= -max_drop))
        else:
            constraints.append(point[-1])
    if size_budget is not None:
        ok = rows[size_col] <= size_budget
        constraints.append((f"size at most {fmt_value(size_col, size_budget)}", ok))
        point.append(constraints[-1])
    if latency_budget is not None:
        ok = rows[latency_col] <= latency_budget
        point.append((f"latency at most {latency_budget:g} ms", ok))
        interval = _interval(rows, latency_col) if aware else None
        constraints.append((f"{pct} sure latency is at most {latency_budget:g} ms", interval[1] <= latency_budget)
                           if interval is not None else point[-1])
    col = {"size": size_col, "latency": latency_col, "top1": "top1"}[OBJECTIVES[objective][0]]
    ascending = OBJECTIVES[objective][1]
    speed_col = speedup_of(latency_col)
    if objective == "fastest" and speed_col is not None and speed_col in rows.columns and rows[speed_col].notna().any():
        # fastest by the like-for-like speed-up (timed beside the baseline, checked), not by milliseconds from
        # sessions timed apart, which drift with the machine's load
        col, ascending = speed_col, False
    found = _meeting(rows, constraints, col)
    if isinstance(found, str):
        if aware and max_drop is not None and not (delta_lower(rows, sure) >= -max_drop).any():
            found = _too_small(rows, sure, max_drop)
        return Pick(None, found, confidence=confidence if aware else None)
    best, tied = _choose(found, col, ascending, size_col, aware)
    met = "; ".join(t for t, _ in constraints) or "no constraints"
    runs = words.count(len(found), "run")
    said = best.get("words")  # the recipe in words, not its short form ("W8A8 static")
    said = said if isinstance(said, str) and said else best.get("label", "")
    reason = (f"{objective.replace('_', ' ')} of {runs} meeting {met}: {said}, "
              f"top-1 {best['top1']:.2f}%, {describe_column(col)} {fmt_value(col, best[col])}")
    reason += _against_control(best)
    if tied > 1:
        reason += (f" ({tied} runs tie within their {pct} intervals; the tie goes to "
                   f"{'the more accurate' if col == size_col else 'the smaller'}, then the simpler recipe)")
    if col == speed_col and not pd.to_numeric(found.get(f"{col}_lo", found[col]), errors="coerce").gt(1).any():
        reason += (" (nothing here is measurably faster than the baseline: every speed-up's 95% interval reaches "
                   "1x, or its timing was disturbed, so on speed these runs tie with it)")
    point_row = None
    if aware:
        alt = _meeting(rows, point, col)
        if not isinstance(alt, str):
            p_best, _ = _choose(alt, col, ascending, size_col, aware=False)
            if p_best.get("key", p_best.name) != best.get("key", best.name):
                point_row = p_best
    qualifies = point_row is not None and point_row.get("key", point_row.name) in set(
        found.get("key", pd.Series(found.index, index=found.index)))
    return Pick(best, reason, point_row, confidence if aware else None, qualifies)


def _against_control(row: pd.Series) -> str:
    """The pick against its same-budget control, where it fine-tunes and the control is measured: the fair
    comparison, so that the extra training never reads as the compression's gain."""
    delta, budget = row.get("control_delta"), row.get("control_budget")
    if delta is None or pd.isna(delta) or not isinstance(budget, str):
        return ""
    lo, hi = row.get("control_delta_lo"), row.get("control_delta_hi")
    ci = f", 95% interval {lo:+.2f} to {hi:+.2f}" if lo is not None and pd.notna(lo) and pd.notna(hi) else ""
    significant = row.get("control_significant")
    real = significant is not None and not pd.isna(significant) and bool(significant)
    verdict = f"a real {'gain' if delta > 0 else 'loss'}" if real else "within noise"
    return (f"; against the baseline fine-tuned the same {budget} without compression: {delta:+.2f} points{ci} "
            f"({verdict})")


def collapsed_rows(rows: pd.DataFrame) -> pd.Series:
    """True for the runs whose model collapsed (explorer.run.collapse), False elsewhere, tables without the column
    (older results) included. Across seeds (across_seeds averages the column) a configuration that collapsed with
    any seed counts as collapsed: its mean mixes a guess into the figures."""
    def one(v) -> bool:
        if isinstance(v, str):  # a table read back from CSV
            return v.strip().lower() == "true"
        try:
            return bool(v > 0)
        except TypeError:
            return False
    if "collapsed" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["collapsed"].map(one).astype(bool)


def resolution(rows: pd.DataFrame, confidence: float = CONFIDENCE) -> tuple[int, float] | None:
    """(test images, points): the smallest top-1 loss these test images let any run be `confidence` sure it stays
    within, that of an exact copy of the baseline (every image classified as the baseline does), from the 2x2
    counts a run keeps; None where no row has them."""
    have = rows.dropna(subset=list(COUNTS)) if set(COUNTS) <= set(rows.columns) else rows.iloc[0:0]
    if have.empty:
        return None
    both_right, baseline_only, run_only, both_wrong = (int(have.iloc[0][c]) for c in COUNTS)
    right = both_right + baseline_only
    n = right + run_only + both_wrong
    return n, float(-newcombe_paired(right, 0, 0, n - right, confidence=confidence)[0])


def speedup_of(latency_col: str) -> str | None:
    """The like-for-like speed-up column that goes with a latency column: lat_<engine>_<batch>_ms ->
    speedup_<engine>_<batch>."""
    if latency_col.startswith("lat_") and latency_col.endswith("_ms"):
        engine, _, batch = latency_col[4:-3].rpartition("_")
        return speedup_col(engine, batch)
    return None


def _too_small(rows: pd.DataFrame, confidence: float, max_drop: float) -> str:
    """Why no run is sure to stay within the drop: the test set cannot resolve a drop that small."""
    best = float(-delta_lower(rows, confidence).max())
    n = int(rows[list(COUNTS)].iloc[0].sum())
    unit = "point" if max_drop == 1 else "points"
    return (f"no run is {confidence:.0%} sure to lose at most {max_drop:g} {unit} of top-1: with {n:,} test images "
            f"the smallest loss any run here can be {confidence:.0%} sure of is {best:.2f} points, so the test set is "
            f"too small to tell a drop under that. Allow a larger drop, lower the confidence, or measure on a larger "
            f"test set")


def _meeting(rows: pd.DataFrame, constraints: list, col: str) -> pd.DataFrame | str:
    """The rows meeting every constraint that have the objective's figure, or the reason there are none."""
    keep = pd.Series(True, index=rows.index)
    for text, ok in constraints:
        ok = ok.fillna(False).astype(bool)
        if not (keep & ok).any():
            alone = "" if ok.any() else " (no run meets it even alone)"
            return f"no run meets: {text}{alone}"
        keep &= ok
    cand = rows[keep].dropna(subset=[col])
    return cand if not cand.empty else f"no run under the constraints has a {col} figure"


def fmt_value(col: str, v) -> str:
    """A figure as a person reads it: sizes in KiB or MiB, milliseconds to three significant digits."""
    if v is None or pd.isna(v):
        return "n/a"
    if col.endswith("_bytes"):
        v = float(v)
        return f"{v:,.0f} bytes" if v < 1024 else f"{v / 1024:,.1f} KiB" if v < 2**20 else f"{v / 2**20:,.2f} MiB"
    if col.endswith("_ms"):
        return f"{float(v):.3g} ms"
    if col.startswith("speedup_"):
        return f"{float(v):.2f}x"
    if col == "top1":
        return f"{float(v):.2f}%"
    return f"{float(v):,.4g}"


SIZE_NAMES = {"packed_bytes": "packed .xpk file", "gzip_bytes": "gzip of the checkpoint", "file_bytes": "checkpoint",
              "zstd_bytes": "zstd of the checkpoint", "onnx_bytes": "ONNX fp32 file",
              "onnx_int8_bytes": "ONNX int8 file"}
ENGINE_NAMES = {PYTORCH_FP32: "PyTorch on the CPU", ORT_CPU_FP32: "ONNX Runtime fp32",
                ORT_CPU_INT8: "ONNX Runtime int8"}


def describe_column(col: str) -> str:
    """'packed_bytes' -> 'size of the packed .xpk file', 'lat_onnxruntime_cpu_int8_b256_ms' -> 'latency with
    ONNX Runtime int8, batch of 256': the words beside a figure already formatted with its unit."""
    if col == "top1":
        return "top-1"
    if col.startswith("lat_") and col.endswith("_ms"):
        engine, _, batch = col[4:-3].rpartition("_b")
        return f"latency with {ENGINE_NAMES.get(engine, engine)}, batch of {batch}"
    if col.startswith("speedup_"):
        engine, _, batch = col[8:].rpartition("_b")
        return (f"speed-up with {ENGINE_NAMES.get(engine, engine)} against the baseline in the same engine, batch "
                f"of {batch}")
    if col.endswith("_bytes"):
        return f"size of the {SIZE_NAMES.get(col, col[:-6].replace('_', ' '))}"
    return col.replace("_", " ")


@dataclass(frozen=True)
class Forgets:
    """What a compressed model gets wrong that its baseline got right, and the reverse (Hooker et al., "What
    do compressed deep neural networks forget?", 2019), from the predictions both keep."""

    per_class: pd.DataFrame  # class, images, baseline top-1, run top-1, change (points) and its paired interval
    confusion_change: np.ndarray  # run's confusion counts minus the baseline's; rows true, columns predicted
    lost: np.ndarray  # indices of test images the baseline gets right and the run gets wrong
    gained: np.ndarray  # the reverse


def forgets(labels: np.ndarray, baseline_pred: np.ndarray, run_pred: np.ndarray, classes: Sequence[str]) -> Forgets:
    y, b, r = (np.asarray(a, dtype=np.int64) for a in (labels, baseline_pred, run_pred))
    if not y.shape == b.shape == r.shape:
        raise ValueError(f"predictions must cover the same test images: {y.shape}, {b.shape}, {r.shape}")
    k = len(classes)
    rows = []
    for c in range(k):
        m = y == c
        n = int(m.sum())
        base = 100 * float((b[m] == c).mean()) if n else float("nan")
        run = 100 * float((r[m] == c).mean()) if n else float("nan")
        # the same paired interval as the whole test set's, on this class's images alone (95% for each class,
        # not corrected for the number of classes)
        lo, hi = from_counts(paired_counts(b[m] == c, r[m] == c))["delta_ci"] if n else (float("nan"),) * 2
        rows.append({"class": classes[c], "images": n, "baseline_top1": base, "run_top1": run, "change": run - base,
                     "change_lo": lo, "change_hi": hi})

    def confusion(pred: np.ndarray) -> np.ndarray:
        return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)

    return Forgets(pd.DataFrame(rows), confusion(r) - confusion(b), np.flatnonzero((b == y) & (r != y)),
                   np.flatnonzero((b != y) & (r == y)))


SPREAD = ("top1", "top5", "accuracy_delta")


def across_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration run with several seeds (ShrinkBench's practice): the mean of every numeric
    figure, and for top-1, top-5 and the change the standard deviation, minimum and maximum across seeds
    (`<col>_std`, `_min`, `_max`) and the seed count (`seeds`). Configurations run once pass through with
    seeds = 1. Failed runs are left out."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if ok.empty or "config" not in ok.columns:
        return ok
    numeric = [c for c in ok.columns if pd.api.types.is_numeric_dtype(ok[c]) and c not in ("seed",)]
    groups = ok.groupby("config", sort=False)
    out = groups[numeric].mean()
    for c in SPREAD:
        if c in ok.columns:
            out[f"{c}_std"] = groups[c].std(ddof=1)
            out[f"{c}_min"], out[f"{c}_max"] = groups[c].min(), groups[c].max()
    out["seeds"] = groups.size()
    first = groups.first()
    for c in ok.columns:
        if c not in out.columns and c not in ("seed", "config"):  # the configuration is the index, a column again below
            out[c] = first[c]
    return out.reset_index(drop=False)
