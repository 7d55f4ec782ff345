"""plotly figures: pure functions of DataFrames and RunResults, shared by the UI and the HTML report.
Hovering a point shows the run's full configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from explorer.app import marks
from explorer.app.metrics import collapsed_rows, normalized_ad_rf, pareto_front
from explorer.compress.quantize_config import bits_control
from explorer.core.engines import (
    ORT_CPU_FP32,
    ORT_CPU_INT8,
    ORT_CUDA_FP32,
    TORCH_CPU,
    TORCH_CUDA_BF16,
    TORCH_CUDA_FP16,
    TORCH_CUDA_FP32,
)
from explorer.core.markup import chart

SIZE_LABELS = {"file_bytes": "checkpoint (fp32/fp16 file)", "gzip_bytes": "gzip of checkpoint",
               "zstd_bytes": "zstd of checkpoint", "packed_bytes": "packed .xpk", "onnx_bytes": "ONNX fp32",
               "onnx_int8_bytes": "ONNX int8"}
ENGINE_LABELS = {TORCH_CPU: "PyTorch eager CPU fp32", ORT_CPU_FP32: "ONNX Runtime CPU fp32",
                 ORT_CPU_INT8: "ONNX Runtime CPU int8", TORCH_CUDA_FP32: "PyTorch CUDA fp32",
                 TORCH_CUDA_FP16: "PyTorch CUDA fp16", TORCH_CUDA_BF16: "PyTorch CUDA bf16",
                 ORT_CUDA_FP32: "ONNX Runtime CUDA fp32"}


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=title, margin={"t": 50, "b": 10, "l": 10, "r": 10}, legend_title_text="", **kw)
    return fig


def _ok_rows(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    """Successful runs that have every column asked for (a table of no runs has no columns)."""
    if df.empty or any(c not in df.columns for c in ("status", *cols)):
        return df.iloc[0:0]
    ok = df[df["status"] == "ok"]
    return ok.dropna(subset=list(cols)).copy() if cols else ok.copy()


def _accuracy_bars(part: pd.DataFrame) -> dict | None:
    """Error bars for top-1: the spread across seeds where a configuration ran with several (one standard
    deviation), else its 95% Wilson interval over the test images; None where the table has neither."""
    if "top1_std" in part.columns and (part.get("seeds", pd.Series(1, index=part.index)) > 1).any():
        sd = part["top1_std"].fillna(0).to_numpy()
        return {"type": "data", "array": sd, "visible": True}
    if {"top1_lo", "top1_hi"} <= set(part.columns) and part[["top1_lo", "top1_hi"]].notna().all().all():
        return {"type": "data", "symmetric": False, "array": (part["top1_hi"] - part["top1"]).to_numpy(),
                "arrayminus": (part["top1"] - part["top1_lo"]).to_numpy(), "visible": True}
    return None


def _latency_bars(part: pd.DataFrame, col: str) -> dict | None:
    lo, hi = (f"{col[:-3]}_lo_ms", f"{col[:-3]}_hi_ms") if col.endswith("_ms") else (f"{col}_lo", f"{col}_hi")
    if (col.endswith("_ms") or col.startswith("reltime_")) and {lo, hi} <= set(part.columns) \
            and part[[lo, hi]].notna().all().all():
        return {"type": "data", "symmetric": False, "array": (part[hi] - part[col]).to_numpy(),
                "arrayminus": (part[col] - part[lo]).to_numpy(), "visible": True}
    return None


def _unchanged(df: pd.DataFrame) -> pd.Series:
    """Runs not significantly different from their baseline (exact McNemar at 5%): drawn open."""
    if "significant" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["significant"].map(lambda v: v is False or v == 0 or str(v).lower() == "false")


def _accuracy_range(ok: pd.DataFrame, *extra: float) -> list[float]:
    """A top-1 axis that spans every interval drawn, so a difference smaller than its interval never
    fills the axis like a cliff."""
    lo = ok["top1_lo"] if "top1_lo" in ok.columns else ok["top1"]
    hi = ok["top1_hi"] if "top1_hi" in ok.columns else ok["top1"]
    if "top1_std" in ok.columns:
        lo, hi = lo.combine(ok["top1"] - ok["top1_std"].fillna(0), min), hi.combine(ok["top1"] + ok["top1_std"]
                                                                                     .fillna(0), max)
    values = [*pd.to_numeric(lo).dropna(), *pd.to_numeric(hi).dropna(), *extra]
    if not values:  # every run collapsed, and no baseline to show
        return [0.0, 100.0]
    a, b = min(values), max(values)
    pad = max(0.5, 0.05 * (b - a))
    return [max(a - pad, 0.0), min(b + pad, 100.0)]


def _marker_legend(fig: go.Figure, ok: pd.DataFrame) -> None:
    if _unchanged(ok).any():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="open marker: within noise of the "
                                 "baseline", marker={"symbol": "circle-open", "color": "grey", "size": 9}))


def _named(layers: pd.DataFrame) -> pd.DataFrame:
    """Layer names as chart text: an ONNX model's node names are its author's, and plotly reads tags in labels."""
    return layers.assign(layer=layers["layer"].map(chart)) if "layer" in layers else layers


def params_per_layer(layers: pd.DataFrame, title: str = "Parameters per layer") -> go.Figure:
    """Bar chart of parameters per weighted layer (seed 004: find where the size lives)."""
    fig = px.bar(_named(layers), x="layer", y="params", color="type", hover_data=["shape", "params"])
    fig.update_layout(xaxis_title="layer", yaxis_title="parameters", xaxis_tickangle=-45)
    return _layout(fig, title)


PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#eeca3b",
           "#bab0ac")
SCHEME_ORDER = ("fp32 (no quantisation)", "16-bit floats (fp16)", "16-bit floats (bf16)",
                "8-bit weights and activations (static int8)")


CLUSTERED = ", "  # a family's name: "<scheme>, <k> shared values per layer" where it is clustered
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # plotly's; matplotlib's below
MPL_DASHES = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-.", "longdash": (0, (8, 3)),
              "longdashdot": (0, (8, 3, 2, 3))}


def series_styles(names) -> dict[str, tuple[str, str]]:
    """(colour, dash) for each family a chart draws: one colour per quantisation scheme, distinct within the
    chart (the usual schemes first, in a fixed order, then the others sorted by name, so the same runs get the
    same colours on every rerun, in the page and in the summary), and one dash per cluster count of that
    scheme (solid: not clustered). A hash of the name gave unrelated families one colour."""
    names = list(dict.fromkeys(names))
    schemes = sorted({n.split(CLUSTERED)[0] for n in names},
                     key=lambda b: (SCHEME_ORDER.index(b) if b in SCHEME_ORDER else len(SCHEME_ORDER), b))
    colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(schemes)}
    out = {}
    for b in schemes:
        variants = sorted((n for n in names if n.split(CLUSTERED)[0] == b), key=lambda n: (CLUSTERED in n, n))
        for j, n in enumerate(variants):
            out[n] = (colour[b], DASHES[j % len(DASHES)])
    return out


def fmt_size(n) -> str:
    if n is None or pd.isna(n):
        return "n/a"
    n = float(n)
    return f"{n:,.0f} B" if n < 1024 else f"{n / 1024:,.1f} KiB" if n < 2**20 else f"{n / 2**20:,.2f} MiB"


def _hover(df: pd.DataFrame) -> np.ndarray:
    """What a tooltip shows: the recipe in words and the packed size in KiB."""
    words = df["words"] if "words" in df.columns else df.get("label", pd.Series("", index=df.index))
    packed = df["packed_bytes"].map(fmt_size) if "packed_bytes" in df.columns else pd.Series("", index=df.index)
    return np.stack([df.get("label", words).to_numpy(), words.to_numpy(), packed.to_numpy()], axis=1)


def families(ok: pd.DataFrame, by: str = "scheme"):
    """(name, rows sorted by sparsity) for each configuration family a curve joins: the same quantisation scheme
    and the same clustering, so a clustered run and an unclustered one are never joined into a fake cliff."""
    group = by if by in ok.columns else ("bits" if "bits" in ok.columns else "technique")
    clusters = ok["clusters"] if "clusters" in ok.columns else pd.Series(0, index=ok.index)
    for (gval, k), part in ok.groupby([ok[group], clusters.fillna(0)], dropna=False):
        name = str(gval)
        if group == "bits":  # tables written before schemes were named: the bit count alone
            bits = int(gval) if isinstance(gval, float) and gval.is_integer() else gval
            name = bits_control(bits) if bits in (16, 32) else f"{bits}-bit"
        if k and not pd.isna(k):
            name += f", {int(k)} shared values per layer"
        yield name, part.sort_values("sparsity_requested")


CONTROL_COLOUR = "#2a7f62"


def control_lines(fig: go.Figure, controls: pd.DataFrame | None) -> list[float]:
    """The same-budget controls (the baseline fine-tuned without compression, one row each) as dashed horizontal
    lines with their 95% intervals as bands: what a fine-tuned run must beat for its compression to count as a
    gain. Returns the top-1 values drawn, for the axis range."""
    ok = _ok_rows(controls if controls is not None else pd.DataFrame(), "top1")
    drawn: list[float] = []
    if ok.empty:
        return drawn
    for _, row in ok.sort_values("top1").iterrows():
        top1, lo, hi = float(row["top1"]), row.get("top1_lo"), row.get("top1_hi")
        budget = row.get("control_budget")
        budget = budget if isinstance(budget, str) and budget else "the same epochs"
        if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
            fig.add_hrect(y0=float(lo), y1=float(hi), fillcolor=CONTROL_COLOUR, opacity=0.08, line_width=0)
            drawn += [float(lo), float(hi)]
        fig.add_hline(y=top1, line_dash="dash", line_color=CONTROL_COLOUR, annotation_position="top left",
                      annotation_text=chart(f"baseline fine-tuned {budget}, no compression: {top1:.2f}%"))
        drawn.append(top1)
    return drawn


def same_points_once(fams: list[tuple[str, pd.DataFrame]]) -> list[tuple[str, pd.DataFrame]]:
    """Families whose points are the very same (every sparsity at the same top-1: fp32 and fp16 of a small model)
    drawn once, under both names: one drawn over the other hid it while the legend listed both."""
    out: dict[tuple[tuple[float, float], ...], tuple[list[str], pd.DataFrame]] = {}
    for name, part in fams:
        points = tuple(zip(part["sparsity_requested"].round(6), part["top1"].round(4), strict=True))
        if points in out:
            out[points][0].append(name)
        else:
            out[points] = ([name], part)
    return [(" = ".join(names) + (" (the same points)" if len(names) > 1 else ""), part)
            for names, part in out.values()]


def sparsity_accuracy(df: pd.DataFrame, current_key: str | None = None, by: str = "scheme",
                      controls: pd.DataFrame | None = None) -> go.Figure:
    """Top-1 against requested sparsity, one line per quantisation scheme (and cluster count), the current
    run marked (seed 004: "plot a sparsity vs accuracy curve to visualise and determine the sweet spot"), and the
    same-budget `controls` as the reference lines a fine-tuned run must beat (control_lines)."""
    ok = _ok_rows(df, "top1", "sparsity_requested")
    fig = go.Figure()
    if ok.empty:
        return _layout(fig, "Sparsity vs accuracy (no runs yet)")
    ok, fell = marks.split(ok)  # a collapsed run is no point of a curve: it is marked apart, below
    fams = same_points_once(list(families(ok, by)))
    style = series_styles(name for name, _ in fams)
    for name, part in fams:
        colour, dash = style[name]
        fig.add_trace(go.Scatter(
            x=part["sparsity_requested"], y=part["top1"], mode="lines+markers", name=name,
            error_y=_accuracy_bars(part), line={"color": colour, "dash": dash},
            marker={"symbol": np.where(_unchanged(part), "circle-open", "circle"), "size": 9, "color": colour},
            customdata=_hover(part),
            hovertemplate="<b>%{customdata[1]}</b><br>sparsity %{x:.0%}, top-1 %{y:.2f}%<br>packed file "
                          "%{customdata[2]}<extra>%{customdata[0]}</extra>"))
    every = pd.concat([ok, fell])
    base = None
    if "accuracy_delta" in every.columns and every["accuracy_delta"].notna().any():
        base = float((every["top1"] - every["accuracy_delta"]).median())  # every run carries its baseline's top-1
        fig.add_hline(y=base, line_dash="dot", line_color="grey", annotation_text=f"baseline {base:.2f}%",
                      annotation_position="bottom left")
    references = control_lines(fig, controls)
    axis = _accuracy_range(ok, *([base] if base is not None else []), *references)
    marks.add_collapsed(fig, fell, "sparsity_requested", marks.floor(axis), _hover(fell))
    _current(fig, every, current_key, "sparsity_requested", marks.floor(axis), line=True)
    _marker_legend(fig, ok)
    fig.update_layout(xaxis_title="sparsity (requested)", yaxis_title=_accuracy_title(ok),
                      yaxis_range=axis, xaxis_tickformat=".0%")
    return _layout(fig, "Sparsity vs accuracy")


def _current(fig: go.Figure, rows: pd.DataFrame, key: str | None, x: str, floor: float, line: bool = False) -> None:
    """The current run as a star: at its top-1, or on its collapsed cross where its model collapsed."""
    if key is None or not (rows["key"] == key).any():
        return
    cur = rows[rows["key"] == key].iloc[0]
    y = floor if collapsed_rows(rows[rows["key"] == key]).iloc[0] else cur["top1"]
    fig.add_trace(go.Scatter(x=[cur[x]], y=[y], mode="markers", name="current",
                             marker={"size": 16, "symbol": "star", "color": "crimson",
                                     **({"line": {"width": 1}} if line else {})},
                             hovertemplate=f"<b>current: {cur.get('words', cur['label'])}</b><extra></extra>"))


def size_bars(result: Mapping[str, Any]) -> go.Figure:
    """Bytes of each artifact, measured from files, with the reduction factor against the fp32 file."""
    sizes, base = result["size"], result["baseline_size"]["file_bytes"]
    rows = [(SIZE_LABELS[k], v, base / v) for k, v in sizes.items() if k in SIZE_LABELS and v]
    fig = go.Figure(go.Bar(x=[r[0] for r in rows], y=[r[1] for r in rows],
                           text=[f"{r[2]:.1f}x" for r in rows], textposition="outside",
                           hovertemplate="%{x}: %{y:,} bytes<extra></extra>", marker_color="#4c78a8"))
    fig.add_hline(y=base, line_dash="dash", annotation_text=f"fp32 baseline file {base:,} B")
    fig.update_layout(yaxis_title="bytes (measured from files)", yaxis_rangemode="tozero")
    return _layout(fig, "Size of each artifact (factor vs the fp32 baseline file)")


def ad_rf_ranking(df: pd.DataFrame, size_col: str = "gzip_bytes", current_key: str | None = None) -> go.Figure:
    """Seed 001's normalised AD x RF across the runs compared, best first."""
    ok, fell = marks.split(_ok_rows(df, size_col, "accuracy_delta"))  # a collapsed run's delta is no trade-off
    apart = f"<br><sup>{len(fell)} collapsed run{'s' if len(fell) != 1 else ''} left out</sup>" if len(fell) else ""
    if len(ok) < 2:
        return _layout(go.Figure(), f"Normalised AD x RF (needs at least two runs){apart}")
    kind = size_col.replace("_bytes", "")
    # gzip and zstd of a checkpoint like for like (seed 001 divides gzip by gzip); every other size against the
    # baseline's fp32 checkpoint file, the reference of every other "times smaller" on the page
    same = ok.get(f"rf_same_{kind}", pd.Series(np.nan, index=ok.index)) if kind in ("gzip", "zstd") else \
        pd.Series(np.nan, index=ok.index)
    rf = same.where(same.notna(), ok[f"rf_{kind}"]).astype(float)
    ok["score"] = normalized_ad_rf(ok["accuracy_delta"].to_numpy(), rf.to_numpy())
    error_x = None
    if {"delta_lo", "delta_hi"} <= set(ok.columns) and ok[["delta_lo", "delta_hi"]].notna().all().all():
        # the same standardisation applied to the ends of each run's paired interval for its change
        p = ok["accuracy_delta"] * rf
        sd = float(p.std(ddof=1)) or 1.0
        error_x = {"type": "data", "symmetric": False, "array": ((ok["delta_hi"] - ok["accuracy_delta"]) * rf / sd),
                   "arrayminus": ((ok["accuracy_delta"] - ok["delta_lo"]) * rf / sd)}
    ok = ok.assign(_hi=error_x["array"] if error_x else 0, _lo=error_x["arrayminus"] if error_x else 0)
    ok = ok.sort_values("score")
    if error_x:
        error_x = {**error_x, "array": ok["_hi"].to_numpy(), "arrayminus": ok["_lo"].to_numpy()}
    colors = ["crimson" if k == current_key else "#4c78a8" for k in ok["key"]]
    fig = go.Figure(go.Bar(x=ok["score"], y=ok["label"], orientation="h", marker_color=colors, error_x=error_x,
                           customdata=np.stack([ok["accuracy_delta"], rf.loc[ok.index]], axis=1),
                           hovertemplate="%{y}<br>score %{x:.3f}<br>AD %{customdata[0]:+.2f} points, "
                                         "RF %{customdata[1]:.2f}x<extra></extra>"))
    fig.update_layout(xaxis_title="accuracy delta x reduction factor, standardised across these runs (0 = their "
                                  "average)", height=max(300, 22 * len(ok)))
    return _layout(fig, f"Accuracy delta x reduction factor ({SIZE_LABELS.get(size_col, size_col)}){apart}")


