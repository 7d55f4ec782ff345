"""Sidebar controls, mirrored in the URL query string."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.ui import state

HELP = {
    "sparsity": "Share of weights (unstructured, blocks) or channels (structured) removed.",
    "bits": "Weight bit-width: 2-8 integer grid, fp16/bf16 halves, fp32 leaves the weights alone.",
    "clusters": "k-means weight sharing: each layer keeps at most this many distinct values.",
}


def _init_from_query(baselines: list[str], default: str) -> None:
    """On a session's first run, seed the widgets from the query string (a shared link)."""
    if st.session_state.get("_controls_initialised"):
        return
    values, problems = state.parse_query(dict(st.query_params), baselines)
    for k, v in {**state.DEFAULTS, "baseline": default, **values}.items():
        st.session_state.setdefault(k, v)
    if st.session_state["baseline"] not in baselines:
        st.session_state["baseline"] = baselines[0]
    st.session_state["_query_problems"] = problems
    st.session_state["_controls_initialised"] = True


def sidebar(baselines: list[str], default: str) -> dict[str, Any]:
    _init_from_query(baselines, default)
    sb = st.sidebar
    sb.header("Configuration")
    sb.selectbox("Baseline model", baselines, key="baseline")

    with sb.expander("Pruning", expanded=True):
        st.slider("Sparsity", 0.0, 0.99, step=0.01, key="sparsity", help=HELP["sparsity"])
        st.selectbox("Granularity", state.GRANULARITIES, key="granularity",
                     help="unstructured: single weights; channel: whole filters, physically removed; "
                          "block: 4x4 blocks; nm: 2:4 semi-structured (sparsity fixed at 0.5)")
        st.selectbox("Criterion", state.CRITERIA, key="criterion")
        st.selectbox("Scope", state.SCOPES, key="scope", help="global: one threshold for all layers")
        st.selectbox("Schedule", state.SCHEDULES, key="schedule",
                     help="gradual: Zhu & Gupta's cubic schedule during fine-tuning")
        st.number_input("Fine-tune epochs", 0, 50, step=1, key="prune_epochs")
        st.checkbox("BatchNorm adaptation", key="bn_adapt",
                    help="after pruning, low-rank or clustering, re-measure each BatchNorm layer's statistics on "
                         "1,024 training images (no weight changes); models without BatchNorm skip it")

    with sb.expander("Quantisation", expanded=True):
        st.select_slider("Bit-width", state.BIT_OPTIONS, key="bits", help=HELP["bits"])
        st.selectbox("Mode", state.QUANT_MODES, key="quant_mode",
                     format_func=lambda m: {"ptq": "post-training", "static": "static int8 (calibrated)",
                                            "dynamic": "dynamic int8", "qat": "quantisation-aware training"}[m])
        st.checkbox("Quantise activations too (W/A)", key="quant_acts")
        st.checkbox("Symmetric", key="symmetric")
        st.checkbox("Per-channel", key="per_channel")
        st.selectbox("Calibration", state.CALIBRATIONS, key="calibration")
        st.number_input("QAT epochs", 1, 50, step=1, key="qat_epochs")
        st.checkbox("QAT learns activation ranges", key="learn_ranges",
                    help="on: each activation range is trained with the weights (learned step size, LSQ); "
                         "off: the calibrated ranges stay fixed and are measured again after training")

    with sb.expander("Clustering", expanded=True):
        st.select_slider("Clusters per layer", state.CLUSTER_OPTIONS, key="clusters", help=HELP["clusters"])
        st.checkbox("Fine-tune centroids", key="cluster_finetune")

    with sb.expander("Distillation and low-rank"):
        st.checkbox("Distil into a smaller digits_cnn", key="distill")
        st.slider("Student width", 0.125, 1.0, step=0.125, key="student_width")
        st.number_input("Distillation epochs", 1, 100, step=1, key="distill_epochs")
        st.checkbox("Low-rank (SVD) of the inner layers", key="lowrank")
        st.slider("Rank ratio", 0.05, 1.0, step=0.05, key="rank_ratio")

    controls = {k: st.session_state[k] for k in state.DEFAULTS}
    st.query_params.from_dict(state.to_query(controls))  # the link reopens exactly this view
    for p in st.session_state.get("_query_problems", []):
        sb.warning(f"Ignored from the link: {p}")
    return controls
