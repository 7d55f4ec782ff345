"""The views of the current run: headline figures, curves, size, latency, Pareto fronts, layers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import streamlit as st

from explorer.app import plots
from explorer.app.service import (
    SHIP_DEFAULT,
    SHIPS,
    RunResult,
    Speed,
    across_seeds,
    collapse_words,
    collapsed,
    describe,
    disturbed_figures,
    emptied_words,
    explain,
    fmt_bytes,
    recipe_download,
    retime_wait_words,
    shipped,
    speed,
    speed_with_interval,
)
from explorer.app.ui.timing import busy_words, load_words, timing_rows
from explorer.core import words
from explorer.core.engines import (
    B1,
    B256,
    ORT_CPU_FP32,
    ORT_CPU_INT8,
    TORCH_CPU,
    TORCH_CUDA_FP16,
    TORCH_CUDA_FP32,
    reltime_col,
)
from explorer.core.markup import md

ENGINES_SHOWN = (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8, TORCH_CUDA_FP32,
                 TORCH_CUDA_FP16)


Figures = Mapping[str, Mapping[str, Mapping[str, Any]]]  # engine -> batch -> one latency figure


def _figures(result: RunResult | None, which: Literal["latency", "baseline_latency"] = "latency") -> Figures:
    """A run's latency figures (or the baseline's from the same rounds), empty where there are none."""
    if result is None:
        return {}
    figures = result.get("baseline_latency") if which == "baseline_latency" else result.get("latency")
    return figures or {}


def _lat(result: RunResult, engine: str, batch: str) -> float | None:
    v = _figures(result).get(engine, {}).get(batch, {})
    return v.get("median_ms") if v.get("available") else None


TILES = {TORCH_CPU: "PyTorch fp32, batch 256", ORT_CPU_INT8: "ONNX Runtime int8"}  # short: the tiles are narrow


def _speedup(result: RunResult, engine: str, batch: str
             ) -> tuple[str | None, Literal["green", "red", "off"], Literal["up", "down", "off"]]:
    """The metric's delta text for a speed-up (against the baseline in the same engine), its colour and its
    arrow: green and up where it is faster, red and down where slower (Streamlit reads the direction from a
    leading minus sign, which "1.19x slower" has not, so it drew a slower run as a green gain); grey with no
    arrow where the interval holds 1, for the baseline itself, and where the timing was disturbed (then no
    number at all)."""
    sp = speed(result, engine, batch)
    if sp.state == "pending":
        return None, "off", "off"
    if sp.state == "faster":
        return sp.text, "green", "up"
    if sp.state == "slower":
        return sp.text, "red", "down"
    return sp.text, "off", "off"


def gain_sentence(result: RunResult) -> str:
    """The deployment gain in words: this artifact in ONNX Runtime int8 against the baseline as run today."""
    g = speed(result, ORT_CPU_INT8, B256, "deployment_gain")
    if g.state in ("pending", "baseline"):
        return ""
    return (f"Deployment gain, a separate figure from the tiles' speed-ups: this model in ONNX Runtime int8 against "
            f"the baseline as you run it today in PyTorch fp32, batch of 256, timed in the same rounds: "
            f"{speed_with_interval(g)}. It counts the change of engine as well as the compression.")


def accuracy_sentence(result: RunResult) -> str:
    """Top-1 with its interval and the paired comparison with the baseline, in words."""
    ci, vs = result.get("accuracy_ci"), result.get("vs_baseline")
    if not ci or not vs:
        return ""
    n = result["test_samples"]
    lo, hi = vs["delta_ci"]
    verdict = ("a real change (exact McNemar p = {:.2g})" if vs["significant"] else
               "within noise (exact McNemar p = {:.2g})").format(vs["p_value"])
    if collapsed(result):  # a guess is no change to weigh
        verdict = "not a trade-off: the model collapsed (see above)"
    return (f"Top-1 {result['accuracy']['top1']:.2f}%, 95% interval {ci['top1'][0]:.2f}–{ci['top1'][1]:.2f}% over "
            f"{n:,} test images. Against the baseline on the same images: {words.count(vs['baseline_only'], 'image')} "
            f"it got right {'is' if vs['baseline_only'] == 1 else 'are'} now wrong, "
            f"{words.count(vs['run_only'], 'image')} it got wrong {'is' if vs['run_only'] == 1 else 'are'} now "
            f"right; the change is {result['accuracy_delta']:+.2f} "
            f"points, 95% interval {lo:+.2f} to {hi:+.2f}: {verdict}.")


def _verdict(vs: Mapping[str, Any], delta: float) -> str:
    if not vs.get("significant"):
        return f"within noise (exact McNemar p = {vs['p_value']:.2g})"
    return f"a real {'gain' if delta > 0 else 'loss'} (exact McNemar p = {vs['p_value']:.2g})"


def control_sentence(result: RunResult) -> str:
    """The run against the baseline fine-tuned the same way without compression (its same-budget control), in
    words: the fair comparison where a recipe fine-tunes, beside the one with the untouched baseline."""
    vc = result.get("vs_control")
    if not vc:
        return ""
    lo, hi = vc["delta_ci"]
    return (f"Against the baseline fine-tuned the same {vc['budget']} without compression (top-1 {vc['top1']:.2f}%, "
            f"the fair control for this fine-tuning), on the same images: {vc['delta']:+.2f} points, 95% interval "
            f"{lo:+.2f} to {hi:+.2f}: {_verdict(vc, vc['delta'])}.")


def fine_tuning_gain(result: RunResult) -> str:
    """Where the run gains over the untouched baseline but not over the same training without compression: the
    sentence that says the gain is the fine-tuning's ("" elsewhere)."""
    vs, vc = result.get("vs_baseline") or {}, result.get("vs_control")
    if not vc or not vs.get("significant") or result["accuracy_delta"] <= 0:
        return ""
    if vc.get("significant") and vc["delta"] > 0:
        return ""  # it beats the same training without compression too: the gain is partly the compression's
    how = "does as well: this run is within noise of it" if not vc.get("significant") else \
        f"does better: this run is {-vc['delta']:.2f} points below it"
    return (f"The gain of {result['accuracy_delta']:+.2f} points over the baseline is the fine-tuning's, not the "
            f"compression's: the baseline fine-tuned the same {vc['budget']} without compression scores "
            f"{vc['top1']:.2f}% and {how}. The baseline was not trained to convergence; compression did not make it "
            "more accurate.")