def latency_bars(result: Mapping[str, Any]) -> go.Figure:
    """Median latency per engine and batch with p90 whiskers; engines that cannot run are left out
    (the page lists them with their reasons)."""
    rows = []
    for engine, per_batch in (result.get("latency") or {}).items():
        for b, v in per_batch.items():
            if v.get("available"):
                lo, hi = v.get("ci_ms") or (None, None)
                rows.append({"engine": ENGINE_LABELS.get(engine, engine), "batch": f"batch {b[1:]}",
                             "median_ms": v["median_ms"], "p90_ms": v["p90_ms"], "runs": v["runs"], "lo": lo,
                             "hi": hi})
    fig = go.Figure()
    if not rows:
        return _layout(fig, "Measured latency (no engine could run)")
    d = pd.DataFrame(rows)
    with_ci = d["lo"].notna().all()
    for batch, part in d.groupby("batch", sort=False):
        whisker = ({"type": "data", "symmetric": False, "array": part["hi"] - part["median_ms"],
                    "arrayminus": part["median_ms"] - part["lo"]} if with_ci else
                   {"type": "data", "symmetric": False, "array": part["p90_ms"] - part["median_ms"]})
        fig.add_trace(go.Bar(name=batch, x=part["engine"], y=part["median_ms"], error_y=whisker,
                             customdata=part[["p90_ms", "runs"]].to_numpy(),
                             hovertemplate="%{x}<br>median %{y:.3f} ms, p90 %{customdata[0]:.3f} ms, "
                                           "%{customdata[1]} runs<extra></extra>"))
    title = "median ms (whisker: 95% interval of the median)" if with_ci else "median ms (whisker: p90)"
    fig.update_layout(barmode="group", yaxis_title=title, yaxis_type="log",
                      yaxis_dtick=1)  # labels at powers of ten only
    return _layout(fig, "Measured latency")


