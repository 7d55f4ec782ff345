"""A standalone HTML report of a sweep: the UI's charts and the results table, for stakeholders
without the app. plotly.js is embedded once, so the file opens offline."""

from __future__ import annotations

import datetime as _dt
import html
import os
from pathlib import Path

import pandas as pd

from explorer import plots
from explorer.metrics import sweet_spot

TABLE_COLUMNS = ["label", "status", "top1", "accuracy_delta", "sparsity", "file_bytes", "gzip_bytes", "packed_bytes",
                 "onnx_int8_bytes", "rf_packed", "lat_torch_cpu_fp32_b256_ms", "lat_onnxruntime_cpu_int8_b256_ms",
                 "error"]


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"results file {str(p)!r} does not exist (write one with `python -m explorer sweep --out`)")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"results file {str(p)!r} is not a readable CSV: {e}") from None
    missing = {"label", "status", "top1", "accuracy_delta"} - set(df.columns)
    if missing:
        raise ValueError(f"results file {str(p)!r} lacks the columns {sorted(missing)}: is it a sweep's CSV?")
    return df


def render(df: pd.DataFrame, title: str = "Compression trade-offs", hardware: str | None = None) -> str:
    figs = [plots.sparsity_accuracy(df), plots.ad_rf_ranking(df, "gzip_bytes"), plots.ad_rf_ranking(df, "packed_bytes"),
            plots.pareto(df, "packed_bytes", "packed bytes"), plots.pareto(df, "lat_torch_cpu_fp32_b256_ms",
                                                                           "PyTorch CPU latency, batch 256 (ms)")]
    parts = [fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
             for i, fig in enumerate(figs)]
    ok = df[df["status"] == "ok"]
    pick = sweet_spot(ok, max_drop=1.0, objective="smallest") if len(ok) else None
    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    table = df[cols].to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="", border=0)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    failed = int((df["status"] != "ok").sum())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;
font-size:13px}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(df)} runs ({failed} failed), written {when}. Sizes are read from real files; accuracy is measured on the
model rebuilt from the packed file; latency is the median of repeated runs after warm-up{
    "; hardware: " + html.escape(hardware) if hardware else ""}.</p>
<p><b>Sweet spot</b> (smallest packed file losing at most 1 point of top-1):
{html.escape(pick.reason) if pick else "no successful run"}</p>
{''.join(f'<div>{p}</div>' for p in parts)}
<h2>All runs</h2>{table}
<p>Normalised AD x RF is seed 001's score: the product of accuracy delta and reduction factor, standardised across
the runs shown. It is relative to this table, gives 0 to any run with no accuracy change whatever its size, and
lets a tiny accuracy gain beat any compression; read it beside the Pareto fronts.</p>
</body></html>"""


def write_report(df: pd.DataFrame, path: str | os.PathLike, **kw) -> int:
    text = render(df, **kw)
    Path(path).write_text(text, encoding="utf-8")
    return len(text)