def plain_sentence(result: RunResult, sh: Mapping[str, Any]) -> str:
    """The run in one sentence for a stakeholder: what it keeps of the accuracy, what it buys in size and speed,
    each said only as far as its measurement holds (a change within noise is no change, a disturbed timing no
    figure)."""
    vs = result.get("vs_baseline") or {}
    d = result["accuracy_delta"]
    acc = (f"keeps the baseline's accuracy (top-1 {result['accuracy']['top1']:.2f}%, a change within noise)"
           if vs and not vs.get("significant") else
           f"{'gains' if d > 0 else 'loses'} {abs(d):.2f} points of top-1 ({result['accuracy']['top1']:.2f}%)")
    rf = sh.get("times_smaller")
    size = (f"{sh['what'].split(' (')[0]} is no smaller" if sh.get("no_smaller") else
            f"{sh['what'].split(' (')[0]} is {rf:.1f}x smaller" if rf else "")
    sp = speed(result, ORT_CPU_INT8, B256)
    fast = {"faster": f"it runs {sp.text} in ONNX Runtime int8", "slower": f"it runs {sp.text} in ONNX Runtime int8",
            "within noise": "its ONNX Runtime int8 speed is the baseline's (within noise)"}.get(sp.state, "")
    parts = [p for p in (size, fast) if p]
    return f"This configuration {acc}" + (f"; {' and '.join(parts)}" if parts else "") + "."