def pareto(df: pd.DataFrame, cost: str, cost_title: str, current_key: str | None = None,
           short: str | None = None) -> go.Figure:
    """Top-1 against a cost (size or latency); the Pareto front joined, the baseline and the current run marked.
    `cost_title` names the axis, `short` (else the same) the cost in the chart's title, which has half a page."""
    ok, fell = marks.split(_ok_rows(df, cost, "top1"))  # a collapsed run is on no front: marked apart, below
    fig = go.Figure()
    short = short or cost_title
    left_out = len(_ok_rows(df, "top1")) - len(ok) - len(fell)  # runs without this cost: not timed, or disturbed
    its = "its" if left_out == 1 else "their"
    missing = (f"<br><sup>{left_out} run{'s' if left_out != 1 else ''} not shown: not timed yet, or {its} timing "
               "was disturbed</sup>") if left_out > 0 and not cost.endswith("_bytes") else ""
    if ok.empty and fell.empty:
        return _layout(fig, f"Pareto front: top-1 vs {short} (no runs yet){missing}")
    ok["front"] = pareto_front(ok, cost)
    shown = ok[cost].map(fmt_size) if cost.endswith("_bytes") else \
        ok[cost].map(lambda v: f"{v:.2f}x the baseline's time") if cost.startswith("reltime_") else \
        ok[cost].map(lambda v: f"{v:.3g} ms")
    hover = np.column_stack([_hover(ok), shown.to_numpy()])
    fig.add_trace(go.Scatter(x=ok[cost], y=ok["top1"], mode="markers", name="runs",
                             error_y=_accuracy_bars(ok), error_x=_latency_bars(ok, cost),
                             marker={"color": "#9ecae9", "size": 9,
                                     "symbol": np.where(_unchanged(ok), "circle-open", "circle")},
                             customdata=hover,
                             hovertemplate="<b>%{customdata[1]}</b><br>%{customdata[3]}, top-1 %{y:.2f}%"
                                           "<extra>%{customdata[0]}</extra>"))
    front = ok[ok["front"]].sort_values(cost)
    fig.add_trace(go.Scatter(x=front[cost], y=front["top1"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "#4c78a8"}, marker={"size": 10},
                             customdata=hover[ok.index.get_indexer(front.index)],
                             hovertemplate="<b>%{customdata[1]}</b> (on the front)<br>%{customdata[3]}, top-1 "
                                           "%{y:.2f}%<extra>%{customdata[0]}</extra>"))
    if "technique" in ok.columns and (ok["technique"] == "baseline").any():
        b = ok[ok["technique"] == "baseline"].iloc[0]
        fig.add_trace(go.Scatter(x=[b[cost]], y=[b["top1"]], mode="markers+text", name="baseline",
                                 text=["baseline"], textposition="top center", cliponaxis=False,
                                 marker={"size": 14, "symbol": "diamond", "color": "black"},
                                 hovertemplate="<b>the baseline, uncompressed</b><extra></extra>"))
    axis = _accuracy_range(ok)
    marks.add_collapsed(fig, fell, cost, marks.floor(axis), _hover(fell))
    _current(fig, pd.concat([ok, fell]), current_key, cost, marks.floor(axis))
    _marker_legend(fig, ok)
    fig.update_xaxes(automargin=True)  # a long axis title keeps its room in half a page
    fig.update_yaxes(automargin=True)
    fig.update_layout(xaxis_title=cost_title, yaxis_title=_accuracy_title(ok), xaxis_type="log",
                      yaxis_range=axis,
                      # below the axis: the two fronts sit side by side, where a legend on the right takes half
                      legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.3, "yanchor": "top"})
    return _layout(fig, f"Pareto front: top-1 vs {short}{missing}")


