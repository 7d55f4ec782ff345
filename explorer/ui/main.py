"""The explorer page: sidebar controls -> Recipe -> a run through the cache -> the views."""

from __future__ import annotations

import time

import streamlit as st

from explorer import service, words
from explorer.recipe import Recipe
from explorer.ui import controls as ui_controls
from explorer.ui import panels, state, views

TABS = ["Overview", "Curves and Pareto", "Size and latency", "Layers", "What it forgets", "Sweep", "Sweet spot",
        "Baseline", "Your model"]


@st.cache_data(show_spinner="Loading the baseline and measuring it on its test split...")
def _describe(path: str, sha: str) -> dict:  # sha keys the cache on the file's bytes
    return service.describe_baseline(path)


def _run(recipe, what: str) -> dict:
    """A run through the cache, its progress on the page phase by phase (cached runs return at once)."""
    if service.is_cached(recipe):
        return service.run(recipe)
    note = st.info(f"Computing {what}. Until it finishes, the views below still show the previous configuration.")
    bar = st.progress(0.0, text="starting")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=f"{what}: {message}")

    result = service.run(recipe, progress=progress)
    bar.empty()
    note.empty()
    return result


def main() -> None:
    st.set_page_config(page_title="Compression explorer", layout="wide")
    t0 = time.perf_counter()
    st.title("Compression trade-off explorer")
    try:
        service.start_up()
        cards = service.list_baselines()
    except ValueError as e:
        st.error(str(e))
        return
    if not cards:
        st.error("No baselines in models/: train one with `python -m explorer train --model digits_cnn`.")
        return
    names = [c["name"] for c in cards]
    if "_select_baseline" in st.session_state:  # a model just added becomes the current one
        st.session_state["baseline"] = st.session_state.pop("_select_baseline")
    c = ui_controls.sidebar({c["name"]: c for c in cards}, service.default_baseline(names))
    note = service.missing_data_note()
    if note:
        st.sidebar.caption(note)
    card = cards[names.index(c["baseline"])]
    st.caption(f"{card['architecture']} on {card['dataset']}: {card['params']:,} parameters, baseline top-1 "
               f"{card['accuracy']['top1']:.2f}% on {card.get('test_samples', '?')} test images.")

    result, error = None, None
    try:
        recipe = state.to_recipe(c, card)
    except ValueError as e:
        recipe, error = None, f"Invalid combination: {e}"
    if recipe is not None:
        st.markdown(f"**Configuration:** {words.recipe_words(recipe)}", help=f"Short form: {recipe.label()}")
        try:
            result = _run(recipe, "this configuration")
        except ValueError as e:
            error = str(e)
        if result is not None and result.get("status") != "ok":
            error, result = f"The run failed: {result.get('error')}", None
    base_result = None
    if result is not None:  # the baseline's own run, measured the same way, for the comparison table
        base = Recipe(model=recipe.model, dataset=recipe.dataset, checkpoint=recipe.checkpoint, seed=recipe.seed)
        base_result = result if not recipe.steps else _run(base, "the baseline, measured the same way for comparison")
        base_result = base_result if base_result.get("status") == "ok" else None
    if error:
        st.error(error)

    tabs = st.tabs(TABS, key="tab", bind="query-params")
    frame = service.frame(card["architecture"], card["dataset"], None if recipe is None else recipe.checkpoint)
    key = result.get("key") if result else None
    with tabs[0]:
        if result:
            views.headline(result)
            views.show_table(views.comparison_table(result, base_result), key="comparison_table")
            st.markdown("**Take it home**")
            views.downloads(result, service.artifact, key="dl")
            s = st.columns(2)
            s[0].download_button("One-page summary (PNG, for a slide)",
                                 lambda: service.summary_png(result, frame, card["name"]), "summary.png", "image/png",
                                 key="summary_png", help="The big numbers against the baseline, the curve with this "
                                                         "configuration marked, and the recipe")
            s[1].download_button("One-page summary (HTML, opens offline)",
                                 lambda: service.summary_html(result, frame, card["name"]), "summary.html", "text/html",
                                 key="summary_html")
            with st.expander("Recipe JSON (reproduce with `python -m explorer run --recipe FILE`)"):
                st.json(result["recipe"])
        else:
            st.info("No result for this configuration; fix the error above and the views come back.")
        views.glossary()
    with tabs[1]:
        views.curves(frame, key)
    with tabs[2]:
        if result:
            views.size_and_latency(result)
    with tabs[3]:
        if result:
            sens = service.sensitivity(result)
            if sens is None and result.get("format") != "onnx" and st.button(
                    "Compute per-layer sensitivity (top-1 drop with only that layer compressed)", key="sens_run"):
                with st.spinner("Evaluating the test split once per layer..."):
                    sens = service.sensitivity(result, compute=True)
            views.layers(result, sens)
    with tabs[4]:
        if result:
            views.forgets_view(service.forgets(result, base_result) if base_result else None, result)
    with tabs[5]:
        panels.sweep_panel(card, service)
    with tabs[6]:
        panels.sweet_spot_panel(frame, result, service, card)
    with tabs[7]:
        if card.get("format") == "onnx":
            st.info(f"{card['name']} is an ONNX model: top-1 {card['accuracy']['top1']:.2f}% with ONNX Runtime, "
                    f"{card['file_bytes']:,} bytes. {card.get('unsupported_reason', '')}")
        else:
            try:
                panels.baseline_panel(_describe(card["path"], card.get("sha256", "")))
            except ValueError as e:
                st.error(str(e))
    with tabs[8]:
        panels.byo_panel(service, service.datasets(), service.architectures())
    st.caption(footer(time.perf_counter() - t0, result, base_result))


def footer(seconds: float, result: dict | None, base_result: dict | None) -> str:
    """What this render did: served from the cache, or computed (and what), and how long it took."""
    done = st.session_state.pop("_sweep_done", None)
    hits = [(r or {}).get("cache", {}).get("hit") for r in (result, base_result) if r]
    what = "from the cache" if hits and all(hits) else "computed now" if hits else "no run"
    if done:
        what = f"after a sweep of {done['runs']} runs that took {done['seconds']:.1f} s"
    return f"Rendered in {seconds:.2f} s ({what})"
