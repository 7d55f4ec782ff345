"""Sidebar controls, mirrored in the URL query string. Controls that do not apply to the configuration are
shown disabled (explorer.run.controls.relevant): they change nothing, so they start no run and stay out of the
link."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.app.service import ModelCard
from explorer.app.ui import state
from explorer.core.markup import md

HELP = {
    "sparsity": "Share of weights (unstructured, blocks) or of channels (channel pruning) removed.",
    "bits": "Bits per weight: 2 to 8 on an integer grid, fp16/bf16 halves, fp32 leaves the weights alone.",
    "clusters": "k-means weight sharing: each layer keeps at most this many distinct values.",
}
MODES = {"auto": "the usual one for the bit-width: static int8 at 8 bits, weights only below",
         "ptq": "post-training (PTQ): weights rounded once, no training",
         "static": "static int8: weights and activations, activation ranges calibrated",
         "dynamic": "dynamic int8: activation ranges measured at run time",
         "qat": "quantisation-aware training (QAT): fine-tuned with the rounding in the loop"}
GRANULARITY = {"unstructured": "single weights", "channel": "whole channels (physically removed)",
               "block": "4x4 blocks", "nm": "2:4 semi-structured (sparsity fixed at 50%)",
               "heads": "attention heads of a transformer (physically removed)",
               "neurons": "hidden neurons of a transformer's MLPs (physically removed)"}
TRANSFORMER_ONLY = ("heads", "neurons")  # offered only where the model has attention layers
SCHEDULE = {"oneshot": "one shot, then fine-tune", "iterative": "in rounds, fine-tuning between",
            "gradual": "gradually during fine-tuning (Zhu & Gupta's cubic schedule)"}


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


def apply_pending() -> None:
    """Controls set by a button (the sweet spot's 'apply'), written before any widget is drawn, as Streamlit
    requires for widgets that already exist."""
    pending = st.session_state.pop("_apply_controls", None)
    if pending:
        for k, v in pending.items():
            st.session_state[k] = v


def sidebar(cards: dict[str, ModelCard], default: str) -> dict[str, Any]:
    baselines = list(cards)
    _init_from_query(baselines, default)
    switched = state.switch_model(st.session_state, st.session_state["baseline"])
    if switched:
        st.session_state["_switched"] = (st.session_state["baseline"], *switched)
    apply_pending()
    sb = st.sidebar  # its heading is the shell's (explorer.app.ui.shell), drawn before the heavy imports
    sb.selectbox("Baseline model", baselines, key="baseline")
    told = st.session_state.get("_switched")
    if told and told[0] == st.session_state["baseline"]:
        new, old, restored = told
        sb.info(f"{md(new)} opens on " + ("the compression settings you last used with it" if restored else
                "its default settings: no compression setting is carried over") + f" ({md(old)}'s settings are "
                "kept for when you return to it).")
    now = {k: st.session_state[k] for k in state.DEFAULTS}
    card = cards[now["baseline"]]
    on = state.relevant(now, card)

    grans = [g for g in state.GRANULARITIES if card.get("attention") or g not in TRANSFORMER_ONLY]
    if st.session_state["granularity"] not in grans:  # from a link, or kept from a transformer's settings
        what = {"heads": "attention heads", "neurons": "the hidden neurons of transformer MLPs"}
        st.session_state["_granularity_note"] = (now["baseline"], (  # plain text: escaped where it is shown
            f"Pruning {what[st.session_state['granularity']]} applies to transformers only, and "
            f"{now['baseline']} has no attention layers: it prunes single weights instead."))
        st.session_state["granularity"] = "unstructured"
    told_gran = st.session_state.get("_granularity_note")
    if told_gran and told_gran[0] == now["baseline"] and st.session_state["granularity"] == "unstructured":
        st.warning(md(told_gran[1]))  # until another model or granularity is chosen
    with sb.expander("Pruning", expanded=True):
        st.slider("Sparsity", 0.0, 0.99, step=0.01, key="sparsity", help=HELP["sparsity"])
        st.selectbox("Granularity", grans, key="granularity", disabled="granularity" not in on,
                     format_func=lambda g: GRANULARITY[g])
        st.selectbox("Criterion", state.CRITERIA, key="criterion", disabled="criterion" not in on,
                     format_func=lambda c: {"l1": "L1 norm (magnitude)", "l2": "L2 norm",
                                            "geometric_median": "geometric median (channels only)"}[c])
        st.selectbox("Scope", state.SCOPES, key="scope", disabled="scope" not in on,
                     format_func=lambda s: {"global": "one threshold for all layers",
                                            "layer": "the same share in every layer"}[s])
        st.selectbox("Schedule", state.SCHEDULES, key="schedule", disabled="schedule" not in on,
                     format_func=lambda s: SCHEDULE[s])
        st.number_input("Fine-tune epochs", 0, 50, step=1, key="prune_epochs", disabled="prune_epochs" not in on)
        if card.get("batchnorm"):
            st.checkbox("BatchNorm adaptation", key="bn_adapt",
                        help="after pruning, low-rank or clustering, re-measure each BatchNorm layer's statistics on "
                             "1,024 training images (no weight changes)")
        else:
            st.checkbox("BatchNorm adaptation", value=False, disabled=True, key="bn_adapt_not_applicable",
                        help="this model has no BatchNorm layers: there is nothing to adapt")

    quantised = now["bits"] not in ("fp32", "fp16", "bf16")
    with sb.expander("Quantisation", expanded=True):
        st.select_slider("Bit-width", state.BIT_OPTIONS, key="bits", help=HELP["bits"])
        st.selectbox("Scheme", state.QUANT_MODES, key="quant_mode", disabled=not quantised,
                     format_func=lambda m: MODES[m])
        st.checkbox("Quantise activations too (not only weights)", key="quant_acts", disabled="quant_acts" not in on)
        st.checkbox("Symmetric (no zero point)", key="symmetric", disabled="symmetric" not in on)
        st.checkbox("A scale per output channel", key="per_channel", disabled="per_channel" not in on)
        st.selectbox("Group-wise scales for Linear layers", state.GROUP_SIZES, key="group_size",
                     disabled="group_size" not in on,
                     format_func=lambda g: f"a scale per {g} inputs of each row" if g else "off (one scale per row)",
                     help="weights-only quantisation: each Linear layer's row gets a scale for every group of "
                          "consecutive inputs, as GPTQ and AWQ store 4-bit transformers")
        st.selectbox("Calibration of activation ranges", state.CALIBRATIONS, key="calibration",
                     disabled="calibration" not in on,
                     help="only where activations are quantised: weights-only quantisation needs no calibration")
        st.number_input("QAT epochs", 1, 50, step=1, key="qat_epochs", disabled="qat_epochs" not in on)
        st.checkbox("QAT learns activation ranges", key="learn_ranges", disabled="learn_ranges" not in on,
                    help="on: each activation range is trained with the weights (learned step size, LSQ); "
                         "off: the calibrated ranges stay fixed and are measured again after training")

    with sb.expander("Clustering", expanded=True):
        st.select_slider("Clusters per layer", state.CLUSTER_OPTIONS, key="clusters", help=HELP["clusters"])
        st.checkbox("Fine-tune centroids", key="cluster_finetune", disabled="cluster_finetune" not in on)

    with sb.expander("Distillation and low-rank"):
        st.checkbox("Distil into a small CNN", key="distill",
                    help="Trains a student network with the explorer's small convolutional architecture (the one "
                         "its digits model uses, sized to this data set's images and classes), at the width below, "
                         "to match this model's outputs (Hinton et al., \"Distilling the Knowledge in a Neural "
                         "Network\", 2015). Whether it is faster depends on the model it replaces: compare the "
                         "latency tiles.")
        st.slider("Student width", 0.125, 1.0, step=0.125, key="student_width", disabled="student_width" not in on)
        st.number_input("Distillation epochs", 1, 100, step=1, key="distill_epochs",
                        disabled="distill_epochs" not in on)
        st.checkbox("Low-rank (SVD) of the inner layers", key="lowrank")
        st.slider("Rank ratio", 0.05, 1.0, step=0.05, key="rank_ratio", disabled="rank_ratio" not in on)

    controls = {k: st.session_state[k] for k in state.DEFAULTS}
    _mirror(state.to_query(controls, card))  # the link reopens this view
    for p in st.session_state.get("_query_problems", []):
        st.warning(f"Ignored from the link: {md(p)}")  # in the page, not below the sidebar's controls
    return controls


BOUND = ("tab",)  # query parameters that widgets keep themselves (st.tabs' bind="query-params")


def _mirror(wanted: dict[str, str]) -> None:
    """Make the URL's query string say `wanted`, leaving the parameters bound to widgets alone (Streamlit
    refuses to set them, and from_dict would drop them)."""
    for k in [k for k in st.query_params if k not in wanted and k not in BOUND]:
        del st.query_params[k]
    for k, v in wanted.items():
        if st.query_params.get(k) != v:
            st.query_params[k] = v
