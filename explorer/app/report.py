"""A standalone HTML report of a sweep: the UI's charts and the results table, for stakeholders
without the app. plotly.js is embedded once, so the file opens offline."""

from __future__ import annotations

import datetime as _dt
import html
import os
from pathlib import Path

import pandas as pd

from explorer.app import plots
from explorer.app.metrics import across_seeds, collapsed_rows, sweet_spot
from explorer.core.engines import B256, ORT_CPU_INT8, gain_col, lat_col, reltime_col, speedup_col, state_col
from explorer.core.engines import TORCH_CPU as PYTORCH_FP32
from explorer.core.paths import user_file

TABLE_COLUMNS = ["label", "status", "collapsed", "seed", "top1", "top1_lo", "top1_hi", "accuracy_delta", "delta_lo",
                 "delta_hi", "p_value", "sparsity", "file_bytes", "gzip_bytes", "packed_bytes", "onnx_int8_bytes",
                 "rf_packed",
                 lat_col(PYTORCH_FP32, B256), lat_col(ORT_CPU_INT8, B256),
                 speedup_col(ORT_CPU_INT8, B256), speedup_col(ORT_CPU_INT8, B256, "lo"),
                 speedup_col(ORT_CPU_INT8, B256, "hi"), state_col(speedup_col(ORT_CPU_INT8, B256)),
                 gain_col(ORT_CPU_INT8, B256), "error"]


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    p = Path(path)
    user_file(p, "results file", hint=" (write one with `python -m explorer sweep --out`)")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"results file {str(p)!r} is not a readable CSV: {e}") from None
    missing = {"label", "status", "top1", "accuracy_delta"} - set(df.columns)
    if missing:
        raise ValueError(f"results file {str(p)!r} lacks the columns {sorted(missing)}: is it a sweep's CSV?")
    return df


def render(df: pd.DataFrame, title: str = "Compression trade-offs", hardware: str | None = None,
           forgets: dict | None = None) -> str:
    """The report; `forgets` (service.forgets of the sweet spot against its baseline) adds what the pick
    gets wrong that the baseline got right."""
    shown = across_seeds(df) if "seed" in df.columns and df["seed"].nunique() > 1 else df
    figs = [plots.sparsity_accuracy(shown), plots.ad_rf_ranking(shown, "gzip_bytes"),
            plots.ad_rf_ranking(shown, "packed_bytes"), plots.pareto(shown, "packed_bytes", "packed bytes"),
            plots.pareto(shown, reltime_col(ORT_CPU_INT8, B256), "time against the baseline's, both in ONNX Runtime "
                         "int8, batch 256 (1 = the baseline; lower is faster)")]
    if forgets is not None:
        f = forgets["forgets"]
        (lost, lost_captions), (gained, gained_captions) = forgets["lost"], forgets["gained"]
        figs += [plots.per_class_change(f.per_class), plots.confusion_change(f.confusion_change, forgets["classes"]),
                 plots.flipped_images(lost, lost_captions, f"Lost: the baseline was right, now wrong ({len(f.lost)})"),
                 plots.flipped_images(gained, gained_captions, f"Gained: the baseline was wrong, now right "
                                                               f"({len(f.gained)})")]
    parts = [fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
             for i, fig in enumerate(figs)]
    ok = df[df["status"] == "ok"]
    pick = sweet_spot(ok, max_drop=1.0, objective="smallest") if len(ok) else None
    forgot = (f"<h2>What the sweet spot forgets</h2><p>Against its baseline on the same {forgets['test_samples']:,} "
              f"test images (Hooker et al., \"What do compressed deep neural networks forget?\", 2019): "
              f"{len(forgets['forgets'].lost):,} images it gets wrong that the baseline got right, "
              f"{len(forgets['forgets'].gained):,} the reverse. The charts below break them down by class.</p>"
              if forgets is not None else "")
    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    table = df[cols].to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="", border=0)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    failed = int((df["status"] != "ok").sum())
    fell = int(collapsed_rows(df).sum())
    gone = (f" {fell} of them collapsed (the model guesses): marked with a cross on the lower edge of each chart, "
            "never part of a curve or a front, never the sweet spot.") if fell else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;
font-size:13px}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(df)} runs ({failed} failed), written {when}.{gone} Sizes are read from real files; accuracy is measured on the
model rebuilt from the packed file; latency is the median of repeated runs after warm-up{
    "; hardware: " + html.escape(hardware) if hardware else ""}.</p>
<p><b>Sweet spot</b> (the smallest packed file 95% sure to lose at most 1 point of top-1, judged on the paired
intervals each run keeps): {html.escape(pick.reason) if pick else "no successful run"}</p>
<p>Speed-ups ({speedup_col(ORT_CPU_INT8, B256)}) are against the baseline in the same engine and batch size, timed
in the same interleaved rounds; the baseline's own row is 1 by construction. A speed-up whose timing failed its own
checks (the machine was busy) has no number and reads "disturbed" in {state_col(speedup_col(ORT_CPU_INT8, B256))}.
The deployment gain ({gain_col(ORT_CPU_INT8, B256)}) is a separate figure: the run in ONNX Runtime int8 against the
baseline as run today, in PyTorch fp32.</p>
<p>Error bars are 95% intervals: Wilson intervals for top-1 over the test images, or one standard deviation across
seeds where a configuration ran with several. Open markers are runs whose difference from the baseline is not
significant (exact McNemar test on the same test images, 5% level).</p>
{''.join(f'<div>{p}</div>' for p in parts[:5])}{forgot}{''.join(f'<div>{p}</div>' for p in parts[5:])}
<h2>All runs</h2>{table}
<p>Normalised AD x RF is the score of Ishtiaq et al., "Model Compression" (Habib University): the accuracy delta
(AD, points) times the reduction factor (RF, times smaller), standardised across the runs shown. It is relative to
this table, gives 0 to any run with no accuracy change whatever its size, and lets a tiny accuracy gain beat any
compression; read it beside the Pareto fronts.</p>
</body></html>"""


def write_report(df: pd.DataFrame, path: str | os.PathLike, **kw) -> int:
    text = render(df, **kw)
    Path(path).write_text(text, encoding="utf-8")
    return len(text)