def headline(result: RunResult, ship: str = SHIP_DEFAULT, base: RunResult | None = None,
             presenter: bool = False) -> None:
    """The run's tiles, its one sentence, the statistics behind them (in an expander), and what will surprise.
    `presenter`: three tiles (top-1, the size of what ships, the int8 speed-up) for a demo."""
    acc = result["accuracy"]
    if fell := collapse_words(result):  # first, before any figure is read as a trade-off
        st.error(md(fell))
    c = st.columns(3 if presenter else 5)
    delta = result["accuracy_delta"]
    vs = result.get("vs_baseline") or {}
    change = f"{delta:+.2f} pts" if abs(delta) >= 0.005 else None
    if change and vs and not vs.get("significant"):
        change += " (within noise)"
    quiet = bool(vs) and not vs.get("significant")
    if fell:
        change, quiet = "collapsed: a guess", True
    scored, n = result.get("scored"), result.get("test_samples")
    so_far = f"Top-1, first {scored:,} of {n:,} images" if scored and n and scored < n else "Top-1 (measured)"
    c[0].metric(so_far, f"{acc['top1']:.2f}%", change, delta_color="off" if quiet else "normal",
                delta_arrow="off" if quiet else "auto",
                help="Measured on the model rebuilt from the packed file; the arrow is the change vs the baseline "
                     "on the same test images, grey and without an arrow where it is within noise (see the line "
                     "below).")
    sh = shipped(dict(result), ship, dict(base.get("size") or {}) if base else None)
    rf = sh["times_smaller"]
    pending = result.get("status") == "partial" and sh["bytes"] is None  # the ONNX files come after the packed one
    c[1].metric({"packed": "Packed size", "onnx": "ONNX fp32 size", "onnx_int8": "ONNX int8 size"}.get(ship, "Size"),
                fmt_bytes(sh["bytes"]) if sh["bytes"] else "measuring..." if pending else "n/a",
                None if rf is None else "no smaller" if sh["no_smaller"] else f"{rf:.1f}x smaller",
                delta_color="off" if sh["no_smaller"] else "normal",
                help=f"Bytes of {md(sh['what'])}, what you deploy (set in the sidebar), measured, against "
                     f"{md(sh['against'])} ({fmt_bytes(sh['against_bytes'])}).")
    removed = 1 - result["params"] / max(result["baseline_params"], 1)
    if not presenter and removed > 0.005:  # structural compression: the parameters are gone, not zeros among them
        c[2].metric("Parameters removed", f"{removed:.1%}",
                    help=f"{result['baseline_params']:,} parameters in the baseline, {result['params']:,} now; "
                         f"{result['sparsity']:.1%} of the remaining weights are zero.")
    elif not presenter:
        c[2].metric("Weight sparsity", f"{result['sparsity']:.1%}", help="The share of weights that are zero.")
    pending = result.get("status") == "partial"
    if sh["no_smaller"]:
        st.warning(f"{md(sh['what'][0].upper() + sh['what'][1:])}, which you deploy, is no smaller than the baseline's "
                   f"({fmt_bytes(sh['bytes'])}): it stores every weight at its own precision, the zeros too, so "
                   "pruning single weights, clustering and weights rounded to fewer bits leave its size as it is. "
                   "The packed file, which skips the zeros and packs the bits, is "
                   f"{fmt_bytes((result.get('size') or {}).get('packed_bytes'))}; removing whole channels, low-rank "
                   "factors or the int8 file shrink what ONNX Runtime loads.")
    for col, engine in ((c[2], ORT_CPU_INT8),) if presenter else ((c[3], TORCH_CPU), (c[4], ORT_CPU_INT8)):
        ms = _lat(result, engine, B256)
        text, color, arrow = _speedup(result, engine, B256)
        col.metric(TILES[engine], f"{ms:.2f} ms" if ms else "timing..." if pending else "n/a",
                   text, delta_color=color, delta_arrow=arrow,
                   help=f"{words.engine(engine, B256)}: median of interleaved timing rounds, batch of 256 images. "
                        "The arrow is the speed-up over the baseline in the same engine, timed in the same rounds; "
                        "'within noise' where its 95% interval holds 1; 'timing disturbed' where the timing failed "
                        "its own checks (the machine was busy), and then no figure is shown. The absolute time "
                        "moves with whatever else the machine runs; the speed-up, timed side by side, holds.")
    st.markdown(md(plain_sentence(result, sh)))
    with st.expander("The statistics behind these figures"):  # before the tables, not eight paragraphs of them
        for sentence in (accuracy_sentence(result), control_sentence(result), gain_sentence(result)):
            if sentence:
                st.caption(sentence)
        if any(speed(result, e, B256).state == "disturbed" for e in (TORCH_CPU, ORT_CPU_INT8)):
            wait = retime_wait_words()  # "re-timing" that never comes needs its reason
            if wait:
                st.caption(wait)
    if warning := fine_tuning_gain(result):
        st.warning(md(warning))
    notes = list(dict.fromkeys(result.get("notes", [])))
    for note in notes:
        st.info(md(note))
    if not pending:
        for note in surprises(result, notes):
            st.warning(md(note))