def _accuracy_title(ok: pd.DataFrame) -> str:
    if "top1_std" in ok.columns and (ok.get("seeds", pd.Series(1, index=ok.index)) > 1).any():
        return "top-1 accuracy (%), mean across seeds ± 1 sd"
    if "top1_lo" in ok.columns:
        return "top-1 accuracy (%), bars: 95% interval"
    return "top-1 accuracy (%)"


LAYER_FIGURES = {"params": "parameters", "sparsity": "share of zero weights", "bits": "bits per weight",
                 "packed_bytes": "bytes in the packed file", "macs": "multiply-accumulates per image",
                 "sensitivity": "top-1 change with only that layer compressed (points; negative: worse)"}


def layer_bars(layers: pd.DataFrame, column: str) -> go.Figure:
    hover = [c for c in ("shape", "params", "nonzero", "bits", "packed_bytes") if c in layers]
    fig = px.bar(_named(layers), x="layer", y=column, color="type", hover_data=hover,
                 labels={c: LAYER_FIGURES.get(c, c) for c in [column, *hover]})
    fig.update_layout(yaxis_title=LAYER_FIGURES.get(column, column), xaxis_tickangle=-45)
    return _layout(fig, f"Per layer: {LAYER_FIGURES.get(column, column)}")


def weight_histogram(hist: dict, layer: str) -> go.Figure:
    """Weight distribution before and after compression (seed 004 shows AlexNet's)."""
    edges = np.asarray(hist["edges"])
    mids = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    if hist.get("before") is not None:
        fig.add_trace(go.Bar(x=mids, y=hist["before"], name="before", opacity=0.55))
    fig.add_trace(go.Bar(x=mids, y=hist["after"], name="after", opacity=0.75))
    fig.update_layout(barmode="overlay", xaxis_title="weight value", yaxis_title="count", yaxis_type="log",
                      yaxis_dtick=1, bargap=0)
    return _layout(fig, f"Weights of {chart(layer)}: before and after")


