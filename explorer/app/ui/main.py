"""The explorer page: sidebar controls -> Recipe -> a run (off the script, explorer.run.jobs) -> the views.

A slider move never blocks the page: the run is queued on the server's run board and the page shows its
figures as they exist (accuracy and size first, latency later), refreshing itself until the run is
complete. Meanwhile the model's landscape (explorer.run.landscape) fills the curves in the background.
"""

from __future__ import annotations

import time
import uuid

import streamlit as st

from explorer.app import service
from explorer.app.service import ModelCard, RunResult
from explorer.app.ui import controls as ui_controls
from explorer.app.ui import panels, shell, state, views
from explorer.core import words
from explorer.core.markup import md

TABS = ["Overview", "Curves and Pareto", "Size and latency", "Layers", "What it forgets", "Sweep", "Sweet spot",
        "Baseline", "Your model"]
PENDING = {"sizes": "the checkpoint's file sizes", "onnx": "the ONNX export and its int8 version",
           "latency": "latency, timed side by side with the baseline"}  # a partial result's pending parts, in words
LIVE = "Computing"  # how a view that is still being measured begins (the tests wait while it shows)


@st.cache_data(show_spinner="Loading the baseline and measuring it on its test split...")
def _describe(path: str, sha: str) -> dict:  # sha keys the cache on the file's bytes
    return service.describe_baseline(path)