def surprises(result: RunResult, notes: Sequence[str] = ()) -> list[str]:
    """Figures that will surprise a user, with the reason beside them (DESIGN: honest measurement); none that
    a note of the run already explains."""
    out = explain(result)  # what each technique of the recipe knows will surprise
    fp32 = _lat(result, ORT_CPU_FP32, B256)
    int8 = _lat(result, ORT_CPU_INT8, B256)
    if fp32 and int8 and int8 > fp32 and _clearly_slower(result, ORT_CPU_INT8, ORT_CPU_FP32, B256):
        hardware: Mapping[str, Any] = result.get("hardware") or {}
        isa = hardware.get("isa", [])
        why = ("this CPU has no VNNI int8 dot-product instructions" if "avx512_vnni" not in isa and
               "avx_vnni" not in isa else "at this size the quantise/dequantise steps cost more than the int8 "
               "arithmetic saves")
        onnx: Mapping[str, Any] = result.get("onnx") or {}
        mode = (onnx.get("int8") or {}).get("mode")
        if mode == "dynamic":
            why = "dynamic quantisation computes activation ranges at run time and uses ConvInteger for convolutions"
        out.append(f"In ONNX Runtime, int8 is slower than fp32 here ({int8:.2f} ms against {fp32:.2f} ms at batch "
                   f"256; the fp32 time is in the table below, not in the tiles above): {why}.")
    return [n for n in dict.fromkeys(out) if n not in notes]


def _clearly_slower(result: RunResult, slow: str, fast: str, batch: str) -> bool:
    """Whether `slow` is slower than `fast` beyond both medians' intervals (same session's rounds)."""
    a = _figures(result).get(slow, {}).get(batch, {})
    b = _figures(result).get(fast, {}).get(batch, {})
    if not (a.get("ci_ms") and b.get("ci_ms")):
        return True
    return a["ci_ms"][0] > b["ci_ms"][1]