def per_class_change(per_class: pd.DataFrame, title: str = "Top-1 change per class") -> go.Figure:
    """One bar per class: how many points of top-1 the run loses (red) or gains (blue) on that class, with its
    paired 95% interval on that class's images; grey where the interval holds 0 (within noise)."""
    d = per_class.sort_values("change")
    has_ci = {"change_lo", "change_hi"} <= set(d.columns)
    noise = ((d["change_lo"] <= 0) & (d["change_hi"] >= 0)) if has_ci else pd.Series(False, index=d.index)
    colors = ["#b0b0b0" if quiet else "#d62728" if v < 0 else "#1f77b4" for v, quiet in zip(d["change"], noise,
                                                                                           strict=True)]
    text = [f"{c:+.1f} pts ({b:.1f}% → {r:.1f}%)" + (", within noise" if quiet else "")
            for c, b, r, quiet in zip(d["change"], d["baseline_top1"], d["run_top1"], noise, strict=True)]
    whisker = ({"type": "data", "symmetric": False, "array": d["change_hi"] - d["change"],
                "arrayminus": d["change"] - d["change_lo"]} if has_ci else None)
    # each bar's figures in its row's label, where no whisker can run over them
    rows = [f"{name}: {t}" for name, t in zip(d["class"], text, strict=True)]
    fig = go.Figure(go.Bar(x=d["change"], y=rows, orientation="h", marker_color=colors,
                           customdata=d["images"], error_x=whisker,
                           hovertemplate="%{y} on %{customdata} test images<extra></extra>"))
    ends = pd.concat([d["change_lo"], d["change_hi"]]) if has_ci else d["change"]
    span = max(1.0, float(ends.abs().max()) * 1.6)
    fig.update_layout(xaxis_title="change in top-1 (points), compressed minus baseline; whiskers: paired 95% "
                                  "interval per class, grey where it holds 0", xaxis_range=[-span, span],
                      height=max(320, 34 * len(d)))
    return _layout(fig, title)