def _session() -> str:
    """This page's id on the run board, with Streamlit's session id after the '@' so that the board can tell when
    its tab closed (service.page_open); the page's own part tells apart tests' pages, which share Streamlit's id."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return st.session_state.setdefault("_session", f"{uuid.uuid4().hex}@{ctx.session_id if ctx else ''}")


def _ship() -> str:
    """What the user deploys, as the sidebar says (service.SHIPS)."""
    return st.session_state.get("ship", service.SHIP_DEFAULT)


def _visitor() -> str:
    """Whose runs these are, for the board's turns and its share per visitor: a browser's tabs are one visitor."""
    return state.visitor_of(st.context.ip_address, st.context.cookies.get("_streamlit_xsrf"), _session())


@st.fragment(run_every=0.5)
def _live(key: str, base_key: str | None, control_key: str | None = None) -> None:
    """A run being computed: its progress and the figures that exist so far; the whole page is drawn again
    once it (and the baseline and the same-budget control it is compared with) is complete."""
    board = service.board()
    job = board.job(key)
    if job is None:
        st.rerun()
        return
    others = [j for j in (board.job(k) for k in (base_key, control_key) if k) if j is not None]
    now = job if not job.finished else next((j for j in others if not j.finished), None)
    if now is None:  # the run and what it is compared with are complete
        st.rerun()
        return
    what = ("this configuration" if now is job else "the baseline, measured the same way for the comparison table"
            if now.key == base_key else "the baseline fine-tuned the same way without compression, the fair "
            "control for this configuration's fine-tuning")
    waited = time.perf_counter() - now.submitted
    st.info(f"{LIVE} {what}: {md(now.message)} ({waited:.0f} s). The page fills in as figures arrive; you can move "
            "the sliders meanwhile (a run you leave is cancelled).")
    st.progress(min(max(now.fraction, 0.0), 1.0))
    shown = job.result or job.partial
    if shown:
        base = board.job(base_key) if base_key else None
        views.headline(shown, _ship(), base.result if base is not None else None)
        if shown.get("status") == "partial":
            st.caption("Accuracy and the packed size are final; still being measured: "
                       + ", ".join(PENDING.get(p, p) for p in shown.get("pending", [])) + ".")


def main(top=None) -> None:
    """The page; `top` is the placeholder under the title that the shell (explorer.app.ui.shell, drawn before
    this module's imports) left for the page's first line. One pass: what it asks more than once is computed once."""
    with service.render():
        _page(top)


def _page(top) -> None:
    t0 = time.perf_counter()
    if top is None:
        top = shell.draw()
    try:
        service.start_up()
        cards = service.list_baselines()
    except ValueError as e:
        top.error(md(e))
        return
    if not cards:
        top.error("No baselines in models/: train one with `python -m explorer train --model digits_cnn`.")
        return
    names = [c["name"] for c in cards]
    if "_select_baseline" in st.session_state:  # a model just added becomes the current one
        st.session_state["baseline"] = st.session_state.pop("_select_baseline")
    c = ui_controls.sidebar({c["name"]: c for c in cards}, service.default_baseline(names))
    note = service.missing_data_note()
    if note:
        st.sidebar.caption(note)  # Markdown: its model names come escaped
    card = cards[names.index(c["baseline"])]
    top.caption(f"{md(card['architecture'])} on {md(card['dataset'])}: {card['params']:,} parameters, baseline "
                f"top-1 {card['accuracy']['top1']:.2f}% on {words.count(card.get('test_samples', '?'), 'test image')}.")

    if st.session_state.get("_drawn_model") != c["baseline"]:
        # a model just opened: this element takes the place of the previous model's views, which go at once
        # instead of staying greyed under the new model's header until this run redraws them
        st.empty()
        st.session_state["_drawn_model"] = c["baseline"]
    recipe, job, base_job, control_job, error = None, None, None, None, None
    try:
        recipe = state.to_recipe(c, card)
    except ValueError as e:
        error = f"Invalid combination: {e}"
    if recipe is not None:
        st.markdown(f"**Configuration:** {service.recipe_words(recipe)}", help=f"Short form: {recipe.label()}")
        try:
            job, base_job, control_job = _submit(recipe)
        except ValueError as e:
            error = str(e)
    service.landscape_status(card, c)  # the model's background measurement starts, or goes on
    lands = service.landscapes() if card.get("format") != "onnx" else None
    result = job.result if job is not None and job.state == "done" else None
    if job is not None and job.state in ("failed", "cancelled"):
        error = f"The run failed: {job.error or job.message}"
    base_result = base_job.result if base_job is not None and base_job.state == "done" else None
    if result is not None and control_job is not None and control_job.state == "done":
        result = service.with_control(result, control_job.result)  # the paired comparison with the same training
    if error:
        st.error(md(error))  # errors repeat the values that were refused: a visitor's text
    computing = job is not None and not error and (
        result is None or any(j is not None and not j.finished for j in (base_job, control_job)))
    if result is not None and job is not None and lands is not None \
            and st.session_state.get("_neighbours_of") != job.key:
        lands.after_run(card, c)  # the slider positions next to this one are measured next
        st.session_state["_neighbours_of"] = job.key

    asked = st.query_params.get("tab")
    if asked is not None and asked not in TABS:  # Streamlit drops it from the link without a word
        st.warning(f"Ignored from the link: tab={md(repr(asked))} must be one of: {', '.join(TABS)}")
    if st.session_state.pop("_open_overview", False):  # a model just added: its figures are on the Overview
        st.query_params["tab"] = TABS[0]
        st.session_state["tab"] = TABS[0]
    tabs = st.tabs(TABS, key="tab", bind="query-params")
    frame = service.frame(card["architecture"], card["dataset"], None if recipe is None else recipe.checkpoint)
    key = result.get("key") if result else None
    with tabs[0]:  # the live progress is drawn whichever tab is open: it reruns the page once the run is complete
        if computing and job is not None:
            _live(job.key, base_job.key if base_job is not None else None,
                  control_job.key if control_job is not None else None)
        if tabs[0].open is not False:
            _landscape_note(card, c)
            if result and not computing:
                _overview(result, base_result, frame, card)
                if control_job is not None and control_job.state in ("failed", "cancelled"):
                    st.caption("The same-budget control (the baseline fine-tuned the same way without compression) "
                               f"did not complete: {md(control_job.error or control_job.message)}")
            elif not computing:
                st.info("No result for this configuration; fix the error above and the views come back.")
            views.glossary()
    # Only the open tab is drawn: drawing them all (the curves' charts every 3 s, the panels, the summaries) took
    # the two cores from the run the page waits for, and a tab click redrew every tab (4.5 to 11.6 s under load).
    # Opening a tab reruns the page, which then draws that tab.
    def shown(i: int) -> bool:
        return tabs[i].open is not False

    if shown(1):
        with tabs[1]:
            _curves(card, c, None if recipe is None else recipe.checkpoint, key)
    if shown(2):
        with tabs[2]:
            if result:
                views.size_and_latency(result)
            elif computing:
                st.info(f"{LIVE} this configuration: its file sizes and latency appear here when its run is "
                        "complete.")
    if shown(3):
        with tabs[3]:
            if result:
                sens = service.sensitivity(result)
                if sens is None and result.get("format") != "onnx" and st.button(
                        "Compute per-layer sensitivity (top-1 drop with only that layer compressed)", key="sens_run"):
                    with st.spinner("Evaluating the test split once per layer..."):
                        sens = service.sensitivity(result, compute=True)
                views.layers(result, sens)
            elif computing:
                st.info(f"{LIVE} this configuration: its per-layer figures appear here when its run is complete."
                        + (" Meanwhile, the baseline's layers:" if base_result else ""))
                if base_result:
                    views.layers(base_result, None)
    if shown(4):
        with tabs[4]:
            if result:
                views.forgets_view(service.forgets(result, base_result) if base_result else None, result)
            elif computing:
                st.info(f"{LIVE} this configuration: the test images it gets wrong that the baseline got right "
                        "appear here when its run and the baseline's are complete.")
    if shown(5):
        with tabs[5]:
            panels.sweep_panel(card, service)
    if shown(6):
        with tabs[6]:
            panels.sweet_spot_panel(frame, result, service, card, _landscape(card, c)[1], _ship())
    if shown(7):
        with tabs[7]:
            if card.get("format") == "onnx":
                st.info(f"{md(card['name'])} is an ONNX model: top-1 {card['accuracy']['top1']:.2f}% with ONNX "
                        f"Runtime, {card['file_bytes']:,} bytes. {md(card.get('unsupported_reason', ''))}")
            elif computing:  # measuring the baseline afresh would take the cores from the run this page waits for
                st.info(f"{LIVE} this configuration first: the baseline's fresh measurement on its test images and "
                        f"its per-layer table follow when that run is done. Its card recorded top-1 "
                        f"{card['accuracy']['top1']:.2f}% at training.")
            else:
                try:
                    panels.baseline_panel(_describe(card["path"], card.get("sha256", "")))
                except ValueError as e:
                    st.error(md(e))
    if shown(8):
        with tabs[8]:
            opened = tabs[8].open is not False
            panels.byo_panel(service, service.datasets(), service.architectures(libraries=opened), preview=opened,
                             current=card.get("dataset"))
    st.caption(footer(time.perf_counter() - t0, job, base_job, control_job))


def _submit(recipe):
    """Queue this configuration, its baseline (the comparison) and, where it fine-tunes, its same-budget control
    on the run board, and say that this page watches these now (a run it left, and no other page watches, is
    cancelled)."""
    comparison = service.baseline_recipe(recipe) if recipe.steps else None
    return service.board().show(_session(), recipe, comparison, visitor=_visitor(),
                                control=service.control_recipe(recipe))


def _overview(result: RunResult, base_result: RunResult | None, frame, card: ModelCard) -> None:
    presenter = bool(st.session_state.get("presenter"))
    views.headline(result, _ship(), base_result, presenter=presenter)
    if presenter:  # a demo: three tiles, the curve with this configuration's star, one sentence
        views.presenter_chart(frame, result.get("key"))
        with st.expander("The comparison table and the files to take home"):
            _take_home(result, base_result, frame, card)
        return
    _take_home(result, base_result, frame, card)


def _take_home(result: RunResult, base_result: RunResult | None, frame, card: ModelCard) -> None:
    views.show_table(views.comparison_table(result, base_result), key="comparison_table")
    st.markdown("**Take it home**")
    views.downloads(result, service.artifact, key="dl")
    s = st.columns(2)
    # the bytes now, not a callable run on the click: a deferred file can be gone when the click comes
    s[0].download_button("One-page summary (PNG, for a slide)",
                         service.summary_png(result, frame, card["name"], _ship()),
                         views.file_name(result, "summary.png"),
                         "image/png",
                         key="summary_png", help="The big numbers against the baseline, the curve with this "
                                                 "configuration marked, and the recipe")
    s[1].download_button("One-page summary (HTML, opens offline)",
                         service.summary_html(result, frame, card["name"], _ship()),
                         views.file_name(result, "summary.html"),
                         "text/html",
                         key="summary_html")
    with st.expander("Recipe JSON (reproduce with `python -m explorer run --recipe FILE`)"):
        st.json(service.recipe_download(result))


@st.fragment(run_every=3)
def _curves(card: ModelCard, controls: dict, checkpoint: str | None, key: str | None) -> None:
    """The curves, Pareto fronts and AD x RF, redrawn as the landscape's points land (only this part of the
    page reruns: the sidebar and the user's place stay). Each redraw tells the landscape the page is still
    open, so it goes on while a user only watches."""
    with service.render():
        _curves_now(card, controls, checkpoint, key)


def _curves_now(card: ModelCard, controls: dict, checkpoint: str | None, key: str | None) -> None:
    lands, s = _landscape(card, controls)
    if s is not None:
        cols = st.columns([5, 1])
        cols[0].caption(_landscape_line("Landscape", s))
        if cols[1].button("Resume" if s["paused"] else "Pause", key="landscape_pause",
                          help="The background measurement of this model's default grid, shared by every page"):
            lands.pause(card["name"], not s["paused"])
            st.rerun(scope="fragment")
    views.curves(service.frame(card["architecture"], card["dataset"], checkpoint), key, _ship(),
                 service.control_frame(card["architecture"], card["dataset"], checkpoint))


def _landscape(card: ModelCard, controls: dict) -> tuple:
    """The landscapes and this model's status (None for ONNX models, which have none); the call tells the
    landscape the page is still open."""
    s = service.landscape_status(card, controls)
    return (service.landscapes(), s) if s is not None else (None, None)


def _landscape_line(what: str, s: dict) -> str:
    return (f"{what}: {s['measured']} of {s['total']} configurations of the default grid measured"
            + (", paused" if s["paused"] else ", measuring nearest the sliders first" if s["measured"] < s["total"]
               else ", complete"))


@st.fragment(run_every=3)
def _landscape_note(card: ModelCard, controls: dict) -> None:
    """On the Overview, where a page opens: the background measurement is going (it shares the machine with
    this page's runs, which come first), and where its curves are."""
    with service.render():
        _, s = _landscape(card, controls)
    if s is not None:
        st.caption(_landscape_line("Background measurement", s) + " (see Curves and Pareto; your own runs go "
                   "first).")


def footer(seconds: float, job, base_job, control_job=None) -> str:
    """What this render did: served from the cache, or how long the run took to its first figures."""
    done = st.session_state.pop("_sweep_done", None)
    if done:
        return f"Rendered in {seconds:.2f} s (after a sweep of {done['runs']} runs that took {done['seconds']:.1f} s)"
    if job is None:
        return f"Rendered in {seconds:.2f} s (no run)"
    if job.state in ("failed", "cancelled"):
        return f"Rendered in {seconds:.2f} s (the run {job.state})"
    jobs = {j.key: j for j in (job, base_job, control_job) if j is not None}
    hits = [bool((j.result or {}).get("cache", {}).get("hit")) for j in jobs.values() if j.state == "done"]
    waiting = [what for j, what in ((job, "this configuration"), (base_job, "the baseline it is compared with"),
                                    (control_job, "the same-budget control")) if j is not None and not j.finished]
    if waiting:  # as the render left them: the page draws itself again once they are complete
        return f"Rendered in {seconds:.2f} s (still computing {' and '.join(dict.fromkeys(waiting))})"
    told = st.session_state.get("_told_computed")
    if all(hits) or told == job.key:  # a run this page already reported is served from memory now
        return f"Rendered in {seconds:.2f} s (from the cache)"
    st.session_state["_told_computed"] = job.key
    first = f", first figures after {job.first_figures_s:.1f} s" if job.first_figures_s else ""
    return f"Rendered in {seconds:.2f} s (computed: {job.total_s or 0:.1f} s{first})"