def comparison_table(result: RunResult, base: RunResult | None = None) -> pd.DataFrame:
    """The baseline beside the current run; `base` is the baseline's own run (no steps), which gives
    its packed size, ONNX sizes, MACs and latency measured the same way."""
    got: Mapping[str, Any] = base or {}
    acc, b_acc = result["accuracy"], result["baseline_accuracy"]
    # the baseline's file, gzip and zstd are those of its committed checkpoint (the figures every reduction factor
    # divides by); its packed and ONNX sizes come from its own run
    sz: Mapping[str, Any] = result["size"]
    bsz: Mapping[str, Any] = {**(got.get("size") or {}), **result["baseline_size"]}

    def b(key: str) -> Any:
        return got.get(key)

    rows = [("top-1 (%)", b_acc["top1"], acc["top1"]), ("top-3 (%)", b_acc["top3"], acc["top3"]),
            ("top-5 (%)", b_acc["top5"], acc["top5"]), ("parameters", result["baseline_params"], result["params"]),
            ("non-zero parameters", b("nonzero_params"), result["nonzero_params"]),
            ("MACs per image", b("macs"), result["macs"])]
    for label, key in (("checkpoint file (bytes; the baseline's committed file)", "file_bytes"),
                       ("gzip of checkpoint (bytes)", "gzip_bytes"),
                       ("packed .xpk (bytes)", "packed_bytes"), ("ONNX fp32 (bytes)", "onnx_bytes"),
                       ("ONNX int8 (bytes)", "onnx_int8_bytes")):
        rows.append((label, bsz.get(key), sz.get(key)))
    verdicts: dict[int, str | Speed] = {0: _accuracy_verdict(result)}
    for engine in ENGINES_SHOWN[:3]:
        for batch in (B1, B256):
            # the baseline as timed in the same rounds as this run (what the speed-up divides), else its own run
            in_round = _figures(result, "baseline_latency").get(engine, {}).get(batch, {})
            b_ms = in_round.get("median_ms") if in_round.get("available") else _lat(base, engine, batch) if base \
                else None
            verdicts[len(rows)] = speed(result, engine, batch)
            rows.append((f"latency, {words.engine(engine, batch)} (median ms)", b_ms, _lat(result, engine, batch)))
    df = pd.DataFrame(rows, columns=["figure", "baseline", "this run"])
    for col in ("baseline", "this run"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["change"] = df["this run"] - df["baseline"]
    df["against the baseline"] = [v.text if isinstance(v, Speed) else v for v in
                                  (verdicts.get(i, "") for i in range(len(df)))]
    for i, v in verdicts.items():
        if isinstance(v, Speed) and v.state in ("disturbed", "pending"):
            df.loc[i, "change"] = float("nan")  # a disturbed timing shows no change, as its tile shows no arrow
    return df


def _accuracy_verdict(result: RunResult) -> str:
    vs = result.get("vs_baseline") or {}
    if not vs or not result.get("recipe", {}).get("steps"):
        return ""
    if collapsed(result):
        return "collapsed: not a trade-off"
    return "a real change" if vs.get("significant") else "within noise"


def show_table(df: pd.DataFrame, key: str) -> None:
    """Numbers with separators and sensible precision, empty cells blank, no inner scrollbar; a change column
    carries its sign, and a change that rounds to nothing is 0, not -0.000."""
    def fmt(v, signed: bool = False):
        if v is None or pd.isna(v):
            return ""
        sign = "+" if signed else ""
        if isinstance(v, float) and not float(v).is_integer():
            places = 3 if abs(v) < 100 else 2
            if round(v, places) == 0:
                return "0"
            return f"{v:{sign},.{places}f}"
        if not isinstance(v, (int, float)):
            return str(v)
        return f"{int(v):{sign},}" if int(v) else "0"

    shown = df.copy()
    for col in shown.columns[1:]:
        if pd.api.types.is_numeric_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v, s=str(col) == "change": fmt(v, s))
    st.dataframe(shown, hide_index=True, key=key, height=35 * (len(shown) + 1) + 3)


def presenter_chart(frame: pd.DataFrame, key: str | None) -> None:
    """The one chart of the presenter view: top-1 against sparsity, this configuration starred."""
    if "seed" in frame.columns and frame["seed"].nunique() > 1:
        frame = across_seeds(frame)
    st.plotly_chart(plots.sparsity_accuracy(frame, key), key="chart_presenter")