def confusion_change(matrix: np.ndarray, classes: list[str], title: str = "Where predictions moved") -> go.Figure:
    """The compressed model's confusion counts minus the baseline's: red cells gained predictions, blue lost
    them; off the diagonal red is a new mistake."""
    m = np.asarray(matrix)
    lim = max(1, int(np.abs(m).max()))
    fig = go.Figure(go.Heatmap(z=m, x=list(classes), y=list(classes), zmin=-lim, zmax=lim, colorscale="RdBu_r",
                               text=[[f"{v:+d}" if v else "" for v in row] for row in m], texttemplate="%{text}",
                               hovertemplate="true %{y}, predicted %{x}: %{z:+d} images<extra></extra>",
                               colorbar={"title": "images"}))
    fig.update_layout(xaxis_title="predicted class", yaxis_title="true class", yaxis_autorange="reversed",
                      height=max(360, 40 * len(classes)))
    return _layout(fig, title)


def flipped_images(images: np.ndarray, captions: list[str], title: str, columns: int = 8) -> go.Figure:
    """A grid of test images with a caption each (true, baseline and compressed model's labels)."""
    imgs = np.asarray(images, dtype=float)
    if len(imgs) == 0:
        return _layout(go.Figure(), f"{title} (none)")
    if imgs.ndim == 4 and imgs.shape[1] in (1, 3):  # (N, C, H, W) -> (N, H, W[, C])
        imgs = imgs[:, 0] if imgs.shape[1] == 1 else imgs.transpose(0, 2, 3, 1)
    fig = px.imshow(imgs, facet_col=0, facet_col_wrap=min(columns, len(imgs)), binary_string=True,
                    facet_col_spacing=0.01, facet_row_spacing=0.12)
    for ann in fig.layout.annotations:
        i = int(ann.text.split("=")[-1])
        ann.update(text=captions[i], font={"size": 10})
    fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    rows = -(-len(imgs) // columns)
    fig.update_layout(height=100 + 150 * rows)
    _layout(fig, title)
    # the first row's captions (two lines each) stand above their images: the title goes above them
    fig.update_layout(margin={"t": 100}, title_y=0.99, title_yanchor="top")
    return fig
