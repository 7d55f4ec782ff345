"""The views of the current run: headline figures, curves, size, latency, Pareto fronts, layers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import plots
from explorer.measure.hardware import describe

ENGINES_SHOWN = ("torch_cpu_fp32", "onnxruntime_cpu_fp32", "onnxruntime_cpu_int8", "torch_cuda_fp32",
                 "torch_cuda_fp16")


def fmt_bytes(n) -> str:
    if n is None or pd.isna(n):
        return "n/a"
    n = int(n)
    return f"{n:,} B" if n < 1024 else f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def _lat(result: dict, engine: str, batch: str):
    v = (result.get("latency") or {}).get(engine, {}).get(batch, {})
    return v.get("median_ms") if v.get("available") else None


def headline(result: dict) -> None:
    acc = result["accuracy"]
    sz, rf = result["size"], result["reduction_factor"]["vs_fp32_file"]
    c = st.columns(5)
    delta = result["accuracy_delta"]
    c[0].metric("Top-1 (measured)", f"{acc['top1']:.2f}%", f"{delta:+.2f} pts" if abs(delta) >= 0.005 else None,
                help="Measured on the model rebuilt from the packed file; the arrow is the change vs the baseline.")
    if sz.get("packed_bytes"):
        c[1].metric("Packed size", fmt_bytes(sz["packed_bytes"]), f"{rf.get('packed_bytes', 0):.1f}x smaller",
                    help="Bytes of the .xpk file, measured. Factor vs the fp32 baseline file.")
    else:
        c[1].metric("Model file", fmt_bytes(sz["file_bytes"]), f"{rf.get('file_bytes', 0):.1f}x smaller",
                    help="Bytes of the deployed model file, measured (no packed format for ONNX models).")
    c[2].metric("Weight sparsity", f"{result['sparsity']:.1%}")
    torch_ms, int8_ms = _lat(result, "torch_cpu_fp32", "b256"), _lat(result, "onnxruntime_cpu_int8", "b256")
    c[3].metric("PyTorch b256", f"{torch_ms:.2f} ms" if torch_ms else "n/a",
                help="PyTorch eager on the CPU, batch 256: median of repeated runs (see Size and latency).")
    c[4].metric("ORT int8 b256", f"{int8_ms:.2f} ms" if int8_ms else "n/a",
                help="ONNX Runtime int8 on the CPU, batch 256: median of repeated runs.")
    for note in result.get("notes", []):
        st.info(note)
    for note in surprises(result):
        st.warning(note)


def surprises(result: dict) -> list[str]:
    """Figures that will surprise a user, with the reason beside them (DESIGN: honest measurement)."""
    out = []
    sz, base = result["size"], result["baseline_size"]
    if result["sparsity"] > 0.3 and sz["file_bytes"] >= 0.95 * base["file_bytes"]:
        out.append(f"The checkpoint file is no smaller than the dense one ({fmt_bytes(sz['file_bytes'])}): the "
                   f"zeros are stored. The packed file, which skips them, is {fmt_bytes(sz['packed_bytes'])}.")
    fp32 = _lat(result, "onnxruntime_cpu_fp32", "b256")
    int8 = _lat(result, "onnxruntime_cpu_int8", "b256")
    if fp32 and int8 and int8 > fp32:
        isa = result.get("hardware", {}).get("isa", [])
        why = ("this CPU has no VNNI int8 dot-product instructions" if "avx512_vnni" not in isa and
               "avx_vnni" not in isa else "at this size the quantise/dequantise steps cost more than the int8 "
               "arithmetic saves")
        mode = (result.get("onnx", {}).get("int8") or {}).get("mode")
        if mode == "dynamic":
            why = "dynamic quantisation computes activation ranges at run time and uses ConvInteger for convolutions"
        out.append(f"int8 is slower than fp32 here ({int8:.2f} ms vs {fp32:.2f} ms at batch 256): {why}.")
    params_drop = 1 - result["params"] / max(result["baseline_params"], 1)
    for p in (result.get("compression", {}).get("prune") or []):
        if p.get("granularity") == "channel" and params_drop > p.get("requested", 0) + 0.1:
            out.append(f"Channel pruning at ratio {p['requested']:.2f} removed {params_drop:.0%} of the parameters: "
                       "each removed channel also removes the next layer's matching input weights.")
    return out


def comparison_table(result: dict, base: dict | None = None) -> pd.DataFrame:
    """The baseline beside the current run; `base` is the baseline's own run (no steps), which gives
    its packed size, ONNX sizes, MACs and latency measured the same way."""
    base = base or {}
    acc, b_acc = result["accuracy"], result["baseline_accuracy"]
    sz, bsz = result["size"], {**result["baseline_size"], **(base.get("size") or {})}

    def b(key: str):
        return base.get(key)

    rows = [("top-1 (%)", b_acc["top1"], acc["top1"]), ("top-3 (%)", b_acc["top3"], acc["top3"]),
            ("top-5 (%)", b_acc["top5"], acc["top5"]), ("parameters", result["baseline_params"], result["params"]),
            ("non-zero parameters", b("nonzero_params"), result["nonzero_params"]),
            ("MACs per image", b("macs"), result["macs"])]
    for label, key in (("checkpoint file (bytes)", "file_bytes"), ("gzip of checkpoint (bytes)", "gzip_bytes"),
                       ("packed .xpk (bytes)", "packed_bytes"), ("ONNX fp32 (bytes)", "onnx_bytes"),
                       ("ONNX int8 (bytes)", "onnx_int8_bytes")):
        rows.append((label, bsz.get(key), sz.get(key)))
    for engine in ENGINES_SHOWN[:3]:
        for batch in ("b1", "b256"):
            rows.append((f"{plots.ENGINE_LABELS[engine]}, batch {batch[1:]} (median ms)",
                         _lat(base, engine, batch) if base else None, _lat(result, engine, batch)))
    df = pd.DataFrame(rows, columns=["figure", "baseline", "this run"])
    for col in ("baseline", "this run"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["change"] = df["this run"] - df["baseline"]
    return df


def show_table(df: pd.DataFrame, key: str) -> None:
    """Numbers with separators and sensible precision, empty cells blank, no inner scrollbar."""
    def fmt(v):
        if v is None or pd.isna(v):
            return ""
        if isinstance(v, float) and not float(v).is_integer():
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.2f}"
        return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)

    shown = df.copy()
    for col in shown.columns[1:]:
        shown[col] = shown[col].map(fmt)
    st.dataframe(shown, hide_index=True, key=key, height=35 * (len(shown) + 1) + 3)


def curves(frame: pd.DataFrame, key: str | None) -> None:
    if frame.empty or frame["status"].eq("ok").sum() < 2:
        st.info("The curves fill in as runs accumulate: move the sliders, or launch a sweep in the Sweep tab.")
    st.plotly_chart(plots.sparsity_accuracy(frame, key), key="chart_sparsity_accuracy")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(plots.pareto(frame, "packed_bytes", "packed bytes", key), key="chart_pareto_size")
    with right:
        st.plotly_chart(plots.pareto(frame, "lat_onnxruntime_cpu_int8_b256_ms",
                                     "ONNX Runtime int8 latency, batch 256 (ms)", key), key="chart_pareto_latency")
    kind = st.radio("AD x RF size measure", ["gzip_bytes", "packed_bytes"], horizontal=True, key="adrf_kind",
                    format_func=lambda k: plots.SIZE_LABELS[k])
    st.plotly_chart(plots.ad_rf_ranking(frame, kind, key), key="chart_adrf")
    st.caption("Normalised AD x RF (seed 001): accuracy delta times reduction factor, standardised across the runs "
               "shown. It rewards runs that lose little accuracy for their compression, but is relative to this set "
               "of runs, scores any run with no accuracy change as 0 whatever its size, and lets a tiny accuracy "
               "gain beat any compression. Read it beside the Pareto fronts.")


def size_and_latency(result: dict) -> None:
    st.plotly_chart(plots.size_bars(result), key="chart_size")
    th = result.get("theoretical") or {}
    if th:
        st.caption(f"Theoretical (not measured): {th.get('total_bytes', 0):,.0f} bytes from non-zeros x bits plus "
                   "index overhead; the packed file adds its header and per-tensor parameters and may beat it with "
                   "zstd. Every other figure here is read from a real file.")
    st.plotly_chart(plots.latency_bars(result), key="chart_latency")
    hw = result.get("hardware") or {}
    st.caption(f"Hardware: {describe(hw)}. Median of repeated runs after warm-up, "
               f"{result.get('latency_threads', '?')} thread(s); whiskers show p90. Compression, fine-tuning and "
               f"accuracy: {(result.get('threads') or {}).get('compress_and_evaluate', '?')} torch thread(s) "
               "(EXPLORER_TRAIN_THREADS), the same in the page, the CLI and sweeps.")
    missing = [(e, v["b1"]["reason"]) for e, v in (result.get("latency") or {}).items()
               if not v.get("b1", {}).get("available")]
    if not hw.get("gpu"):
        st.markdown("**GPU: not available on this machine.**")
    for engine, reason in missing:
        st.caption(f"{plots.ENGINE_LABELS.get(engine, engine)}: not available ({reason})")


def layers(result: dict, sensitivity: dict | None) -> None:
    table = pd.DataFrame(result["layers"])
    if sensitivity:
        table["sensitivity"] = pd.to_numeric(table["layer"].map(sensitivity), errors="coerce")
        if table["sensitivity"].isna().any():
            st.caption("Sensitivity is blank for layers whose shape the recipe changed: they have no one-layer "
                       "counterpart in the baseline.")
    options = ["params", "sparsity", "bits", "packed_bytes", "macs"] + (["sensitivity"] if sensitivity else [])
    col = st.radio("Per-layer figure", options, horizontal=True, key="layer_figure")
    st.plotly_chart(plots.layer_bars(table, col), key="chart_layers")
    st.dataframe(table, hide_index=True, key="layers_table_run")
    hists = result.get("histograms") or {}
    if hists:
        layer = st.selectbox("Weight histogram of layer", list(hists), key="hist_layer")
        st.plotly_chart(plots.weight_histogram(hists[layer], layer), key="chart_hist")