def curves(frame: pd.DataFrame, key: str | None, ship: str = SHIP_DEFAULT,
           controls: pd.DataFrame | None = None) -> None:
    if frame.empty or frame["status"].eq("ok").sum() < 2:
        st.info("The curves fill in as runs accumulate: move the sliders, or launch a sweep in the Sweep tab.")
    if "seed" in frame.columns and frame["seed"].nunique() > 1:
        frame = across_seeds(frame)  # one point per configuration: the mean across seeds, bars one sd
    st.plotly_chart(plots.sparsity_accuracy(frame, key, controls=controls), key="chart_sparsity_accuracy")
    if not frame.empty and (key is None or not (frame["key"] == key).any()):
        st.caption("Your configuration has no star on the charts yet: it is drawn once its run is measured (the "
                   "Overview shows its progress).")
    if controls is not None and not controls.empty:
        st.caption("Dashed lines: the baseline fine-tuned without compression for the budgets the runs fine-tune "
                   "with (the same epochs, images and learning rate), each with its 95% interval. A run above the "
                   "baseline but not above its line gained from the training, not from the compression.")
    left, right = st.columns(2)
    with left:
        col, what, label = SHIPS[ship]
        st.plotly_chart(plots.pareto(frame, col, f"size of {what.split(' (')[0]} (bytes): what you deploy", key,
                                     short=f"{label} size"), key="chart_pareto_size")
    with right:
        st.plotly_chart(plots.pareto(frame, reltime_col(ORT_CPU_INT8, B256),
                                     "time against the baseline's, both in ONNX Runtime int8,<br>batch of 256 (1 = "
                                     "the baseline; lower is faster)", key, short="int8 time vs the baseline"),
                        key="chart_pareto_latency")
    kind = st.radio("Size measure for the accuracy delta x reduction factor score", ["packed_bytes", "gzip_bytes"],
                    horizontal=True, key="adrf_kind", format_func=lambda k: plots.SIZE_LABELS[k])
    st.plotly_chart(plots.ad_rf_ranking(frame, kind, key), key="chart_adrf")
    st.caption("Accuracy delta times reduction factor (AD x RF), standardised across the runs shown: the score of "
               "Ishtiaq et al., \"Model Compression\" (Habib University). It rewards runs that lose little accuracy "
               "for their compression, but is relative to this set of runs, scores any run with no accuracy change as "
               "0 whatever its size, and lets a tiny accuracy gain beat any compression. Read it beside the Pareto "
               "fronts; the bars show each run's paired 95% interval carried through the same standardisation. The "
               "reduction factor of the packed file is against the baseline's fp32 checkpoint file, as everywhere "
               "on this page; gzip's is gzip against the gzip of that file, as the paper defines it.")


def size_and_latency(result: RunResult) -> None:
    st.plotly_chart(plots.size_bars(result), key="chart_size")
    th = result.get("theoretical") or {}
    if th:
        st.caption(f"Theoretical (not measured): {th.get('total_bytes', 0):,.0f} bytes from non-zeros x bits plus "
                   "index overhead; the packed file adds its header and per-tensor parameters and may beat it with "
                   "zstd. Every other figure here is read from a real file.")
    st.plotly_chart(plots.latency_bars(result), key="chart_latency")
    hw = result.get("hardware") or {}
    timing = words.count(result.get("latency_threads", "?"), "thread")
    training = words.count((result.get("threads") or {}).get("compress_and_evaluate", "?"), "thread")
    load = load_words(result)
    st.caption(f"Hardware: {describe(hw)}" + (f"; {load}" if load else "") + f". Median of repeated runs after "
               f"warm-up, {timing}; the whiskers are the 95% interval of the median (the 90th percentile where a run "
               "has no interval). Absolute times move with whatever else the machine runs; the speed-ups against the "
               "baseline in the same engine are timed in the same rounds and hold, and each one checks itself before "
               f"it is shown. Compression and fine-tuning: {training} (EXPLORER_TRAIN_THREADS), the same in the page, "
               "the CLI and sweeps.")
    busy = busy_words(result)
    if busy:
        st.warning(busy)
    checks = timing_rows(result)
    if not checks.empty:
        with st.expander("How each speed-up checked itself"):
            st.dataframe(checks, hide_index=True, key="timing_checks_table")
            st.caption("A speed-up is shown only when the median of the per-round ratios and the ratio of the medians "
                       "agree, its 95% interval is narrow (high / low at most the bound shown), the baseline ran as "
                       "fast as its own reference timing on this machine (within 15% or its interval), and every "
                       "kept round had the CPU (CPU time at least 0.9 of the wall time). Rounds that lost the CPU "
                       "are dropped and replaced; a figure that still fails is timed again, then shown as disturbed.")
    missing = [(e, v[B1]["reason"]) for e, v in _figures(result).items()
               if not v.get(B1, {}).get("available")]
    if not hw.get("gpu"):
        st.markdown("**GPU: not available on this machine.**")
    for engine, reason in missing:
        st.caption(f"{plots.ENGINE_LABELS.get(engine, engine)}: not available ({md(reason)})")


