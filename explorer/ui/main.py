"""The explorer page."""

from __future__ import annotations

import streamlit as st

from explorer import baselines, plots


@st.cache_data(show_spinner="Loading the baseline and measuring it on its test split...")
def _describe(path: str, sha: str) -> dict:  # sha keys the cache on the file's bytes
    return baselines.describe_baseline(path)


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def main() -> None:
    st.set_page_config(page_title="Compression explorer", layout="wide")
    st.title("Compression trade-off explorer")
    try:
        cards = baselines.list_baselines()
    except ValueError as e:
        st.error(str(e))
        return
    if not cards:
        st.error("No baselines in models/: train one with `python -m explorer train --model digits_cnn`.")
        return
    names = [c["name"] for c in cards]
    name = st.sidebar.selectbox("Baseline model", names, index=0, key="baseline")
    card = cards[names.index(name)]
    try:
        info = _describe(card["path"], card.get("sha256", ""))
    except ValueError as e:
        st.error(str(e))
        return
    m = info["measured"]
    st.subheader(f"{card['architecture']} on {card['dataset']}")
    st.caption(f"Measured now on the {m['n']} test images, from the model rebuilt from "
               f"`{card['file']}`; the card recorded top-1 {card['accuracy']['top1']:.2f}% at training.")
    cols = st.columns(5)
    cols[0].metric("Top-1", f"{m['top1']:.2f}%")
    cols[1].metric("Top-3", f"{m['top3']:.2f}%")
    cols[2].metric("Top-5", f"{m['top5']:.2f}%")
    cols[3].metric("Parameters", f"{m['params']:,}")
    cols[4].metric("File size", _fmt_bytes(m["file_bytes"]), help=f"{m['file_bytes']:,} bytes, measured from the file")
    st.plotly_chart(plots.params_per_layer(info["layers"]), key="params_per_layer")
    with st.expander("Per-layer table"):
        st.dataframe(info["layers"], hide_index=True, key="layers_table")
    with st.expander("Baseline card"):
        st.json({k: v for k, v in card.items() if k != "path"})
