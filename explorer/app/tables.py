"""The page's tables, built from the results frame (explorer.run.result.flatten's rows) as plain pandas: what a
person reads (named columns with units), the sweet-spot comparison and its cells. No Streamlit, so tests read them
directly; the page gets them through explorer.app.service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from explorer.core import words
from explorer.core.engines import (
    B1,
    B256,
    ORT_CPU_FP32,
    ORT_CPU_INT8,
    TORCH_CPU,
    gain_col,
    lat_col,
    speedup_col,
    state_col,
)
from explorer.run.result import DISTURBED

SIZE_COLS = {"packed .xpk": "packed_bytes", "gzip of checkpoint": "gzip_bytes", "ONNX fp32": "onnx_bytes",
             "ONNX int8": "onnx_int8_bytes", "checkpoint file": "file_bytes"}
# what a user deploys, said once in the sidebar: its file's bytes are the size on the tiles, the Pareto chart, the
# sweet spot and the summary; (size column, its words, the size label of SIZE_COLS)
SHIPS = {"packed": ("packed_bytes", "the packed file (.xpk, loaded with explorer.unpack)", "packed .xpk"),
         "onnx": ("onnx_bytes", "the ONNX fp32 file (ONNX Runtime or any ONNX runtime)", "ONNX fp32"),
         "onnx_int8": ("onnx_int8_bytes", "the ONNX int8 file (ONNX Runtime's integer kernels)", "ONNX int8")}
SHIP_DEFAULT = "packed"


def ship_choices(card: dict[str, Any]) -> list[str]:
    """What a model can be deployed as: an ONNX model has no packed file."""
    return [k for k in SHIPS if k != "packed" or card.get("format") != "onnx"]


def shipped(result: dict[str, Any], ship: str, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The size of what ships: the file's bytes, how many times smaller it is and against what. The packed file is
    compared with the baseline's fp32 checkpoint file, as everywhere on the page; an ONNX file with the baseline's
    own ONNX file of the same kind, which is what the user deploys today. `no_smaller` where a compressed run's file
    is not smaller by 1%: a dense file stores every weight at its own precision, the zeros too. `baseline`: the
    sizes of the baseline's own run (its ONNX files are measured there), where the run's record lacks them."""
    col, what, _ = SHIPS.get(ship, SHIPS[SHIP_DEFAULT])
    size, base = result.get("size") or {}, result.get("baseline_size") or {}
    n = size.get(col) or (size.get("file_bytes") if col == "packed_bytes" else None)
    if col == "packed_bytes":
        ref, against = base.get("file_bytes"), words.size_reference(result)
    else:
        ref = base.get(col) or (baseline or {}).get(col)
        against = f"the baseline's own {what.split(' (')[0].removeprefix('the ')}"
    rf = ref / n if ref and n else None
    squeezed = bool((result.get("recipe") or {}).get("steps"))  # a compressed run, not the baseline itself
    return {"column": col, "what": what, "bytes": n, "times_smaller": rf, "against": against, "against_bytes": ref,
            "no_smaller": bool(rf is not None and rf < 1.01 and squeezed)}
LATENCIES = {"ONNX Runtime int8, batch 256": (ORT_CPU_INT8, B256), "ONNX Runtime fp32, batch 256": (ORT_CPU_FP32, B256),
             "PyTorch CPU, batch 256": (TORCH_CPU, B256), "PyTorch CPU, batch 1": (TORCH_CPU, B1)}
LATENCY_COLS = {label: lat_col(*figure) for label, figure in LATENCIES.items()}


def fmt_bytes(n) -> str:
    if n is None or pd.isna(n):
        return "n/a"
    return words.byte_size(int(n))