LAYER_COLUMNS = {"layer": "layer", "type": "type", "shape": "weight shape", "params": "parameters",
                 "nonzero": "non-zero weights", "sparsity": "share of zero weights", "distinct": "distinct values",
                 "bits": "bits per weight", "clusters": "shared values (clustering)",
                 "packed_bytes": "bytes in the packed file", "macs": "multiply-accumulates per image",
                 "sensitivity": "top-1 change alone (points)"}


def layers(result: RunResult, sensitivity: dict | None) -> None:
    if emptied := emptied_words(result):
        st.error(md(emptied))
    table = pd.DataFrame(result["layers"])
    if sensitivity:
        table["sensitivity"] = pd.to_numeric(table["layer"].map(sensitivity), errors="coerce")
        if table["sensitivity"].isna().any():
            st.caption("Sensitivity is blank for layers whose shape the recipe changed: they have no one-layer "
                       "counterpart in the baseline.")
    options = ["params", "sparsity", "bits", "packed_bytes", "macs"] + (["sensitivity"] if sensitivity else [])
    col = st.radio("Per-layer figure", options, horizontal=True, key="layer_figure",
                   format_func=lambda c: plots.LAYER_FIGURES[c])
    st.plotly_chart(plots.layer_bars(table, col), key="chart_layers")
    if col == "sensitivity":
        n = result.get("test_samples") or 0
        st.caption(f"Each bar is the top-1 change, in points, with only that layer compressed as this recipe "
                   f"compresses it (negative: worse). One test image is {100 / max(n, 1):.2f} points of "
                   f"{words.count(n, 'test image')}, so a change of a few images is within noise.")
    shown = table.rename(columns=LAYER_COLUMNS)
    if "clusters" in table:
        shown[LAYER_COLUMNS["clusters"]] = table["clusters"].map(lambda k: "" if pd.isna(k) else f"{int(k)}")
    st.dataframe(shown, hide_index=True, key="layers_table_run")
    hists = result.get("histograms") or {}
    if hists:
        layer = st.selectbox("Weight histogram of layer", list(hists), key="hist_layer")
        st.plotly_chart(plots.weight_histogram(hists[layer], layer), key="chart_hist")


def forgets_view(view: dict | None, result: RunResult) -> None:
    """What compression forgets (Hooker et al., 2019): per-class change, where predictions moved, and the
    test images whose prediction flipped, all from the predictions the runs stored."""
    if not result.get("recipe", {}).get("steps"):
        st.info("This is the baseline itself: nothing to compare. Choose a compression in the sidebar.")
        return
    if view is None:
        st.info("The predictions of this run or of its baseline are not in the cache; run them again.")
        return
    f = view["forgets"]
    lost, gained = len(f.lost), len(f.gained)
    st.markdown(f"On the same {view['test_samples']:,} test images, the compressed model gets **{lost:,}** wrong "
                f"that the baseline got right, and **{gained:,}** right that the baseline got wrong (net "
                f"{gained - lost:+,}). Following Hooker et al., \"What do compressed deep neural networks "
                "forget?\" (2019): an unchanged top-1 can hide changes that fall on some classes more than others.")
    st.plotly_chart(plots.per_class_change(f.per_class), key="chart_forgets_classes")
    st.plotly_chart(plots.confusion_change(f.confusion_change, view["classes"]), key="chart_forgets_confusion")
    for key, (images, captions), what, n in (("lost", view["lost"], "Lost: the baseline was right, now wrong", lost),
                                             ("gained", view["gained"], "Gained: the baseline was wrong, now right",
                                              gained)):
        shown = f" (the first {len(images)} of {n:,})" if n > len(images) else ""
        st.plotly_chart(plots.flipped_images(images, captions, f"{what}{shown}"), key=f"chart_forgets_{key}")


