"""Panels: the sweep launcher and its results, the sweet-spot picker with downloads, the baseline card."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from explorer.app import plots
from explorer.app.service import (  # noqa: F401  (speed_cell: the page's name for it)
    CONFIDENCES,
    LATENCY_COLS,
    SHIP_DEFAULT,
    SHIPS,
    ModelCard,
    RunResult,
    across_seeds,
    baseline_row,
    fmt_bytes,
    readable,
    resolution,
    speed_cell,
    sweet_spot,
    sweet_spot_table,
)
from explorer.app.ui.views import downloads
from explorer.core.markup import md


def sweep_panel(card: ModelCard, backend) -> None:
    st.markdown("Choose grid values and launch: every run goes through the cache (cached runs return at once; "
                "those the background measured without their timing are timed first, a few seconds each), "
                "compression runs in parallel, latency is timed one run at a time.")
    start = backend.sweep_choices(card)  # the default grid, which the background measures too
    axes: dict[str, list] = {}
    sections = [(title, [c for c in ctrls if not (c.unavailable and c.unavailable(card))])
                for title, _, ctrls in backend.sweep_axes()]
    main = [ctrl for _, ctrls in sections for ctrl in ctrls if ctrl.sweep]  # the grid's own axes, on top
    for col, ctrl in zip(st.columns(max(len(main), 1)), main, strict=False):
        axes[ctrl.name] = _choice(col, ctrl, card, start)
    with st.expander("Technique details: each at the sidebar's default; pick several values to vary it too"):
        for title, ctrls in sections:
            rest = [ctrl for ctrl in ctrls if not ctrl.sweep]
            if rest:
                st.markdown(f"**{md(title)}**")
                cols = st.columns(3)
                for i, ctrl in enumerate(rest):
                    axes[ctrl.name] = _choice(cols[i % 3], ctrl, card, start)
    repeats = st.number_input("Repeats (seeds per configuration)", 1, 10, value=1, key="sweep_repeats",
                              help="Each configuration runs with seeds 0..K-1: the seed changes the fine-tuning "
                                   "order, the calibration sample and the k-means start. Tables and charts then "
                                   "show the mean and the spread across seeds.")
    try:  # distinct configurations (values of a detail that does not apply give the same run), and their cost
        est = backend.sweep_estimate(card, axes, int(repeats))
        n = est.total
    except ValueError as e:  # an empty choice, or a combination a technique refuses
        st.error(md(e))
        est, n = None, 0
    if est is not None and n:
        st.caption(md(sweep_estimate_words(est)))
    if st.button(f"Run sweep ({n} configurations)", key="sweep_run", disabled=n == 0):
        bar = st.progress(0.0, text="starting the sweep")

        def progress(done, total, eta):
            bar.progress(done / max(total, 1), text=sweep_progress_words(done, total, eta))

        try:
            t0 = time.perf_counter()
            df = backend.sweep(card, axes, repeats=int(repeats), progress=progress)
            sweeps()[card["name"]] = df  # this model's: another model's tab never shows it
            st.session_state["_sweep_done"] = {"runs": len(df), "seconds": time.perf_counter() - t0}
            st.rerun()  # the curves, Pareto fronts and sweet spot above were drawn before the sweep: redraw them
        except ValueError as e:
            st.error(md(e))
    df = sweeps().get(card["name"])
    if df is not None and not df.empty:
        shown = df
        if "seed" in df.columns and df["seed"].nunique() > 1:
            shown = across_seeds(df)
            st.caption("Mean across seeds, with the standard deviation, lowest and highest top-1 of each "
                       "configuration (failed runs left out).")
        st.dataframe(readable(shown), hide_index=True, key="sweep_table", width="stretch")
        st.download_button("Download results CSV", df.to_csv(index=False).encode(), "results.csv", "text/csv",
                           key="sweep_csv")


def _choice(where, ctrl, card: ModelCard, start: dict) -> list:
    """One control as a choice of several values (the default grid's values for it chosen), in the sidebar's
    words."""
    say = (lambda v: "on" if v else "off") if isinstance(ctrl.default, bool) else ctrl.say
    return where.multiselect(ctrl.title, list(ctrl.offered(card)), default=list(start[ctrl.name]),
                             key=f"sweep_{ctrl.name}", format_func=say, help=md(ctrl.help))


def sweep_estimate_words(est) -> str:
    """What a sweep will take, said before it starts (its runs stored already come back at once)."""
    stored = f"{est.stored} of them stored already (back at once)" if est.stored else "none of them stored yet"
    if est.stored == est.total:
        return f"{est.total} configurations, every one stored already: the sweep returns at once."
    if est.seconds is None:
        return (f"{est.total} configurations, {stored}; no run of this model has been measured on this machine yet, "
                "so the time cannot be estimated: the progress bar says it once the first runs are in.")
    minutes = est.seconds / 60
    when = f"about {est.seconds:.0f} s" if est.seconds < 120 else f"about {minutes:.0f} min"
    return (f"{est.total} configurations, {stored}; the rest take {when} on this machine, estimated from "
            f"{est.basis} run{'s' if est.basis != 1 else ''} of this model measured so far (fine-tuning epochs "
            "weigh most).")


def sweeps() -> dict:
    """The finished sweep of each model this page ran one for, by model name."""
    return st.session_state.setdefault("sweep_frames", {})


def sweep_progress_words(done: int, total: int, eta: float | None) -> str:
    """The progress bar's text; once every run is measured, the phase still to come (the workers close and the
    table is read back), so a full bar never sits on 'about 0 s left'."""
    if total and done >= total:
        return f"all {total} runs measured; closing the workers and building the results table"
    left = "" if eta is None else f", about {eta:.0f} s left"
    return f"{done}/{total} runs{left}"


def sweet_spot_panel(frame: pd.DataFrame, result: RunResult | None, backend, card: ModelCard,
                     landscape: dict | None = None, ship: str = SHIP_DEFAULT) -> None:
    """The best measured run for a question (a drop, budgets, an objective), with what it is judged on: how
    many runs are measured so far and whether the test set can answer the question at all."""
    if frame.empty or not frame["status"].eq("ok").any():
        st.info("No runs yet for this baseline: move the sliders or run a sweep first.")
        return
    c = st.columns(5)
    max_drop = c[0].number_input("Max top-1 drop (points)", 0.0, 100.0, value=1.0, step=0.25, key="ss_drop")
    size_kb = c[1].number_input("Size budget (KiB, 0 = none)", 0.0, 1e7, value=0.0, key="ss_size",
                                help="KiB: 1,024 bytes")
    lat_ms = c[2].number_input("Latency budget (ms, 0 = none)", 0.0, 1e5, value=0.0, key="ss_lat")
    objective = c[3].selectbox("Objective", ["smallest", "fastest", "most_accurate"], key="ss_objective",
                               format_func=lambda o: o.replace("_", " "))
    conf_label = c[4].selectbox("Confidence", list(CONFIDENCES), key="ss_confidence",
                                help="How sure the pick must be: a run qualifies when the worst end of its paired "
                                     "interval for the top-1 change is within the drop; runs whose intervals overlap "
                                     "count as ties, broken by the other objective, then by the simpler recipe.")
    size_label = SHIPS[ship][2]  # the size of what the user deploys (the sidebar), judged like the tiles
    st.caption(f"Size: {md(SHIPS[ship][1])}, what you deploy (change it in the sidebar).")
    lat_label = st.radio("Latency measured as", list(LATENCY_COLS), horizontal=True, key="ss_lat_kind")
    size_col, latency_col = SHIPS[ship][0], LATENCY_COLS[lat_label]
    pick = sweet_spot(frame, max_drop=max_drop, size_budget=size_kb * 1024 or None, latency_budget=lat_ms or None,
                      objective=objective, size_col=size_col, latency_col=latency_col,
                      confidence=CONFIDENCES[conf_label])
    st.caption(measured_so_far(frame, landscape))
    _resolution_note(frame, CONFIDENCES[conf_label], max_drop, card, backend)
    if pick.row is None:  # an answer, not a fault: say which constraint no run meets
        st.warning(md(pick.reason[0].upper() + pick.reason[1:].rstrip(".") + "."))
        return
    st.success(md(pick.reason[0].upper() + pick.reason[1:] + "."))
    if pick.point_row is not None:
        p = pick.point_row
        if pick.point_qualifies:  # it qualifies too: it lost on the objective's tie-break, not on accuracy
            st.info(f"{md(p.get('words', p.get('label')))} (top-1 {p['top1']:.2f}%) also qualifies and its own "
                    "figure for this objective is a little better, but the difference is within the figures' 95% "
                    "intervals: a tie, which the rule above breaks.")
        else:
            st.info(f"{md(p.get('words', p.get('label')))} (top-1 {p['top1']:.2f}%) looks better if each figure is "
                    f"taken as exact, but it is not {pick.confidence:.0%} sure to meet the constraints once the "
                    "uncertainty of its figures is counted.")
    row, base = pick.row, baseline_row(frame)
    onnx = SHIPS[ship][0] != "packed_bytes"  # an ONNX file against the baseline's own ONNX file of that kind
    reference = (base.get(SHIPS[ship][0]) if base is not None else None) if onnx else card.get("file_bytes")
    table = sweet_spot_table(row, base, size_label, lat_label, reference,
                             "times smaller than the baseline's own file of this kind" if onnx else None)
    st.dataframe(table, hide_index=True, key="ss_table", height=35 * (len(table) + 1) + 3,
                 column_config={"figure": st.column_config.TextColumn(width="large")})
    against = ("the baseline's own " + md(SHIPS[ship][2]) + " file" if onnx else "the baseline's fp32 checkpoint "
               "file (" + md(card.get("file", "its own file")) + ")")
    st.caption(f"Times smaller: against {against}, {fmt_bytes(reference)}. Speed-up: "
               "against the baseline in the same engine, timed in the same rounds. Latency: each run timed on its "
               "own; the interval is that of the median, and it moves with what else the machine ran.")
    if base is None:
        st.caption("The baseline's own run is not in this table yet; open the baseline (sparsity 0, 32 bits) once "
                   "to fill its column.")
    recipe = json.loads(row["recipe_json"])
    st.markdown(f"**Recommended:** {md(row.get('words', row['label']))}")
    wanted = backend.controls_for(recipe, card)
    current = result is not None and result.get("key") == row["key"]
    # the click applies the configuration this render showed (bound now), not whatever a run that landed since
    # would make the pick on the rerun the click starts; the callback runs before the sidebar is drawn
    st.button("Apply this configuration", key="ss_apply", disabled=wanted is None or current,
              on_click=st.session_state.__setitem__, args=("_apply_controls", wanted),
              help="Set the sidebar (and the link) to the recommended configuration"
                   if wanted else "The sidebar cannot express this recipe; run it from the recipe JSON")
    stored = backend.stored_result(row["key"])
    with st.expander("Recipe JSON"):  # as it travels: the model by name and sha256, not by this server's path
        st.code(backend.recipe_download(stored) if stored else json.dumps(recipe, indent=2), language="json")
    if stored:
        downloads(stored, backend.artifact, key="ss_dl")


def measured_so_far(frame: pd.DataFrame, landscape: dict | None) -> str:
    """What the pick is judged on: the runs measured so far, and how far the background grid has got."""
    n = int(frame["status"].eq("ok").sum())
    said = f"Judged on the {n:,} run{'s' if n != 1 else ''} of this model measured so far"
    if landscape and landscape.get("measured", 0) < landscape.get("total", 0):
        said += (f" ({landscape['measured']} of the {landscape['total']} configurations of the default grid are "
                 "measured; the pick can change as the rest arrive)")
    ok = frame[frame["status"].eq("ok")]
    waiting = int(ok["latency_ms"].isna().sum()) if "latency_ms" in ok.columns else 0
    if waiting:
        said += (f". {waiting:,} of them {'is' if waiting == 1 else 'are'} not timed yet (their accuracy and size come "
                 "first; the timing follows), so a latency budget or the fastest pick sees only the others")
    return said + "."


def _resolution_note(frame: pd.DataFrame, confidence: float | None, max_drop: float, card: ModelCard, backend) -> None:
    """Where the choice is made: whether this test set can answer the question, and a larger one where there is."""
    got = resolution(frame[frame["status"] == "ok"], confidence) if confidence else None
    if got is None or got[1] <= max_drop:
        return
    n, points = got
    st.warning(f"This test set resolves about {points:.2f} points: with {n:,} test images even an exact copy of the "
               f"baseline is not {confidence:.0%} sure to lose at most {max_drop:g} points, so only runs that gained "
               "by luck can qualify. The question needs more test images, a larger drop, or a lower confidence.")
    larger = sorted((c for c in backend.list_baselines() if (c.get("test_samples") or 0) >= 4 * n),
                    key=lambda c: (c.get("architecture") != card.get("architecture"), -(c.get("test_samples") or 0)))
    if larger:
        c = larger[0]
        st.button(f"Open {md(c['name'])} ({c['test_samples']:,} test images)", key="ss_larger",
                  on_click=st.session_state.__setitem__, args=("_select_baseline", c["name"]),
                  help="A model measured on a larger test set, where a drop of this size can be resolved")


def baseline_panel(info: dict) -> None:
    card, m = info["card"], info["measured"]
    st.caption(f"Measured now on the {m['n']:,} test images, from the model rebuilt from {md(card['file'])}; the card "
               f"recorded top-1 {card['accuracy']['top1']:.2f}% at training.")
    cols = st.columns(5)
    cols[0].metric("Top-1", f"{m['top1']:.2f}%")
    cols[1].metric("Top-3", f"{m['top3']:.2f}%")
    cols[2].metric("Top-5", f"{m['top5']:.2f}%")
    cols[3].metric("Parameters", f"{m['params']:,}")
    cols[4].metric("File size", fmt_bytes(m["file_bytes"]), help=f"{m['file_bytes']:,} bytes, measured from the file")
    st.plotly_chart(plots.params_per_layer(info["layers"]), key="params_per_layer")
    with st.expander("Per-layer table"):
        st.dataframe(info["layers"], hide_index=True, key="layers_table")
    with st.expander("Baseline card"):
        own = st.session_state.get("_byo_files", {}).get(card["name"])
        if own:
            st.caption(f"Added from your file {md(own)}: its name is kept in this session only.")
        # no file name from a card reaches the page: the operator's may be private, and an older card's an uploader's
        shown = {k: v for k, v in card.items() if k != "path"}
        if isinstance(shown.get("source"), dict):
            shown["source"] = {k: v for k, v in shown["source"].items() if k != "file"}
        st.json(shown)


def byo_panel(backend, datasets: list[str], archs: list[str], preview: bool = True, current: str | None = None
              ) -> None:
    """Bring your own model (and data): the model gets the same views as a baseline once added. `preview`: say what
    the explorer will feed it (reads the chosen data set once: only while the tab is open). `current`: the data set
    of the model open now, which the data set picker starts on."""
    if current in datasets:
        st.session_state.setdefault("byo_dataset", current)
    st.markdown("Add a **state_dict** (`.safetensors`, or a PyTorch `.pt`/`.pth` checkpoint read with "
                "`weights_only`: pickled code is refused) for an architecture of the zoo or any classification model "
                "of torchvision or timm, named in the list below (the installed library builds it; your file gives "
                "only its weights), or an **ONNX** model (standard "
                "operators, weights in the file): size, latency and ONNX Runtime int8 apply to ONNX models; the "
                "techniques that rewrite PyTorch layers do not. TorchScript and exported programs (`.pt2`) are "
                "programs: loading one runs code from the file, so this page never accepts them (the command "
                "line does, with `--trust-code`, for files whose author you trust).")
    up = st.file_uploader("Model file", type=["safetensors", "pt", "pth", "pt2", "onnx"], key="byo_model")
    arch = st.selectbox("Architecture (for a state_dict): type to search", ["(none: an ONNX model)", *archs],
                        key="byo_arch", help="The zoo's architectures first, then torchvision's and timm's by name, "
                        "such as `timm:resnet18` or `torchvision:mobilenet_v3_small`. Their first layer is made "
                        "for the data set's channels; your weights must match the architecture's layers.")
    dataset = st.selectbox("Dataset", datasets, key="byo_dataset")
    allowed = backend.data_roots()
    if allowed:  # a folder on the server: only inside the roots the operator allowed (issue 21)
        root = st.text_input("Local dataset folder (all but digits)", key="byo_root",
                             help="A folder inside " + md(", ".join(str(r) for r in allowed)))
    else:
        st.text_input("Local dataset folder (all but digits)", key="byo_root", disabled=True,
                      help="Off: the operator can allow folders with `EXPLORER_DATA_ROOTS`")
        st.caption("Local folders are off on this page: the operator can allow folders with `EXPLORER_DATA_ROOTS`. "
                   "Upload a zip of an image folder instead.")
        root = ""
    zipped = st.file_uploader("...or a zip of an image folder (one subfolder per class)", type=["zip"], key="byo_zip")
    fed = _fed_form(backend, dataset, root, zipped is not None, preview)
    name = st.text_input("Name (optional)", key="byo_name")
    added = st.session_state.get("_byo_added")
    if not st.button("Add model", key="byo_add", disabled=up is None or fed is None):
        if added:  # shown until the next add: the page reruns right after adding
            st.success(md(added["message"]))  # it holds the name the user typed
            if added.get("note"):
                st.info(md(added["note"]))
        return
    st.session_state.pop("_byo_added", None)
    if up is None:  # the button is disabled without a file
        return
    try:
        data_root = str(backend.page_folder(root.strip())) if root.strip() else None
        with backend.upload_folder() as tmp:
            backend.check_upload(up.size, f"model file {up.name!r}")
            model_path = Path(tmp) / "model.upload"
            model_path.write_bytes(up.getbuffer())
            if zipped is not None:
                backend.check_upload(zipped.size, f"zip {zipped.name!r}")
                zip_path = Path(tmp) / "data.zip"
                zip_path.write_bytes(zipped.getbuffer())
                data_root = backend.add_dataset_zip(str(zip_path), name.strip() or None, shown=zipped.name)
                dataset = "imagefolder"
            turn = st.empty()  # while other visitors' checks hold every turn: how many go first
            try:
                with st.spinner("Loading, checking and measuring the model..."):
                    card = backend.add_model(str(model_path), arch=None if arch.startswith("(") else arch,
                                             dataset=dataset, root=data_root, name=name.strip() or None,
                                             shown=up.name, on_wait=turn.info, **(fed or {}))
            finally:
                turn.empty()
    except ValueError as e:  # the message repeats file and model names, this visitor's or another's
        st.error(md(e))
        return
    st.session_state["_select_baseline"] = card["name"]
    st.session_state["_open_overview"] = True  # the page opens the model just added on its Overview
    for k in ("byo_model", "byo_zip", "byo_name"):  # the form starts empty for the next model
        st.session_state.pop(k, None)
    # the file's name stays in this session: the card and the model's name, which every visitor lists, hold none
    st.session_state.setdefault("_byo_files", {})[card["name"]] = up.name
    verb = "Already added as" if card.get("reused") else "Added"
    renamed = (f" (the name you typed, {name.strip()!r}, is stored as {card['name']!r}: names keep letters, digits, "
               "'_', '-' and '.')") if name.strip() and name.strip() != card["name"] else ""
    st.session_state["_byo_added"] = {
        "message": f"{verb} {card['name']}{renamed}: top-1 {card['accuracy']['top1']:.2f}% on "
                   f"{card['test_samples']:,} test images (measured), fed "
                   f"{backend.feed_words(card) or 'as its card says'}. "
                   f"It is now in the baseline list (from your file {up.name!r}, whose name other visitors do not "
                   "see).",
        "note": card.get("unsupported_reason")}
    st.rerun()


def _fed_form(backend, dataset: str, root: str, zipped: bool, preview: bool) -> dict | None:
    """The preprocessing the model was trained with (blank: the data set's own), and what the explorer will feed it
    with these settings; None while a value is refused (said in one line)."""
    st.markdown("**What your model is fed.** Every image is scaled to [0, 1] and then normalised per channel as "
                "(x - mean) / std. A model trained with other values, or at another size, scores lower here than it "
                "does for you: give the ones it was trained with.")
    c = st.columns(3)
    mean = c[0].text_input("Mean per channel", key="byo_mean", placeholder="the data set's own",
                           help="After scaling to [0, 1]: 0.5, or 0.485, 0.456, 0.406 for colour. Blank: the "
                                "training split's own mean. Mean 0 with standard deviation 1 feeds the [0, 1] pixels "
                                "as they are.")
    std = c[1].text_input("Standard deviation per channel", key="byo_std", placeholder="the data set's own",
                          help="One value per channel, each above 0, given with the mean. Blank: the training "
                               "split's own.")
    size = c[2].number_input("Image size (0: the data set's)", 0, 512, value=0, step=1, key="byo_image_size",
                             help="The height and width the model was trained at: the images are resized to it.")
    try:
        fed = {"mean": backend.parse_values(mean, "mean"), "std": backend.parse_values(std, "standard deviation"),
               "image_size": int(size) or None}
    except ValueError as e:  # repeats what the visitor typed
        st.error(md(e))
        return None
    if preview and not zipped:
        try:
            with st.spinner("Reading the data set's size and statistics..."):  # once per data set and size
                words = backend.feed_preview(dataset, root.strip() or None, fed["image_size"], fed["mean"],
                                             fed["std"])
            st.caption(f"The explorer will feed {md(words)}.")
        except ValueError as e:  # the data set cannot be read here: said again, as the refusal, when the model is added
            st.caption(f"What the model will be fed is said once its data set can be read ({md(e)}).")
    elif zipped:
        st.caption("An uploaded image folder is read at 32x32 (or the size above), normalised with its training "
                   "split's own statistics unless a mean and standard deviation are given.")
    return fed