CONFIDENCES = {"95%": 0.95, "90%": 0.90, "99%": 0.99, "point estimates only": None}
# the table columns a person reads, with units; values rounded (sizes in KiB)
READABLE = {"words": "configuration", "status": "status", "seeds": "seeds", "top1": "top-1 (%)",
            "top1_lo": "top-1, 95% low", "top1_hi": "top-1, 95% high", "top1_std": "top-1 sd across seeds",
            "accuracy_delta": "change (points)", "delta_lo": "change, 95% low", "delta_hi": "change, 95% high",
            "significant": "a real change", "collapsed": "collapsed (the model guesses)",
            "sparsity": "weight sparsity (%)", "packed_bytes": "packed file (KiB)",
            "gzip_bytes": "gzip of checkpoint (KiB)", "onnx_int8_bytes": "ONNX int8 file (KiB)",
            "rf_packed": "times smaller (packed)", lat_col(ORT_CPU_INT8, B256):
            "ONNX Runtime int8, batch of 256 (ms)",
            speedup_col(ORT_CPU_INT8, B256): "speed-up, int8 against the baseline's int8 (x)",
            state_col(speedup_col(ORT_CPU_INT8, B256)): "int8 speed-up reads as",
            gain_col(ORT_CPU_INT8, B256): "deployment gain, int8 against the baseline in PyTorch (x)",
            "error": "error"}


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """A results table for people: named columns with units, rounded values, sizes in KiB."""
    cols = [c for c in READABLE if c in df.columns]
    out = df[cols].copy()
    for c in cols:
        if c.endswith("_bytes"):
            out[c] = (pd.to_numeric(out[c], errors="coerce") / 1024).round(1)
        elif c == "sparsity":
            out[c] = (pd.to_numeric(out[c], errors="coerce") * 100).round(1)
        elif c == "significant":
            out[c] = out[c].map({True: "yes", False: "no, within noise"})
        elif c == "collapsed":
            out[c] = out[c].map({True: "yes: not a trade-off", False: ""})
        elif pd.api.types.is_numeric_dtype(out[c]):
            out[c] = out[c].round(2)
    return out.rename(columns=READABLE)


def baseline_row(frame: pd.DataFrame) -> pd.Series | None:
    """The baseline's own run in the table (no compression step), if it is there."""
    if "technique" not in frame.columns:
        return None
    base = frame[(frame["technique"] == "baseline") & (frame["status"] == "ok")]
    return base.iloc[0] if len(base) else None


def with_interval(row: pd.Series | None, col: str, lo: str, hi: str, fmt: Callable[[Any], str]) -> str:
    if row is None or pd.isna(row.get(col)):
        return ""
    text = fmt(row[col])
    if lo in row and not pd.isna(row.get(lo)) and not pd.isna(row.get(hi)):
        text += f" ({fmt(row[lo])} to {fmt(row[hi])})"
    return text


def speed_cell(row: pd.Series | None, engine: str, batch: str) -> str:
    """A speed-up from a results row as the tiles say it: disturbed timings as words, never as a number."""
    if row is None:
        return ""
    state = row.get(state_col(speedup_col(engine, batch)))
    if state == "disturbed":
        return DISTURBED
    if state == "baseline":
        return "1.00x (the baseline itself)"
    col, lo, hi = (speedup_col(engine, batch, *b) for b in ((), ("lo",), ("hi",)))
    text = with_interval(row, col, lo, hi, lambda v: f"{v:.2f}x")
    return f"{text}, within noise" if text and state == "within noise" else text


def sweet_spot_table(row: pd.Series, base: pd.Series | None, size_label: str, lat_label: str,
                     reference: float | None = None, smaller_words: str | None = None) -> pd.DataFrame:
    """The recommended run against the baseline: top-1, the change, the size the picker chose and how many times
    smaller that is than `reference` (the baseline's fp32 checkpoint file, every 'times smaller' on the page),
    the speed-up and the latency."""
    size_col, latency_col = SIZE_COLS[size_label], LATENCY_COLS[lat_label]
    pct = lambda v: f"{v:.2f}%"
    pts = lambda v: f"{v:+.2f}"
    ms = lambda v: f"{v:.3g} ms"
    lat_lo, lat_hi = (lat_col(*LATENCIES[lat_label], bound) for bound in ("lo", "hi"))

    def smaller(r: pd.Series | None) -> str:
        size = None if r is None else r.get(size_col)
        return f"{reference / size:.1f}x" if reference and size and not pd.isna(size) else ""

    table = pd.DataFrame({
        "figure": ["top-1 (95% interval)", "change, points (paired 95% interval)", f"size: {size_label}",
                   smaller_words or "times smaller than the fp32 checkpoint", f"speed-up: {lat_label} (95% interval)",
                   f"latency: {lat_label} (95% interval)"],
        "baseline": [with_interval(base, "top1", "top1_lo", "top1_hi", pct), "0",
                     fmt_bytes(base.get(size_col)) if base is not None else "", smaller(base),
                     speed_cell(base, *LATENCIES[lat_label]),
                     with_interval(base, latency_col, lat_lo, lat_hi, ms)],
        "recommended": [with_interval(row, "top1", "top1_lo", "top1_hi", pct),
                        with_interval(row, "accuracy_delta", "delta_lo", "delta_hi", pts),
                        fmt_bytes(row.get(size_col)), smaller(row), speed_cell(row, *LATENCIES[lat_label]),
                        with_interval(row, latency_col, lat_lo, lat_hi, ms)]})
    return table