DELIVERABLES = (  # file in the cache, size field, button label, what it is for
    ("model.xpk", "packed_bytes", "Packed .xpk",
     "The smallest exact form of the compressed model; load it back in Python with "
     "`explorer.unpack(open('model.xpk', 'rb').read()).model` (a PyTorch module)."),
    ("model.onnx", "onnx_bytes", "ONNX, fp32",
     "The compressed model as a float ONNX graph, for ONNX Runtime or any ONNX runtime."),
    ("model.int8.onnx", "onnx_int8_bytes", "ONNX, int8",
     "The same model quantised to int8 with ONNX Runtime (QDQ)."),
)


def fastest_on_cpu(result: RunResult, batch: str = B256) -> str | None:
    """The CPU engine measured faster than every other at `batch` (its interval below theirs, in the same rounds,
    with no disturbed timing), or None where none is."""
    lat = _figures(result)
    if disturbed_figures(result) or not result.get("timing_quality"):  # disturbed, or timed before the checks
        return None
    figs = {e: lat.get(e, {}).get(batch, {}) for e in ENGINES_SHOWN[:3]}
    figs = {e: f for e, f in figs.items() if f.get("available") and f.get("ci_ms")}
    for e, f in figs.items():
        if all(f["ci_ms"][1] < g["ci_ms"][0] for o, g in figs.items() if o != e):
            return e
    return None




EAGER_BYTES = 16 << 20


def file_name(result: RunResult, name: str) -> str:
    """A download's file name that says which configuration it is, so files from several do not collide:
    '<model>-<data set>-<run key's first 8 digits>-<name>' ('lenet5-fashion-mnist-3fa9c2d1-model.onnx')."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{result['model']}-{result['dataset']}").strip("._")
    return f"{stem}-{str(result.get('key', ''))[:8]}-{name}"


def downloads(result: RunResult, artifact, key: str) -> None:
    """Every deployable the run made, each with its measured size and what it is for, and the recipe. The
    bytes are read and checked against the cache's checksums when the button is pressed."""
    if collapsed(result):
        st.warning("These files hold the collapsed model: it guesses. They are what this configuration made, not a "
                   "trade-off to deploy.")
    cols = st.columns(4)
    sizes = result.get("size") or {}
    for col, (name, field, label, what) in zip(cols, DELIVERABLES, strict=False):
        n = sizes.get(field)
        if name == "model.int8.onnx" and fastest_on_cpu(result) == ORT_CPU_INT8:
            what += " It is the fastest CPU deployment measured here (batch of 256, beyond the timing's intervals)."
        def read(k=result["key"], f=name) -> bytes:
            return artifact(k, f) or b"this file no longer matches its checksum; run the configuration again"

        # files up to EAGER_BYTES are handed over as the page is drawn, so they exist when the button is pressed
        # (a file made only on the click can be gone by then: the page's refreshes replace it); larger ones are
        # read on the click rather than on every redraw
        col.download_button(f"{label} ({fmt_bytes(n)})", read() if n and n <= EAGER_BYTES else read,
                            file_name(result, name), disabled=not n, key=f"{key}_{name}", help=what)
    recipe = recipe_download(result)  # the model by name and sha256, not by this server's path
    cols[3].download_button(f"Recipe JSON ({fmt_bytes(len(recipe))})", recipe.encode(),
                            file_name(result, "recipe.json"),
                            "application/json", key=f"{key}_recipe",
                            help="Reproduces this run: python -m explorer run --recipe recipe.json --out DIR")
    own = result.get("recipe", {}).get("checkpoint") is not None
    st.caption("Packed .xpk: load it back with `explorer.unpack(bytes).model`. ONNX files: any ONNX runtime; their "
               "metadata say the input they take (size, mean and standard deviation, class names). Recipe: `python -m "
               "explorer run --recipe recipe.json" + (" --checkpoint FILE` (FILE: your model's file; the recipe holds "
                                                     "its sha256 and how it is fed)" if own else "`")
               + " computes the same figures on any machine.")


def glossary() -> None:
    with st.expander("Glossary: the terms on this page"):
        st.markdown("\n".join(f"- **{term}**: {text}" for term, text in words.GLOSSARY.items()))
