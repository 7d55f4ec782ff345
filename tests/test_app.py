import ast
import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.app.service import list_baselines
from explorer.app.ui import state
from explorer.core.data import available
from explorer.core.markup import unmd
from explorer.run.cache import RunCache
from explorer.run.runner import run_key
from tests.conftest import open_tab, settle

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One run cache for this module's pages: most open the same default configuration, which is then
    computed once (tests that count entries compare counts before and after)."""
    root = tmp_path_factory.mktemp("app") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE_DIR", str(root))
        yield RunCache(root)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty run cache, for a test whose expectation depends on which runs exist."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return RunCache(tmp_path / "cache")


def _app(**query) -> AppTest:
    """The page on a link; the digits CNN unless the link names another baseline (the page's own default
    depends on which data sets this machine has)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for k, v in {"baseline": "digits_cnn-digits", **query}.items():
        at.query_params[k] = v
    return settle(at.run())


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def _controls(at) -> dict:
    return {k: at.session_state[k] for k in state.DEFAULTS}


def _stored(at, cache) -> dict:
    cards = {c["name"]: c for c in list_baselines()}
    recipe = state.to_recipe(_controls(at), cards[at.session_state["baseline"]])
    res = cache.get(run_key(recipe))
    assert res is not None, "the page's configuration is not in the cache"
    return res


def _assert_shows(at, res):
    m = _metrics(at)
    assert m["Top-1 (measured)"] == f"{res['accuracy']['top1']:.2f}%"
    n = res["size"]["packed_bytes"]
    assert m["Packed size"] in (f"{n:,} B", f"{n / 1024:,.1f} KiB", f"{n / 2**20:,.2f} MiB")
    assert m["Weight sparsity"] == f"{res['sparsity']:.1%}"


def test_sliders_drive_runs_and_the_page_shows_the_backend_result(cache):
    at = _app()
    assert not at.exception and not at.error, [e.value for e in at.error]
    if available("fashion-mnist"):  # every committed baseline is offered, the Vision Transformer among them
        assert "vit-fashion-mnist" in at.sidebar.selectbox(key="baseline").options
    _assert_shows(at, _stored(at, cache))
    settle(at.sidebar.slider(key="sparsity").set_value(0.8).run())
    assert not at.exception
    _assert_shows(at, _stored(at, cache))
    settle(at.sidebar.select_slider(key="bits").set_value("4").run())
    _assert_shows(at, _stored(at, cache))
    settle(at.sidebar.select_slider(key="clusters").set_value("16").run())
    res = _stored(at, cache)
    _assert_shows(at, res)
    assert dict(at.query_params) == {"baseline": "digits_cnn-digits", "sparsity": "0.8", "bits": "4", "clusters": "16"}
    open_tab(at, "Curves and Pareto")  # only the open tab is drawn
    assert "cluster 16" in res["label"] and len(at.get("plotly_chart")) >= 4


def test_cached_configuration_rerenders_from_the_cache(cache):
    at = _app()
    n = len(cache.keys())
    settle(at.run())
    assert not at.exception and len(cache.keys()) == n
    assert "(from the cache)" in at.caption[-1].value


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_invalid_combination_shows_an_error_not_an_exception(cache):
    at = _app(bits="4", quant_mode="static")
    assert not at.exception
    assert any("bits=4 must be 8 for mode 'static'" in e.value for e in at.error)
    settle(at.sidebar.select_slider(key="bits").set_value("8").run())  # fixing it brings the views back
    assert not at.exception and not at.error and "Top-1 (measured)" in _metrics(at)


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_failed_run_shows_its_error_and_the_page_stays_usable(cache):
    at = _app(granularity="nm", sparsity="0.5")  # nm uses layers=inner here, so it runs
    assert not at.exception and not at.error
    settle(at.sidebar.selectbox(key="granularity").set_value("channel").run())
    settle(at.sidebar.slider(key="sparsity").set_value(0.99).run())
    assert not at.exception
    assert any("would remove every channel" in e.value for e in at.error)
    settle(at.sidebar.slider(key="sparsity").set_value(0.5).run())
    assert not at.exception and not at.error


@pytest.mark.slow  # three vgg13 runs; test_bnadapt covers the adaptation, test_controls where it is offered
def test_batchnorm_adaptation_is_offered_where_the_model_has_batchnorm(cache):
    """vgg13 with one-shot 2:4 sparsity and no fine-tuning: BatchNorm adaptation (on by default) keeps it
    near the baseline; switched off, the stale statistics take it to chance. digits_cnn has no BatchNorm:
    its recipe gets no adaptation step."""
    at = _app(baseline="vgg13-digits", granularity="nm", prune_epochs="0")
    assert not at.exception and not at.error, [e.value for e in at.error]
    res = _stored(at, cache)
    assert res["label"] == "prune 50% nm -> BN adapt" and res["accuracy_delta"] > -2
    _assert_shows(at, res)
    settle(at.sidebar.checkbox(key="bn_adapt").uncheck().run())
    res = _stored(at, cache)
    assert res["label"] == "prune 50% nm" and res["accuracy_delta"] < -40
    _assert_shows(at, res)
    cards = {c["name"]: c for c in list_baselines()}
    assert cards["vgg13-digits"]["batchnorm"] and not cards["digits_cnn-digits"]["batchnorm"]
    assert state.to_recipe(state.DEFAULTS, cards["digits_cnn-digits"]).label() == "prune 50% unstructured"


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_a_shared_link_reopens_the_same_view_and_bad_values_are_reported(cache):
    at = _app(sparsity="0.75", clusters="16", baseline="nope", bits="99")
    c = _controls(at)
    assert c["sparsity"] == 0.75 and c["clusters"] == "16" and c["bits"] == "fp32"
    warnings = [w.value for w in at.sidebar.warning]
    assert any("baseline='nope' must be one of" in w for w in warnings)
    assert any("bits='99' must be one of" in w for w in warnings)


def test_baseline_tab_shows_the_card(cache):
    at = _app(tab="Baseline")
    card = next(c for c in list_baselines() if c["name"] == at.sidebar.selectbox(key="baseline").value)
    m = _metrics(at)
    assert m["Top-1"] == f"{card['accuracy']['top1']:.2f}%" and m["Parameters"] == f"{card['params']:,}"


def test_ui_layer_has_no_torch_code():
    files = [ROOT / "app.py", *sorted((ROOT / "explorer" / "app" / "ui").glob("*.py"))]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{f.name} imports torch"


def test_query_round_trip():
    c = {**state.DEFAULTS, "baseline": "digits_cnn-digits", "sparsity": 0.9, "bits": "4", "quant_acts": True}
    q = state.to_query(c)
    assert q == {"baseline": "digits_cnn-digits", "sparsity": "0.9", "bits": "4", "quant_acts": "1"}
    parsed, problems = state.parse_query(q, ["digits_cnn-digits"])
    assert parsed == {"baseline": "digits_cnn-digits", "sparsity": 0.9, "bits": "4", "quant_acts": True}
    assert not problems
    # controls that are off, or do not apply, stay out of the link
    off = {**c, "sparsity": state.DEFAULTS["sparsity"], "quant_acts": False, "rank_ratio": 0.5,
           "student_width": 0.25, "calibration": "entropy"}
    assert set(state.to_query(off)) == {"baseline", "bits"}


def test_a_link_with_a_value_outside_any_controls_choices_is_one_line_listing_them():
    """?group_size=33 raised a TypeError on the page: its choices are numbers, and the refusal joined them as text."""
    for key, choices in state._CHOICES.items():
        parsed, problems = state.parse_query({key: "33"}, ["digits_cnn-digits"])
        if 33 in choices or "33" in choices:
            continue
        assert key not in parsed
        assert problems == [f"{key}='33' must be one of: {', '.join(str(c) for c in choices)}"]
    assert any(not isinstance(c, str) for cs in state._CHOICES.values() for c in cs)  # the case that failed


def test_a_process_the_page_spawns_does_not_draw_the_page_or_queue_its_runs(monkeypatch):
    """multiprocessing's spawn re-imports the parent's __main__ file (under Streamlit, app.py) in every child, as
    __mp_main__: a model check or a landscape worker ran the whole page and computed its default run beside its
    own work. The page is drawn only where Streamlit runs the file."""
    import runpy

    from explorer.app.ui import shell

    drawn = []
    monkeypatch.setattr(shell, "draw", lambda: drawn.append("shell"))
    runpy.run_path(str(ROOT / "app.py"), run_name="__mp_main__")
    assert drawn == []
    def page(top):
        raise RuntimeError("the page is drawn")

    monkeypatch.setattr("explorer.app.ui.main.main", page)
    with pytest.raises(RuntimeError, match="the page is drawn"):  # as Streamlit runs the file
        runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
    assert drawn == ["shell"]


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_sweep_panel_runs_a_sweep_from_the_page(cache, monkeypatch):
    # spawned sweep workers must not re-run the page (under Streamlit, __main__ is app.py): they would
    # wait forever on the cache lock the sweep holds
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    at = _app()
    at.multiselect(key="sweep_sparsity").set_value([0.0, 0.25])
    at.multiselect(key="sweep_bits").set_value(["fp32", "4"])
    at.multiselect(key="sweep_clusters").set_value(["off"])
    at.multiselect(key="sweep_prune_epochs").set_value([0])
    settle(at.run())
    settle(at.button(key="sweep_run").click().run(timeout=600))
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    df = at.session_state["sweep_frames"]["digits_cnn-digits"]
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert {r["label"] for r in df.to_dict("records")} == {"baseline", "W4 ptq", "prune 25% unstructured",
                                                           "prune 25% unstructured -> W4 ptq"}


def test_a_bad_setting_is_one_error_line_on_the_page(cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_THREADS", "abc")
    at = _app()
    assert not at.exception
    assert [unmd(e.value) for e in at.error] == [
        "EXPLORER_THREADS='abc' must be a whole number of threads >= 1, at most 1024 (default 1): threads for "
        "latency timing"]


def test_the_page_opens_on_fashion_mnist_where_the_data_is_and_on_digits_otherwise(cache, monkeypatch, tmp_path):
    from explorer.app import service
    from explorer.core import data as data_mod

    assert service.default_baseline(["digits_cnn-digits", "lenet5-fashion-mnist"]) == "lenet5-fashion-mnist"
    assert service.default_baseline(["vgg13-digits", "digits_cnn-digits"]) == "digits_cnn-digits"
    monkeypatch.setattr(data_mod, "DEFAULT_ROOTS", {"fashion-mnist": (tmp_path / "none",), "mnist": ()})
    at = settle(AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["baseline"] == "digits_cnn-digits"
    assert not [o for o in at.sidebar.selectbox(key="baseline").options if "fashion" in o]
    notes = [c.value for c in at.sidebar.caption if "need data not on this machine" in c.value]
    assert len(notes) == 1 and "apt-get install -y dataset-fashion-mnist" in notes[0]


@pytest.mark.skipif(not available("fashion-mnist"),
                    reason="Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")
@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_with_the_data_the_page_opens_on_the_fashion_mnist_lenet5(cache):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["prune_epochs"] = "0"  # a quick first run; the baseline is the page's own choice
    settle(at.run())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["baseline"] == "lenet5-fashion-mnist"
    # the sidebar's defaults are the configuration the server queued at its start (explorer.app.serve)
    from explorer.app import service

    opened = state.to_recipe({**_controls(at), "prune_epochs": state.DEFAULTS["prune_epochs"]},
                             {c["name"]: c for c in list_baselines()}["lenet5-fashion-mnist"])
    assert run_key(opened) == run_key(service.default_recipe())
    assert "10000 test images" in " ".join(c.value for c in at.caption).replace(",", "")
    assert _metrics(at)["Top-1 (measured)"].endswith("%")


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_the_page_states_uncertainty_and_what_compression_forgets(cache):
    at = _app(sparsity="0.9", prune_epochs="0")
    assert not at.exception
    res = _stored(at, cache)
    vs = res["vs_baseline"]
    captions = " ".join(c.value for c in at.caption)
    n = vs["baseline_only"]
    assert f"{n:,} image{'' if n == 1 else 's'} it got right {'is' if n == 1 else 'are'} now wrong" in captions
    assert "95% interval" in captions
    forgot = [m.value for m in at.markdown if "gets **" in m.value]
    assert forgot and f"**{vs['baseline_only']:,}** wrong" in forgot[0] and f"**{vs['run_only']:,}** right" in forgot[0]
    assert len(at.get("plotly_chart")) >= 10  # curves, size, latency, layers, and the four views of what it forgets
    # 359 test images cannot make any run 95% sure of a drop under about a point: the page says so
    small = [unmd(w.value) for w in at.warning if "too small" in unmd(w.value)]
    assert small and "with 359 test images" in small[0]
    # said where the choice is made, before any pick: what this test set can resolve, and a larger one offered
    said = " ".join(unmd(w.value) for w in at.warning)
    assert "This test set resolves about 1.0 points" in said and "needs more test images" in said, said
    if available("fashion-mnist"):
        assert unmd(at.button(key="ss_larger").label).startswith("Open lenet5-fashion-mnist (10,000 test images)")
    assert any(c.value.startswith("Judged on the") for c in at.caption)
    settle(at.number_input(key="ss_drop").set_value(3.0).run())
    spot = [unmd(s.value) for s in at.success if "sure" in s.value]
    assert spot and "95% sure to lose at most 3 points of top-1" in spot[0]


def test_the_overview_says_a_gain_is_the_fine_tunings_where_the_same_training_without_compression_does_as_well():
    """Issue 35: pruning 50% with 2 fine-tune epochs beat an under-trained baseline by 4.98 points (McNemar p = 7e-52);
    the baseline fine-tuned the same 2 epochs does as well."""
    from explorer.app.ui import views

    vc = {"delta_ci": [-0.9, 0.1], "significant": False, "p_value": 0.12, "delta": -0.4, "top1": 86.97,
          "top1_ci": [86.3, 87.6], "budget": "2 epochs", "epochs": 2, "key": "c" * 20}
    res = {"accuracy_delta": 4.98, "vs_baseline": {"significant": True, "p_value": 7e-52, "delta_ci": [4.4, 5.6]},
           "vs_control": vc}
    assert views.control_sentence(res) == (
        "Against the baseline fine-tuned the same 2 epochs without compression (top-1 86.97%, the fair control for "
        "this fine-tuning), on the same images: -0.40 points, 95% interval -0.90 to +0.10: within noise (exact "
        "McNemar p = 0.12).")
    said = views.fine_tuning_gain(res)
    assert said.startswith("The gain of +4.98 points over the baseline is the fine-tuning's, not the compression's")
    assert "within noise of it" in said
    worse = {**res, "vs_control": {**vc, "delta": -1.3, "significant": True, "p_value": 1e-4}}
    assert "1.30 points below it" in views.fine_tuning_gain(worse)
    better = {**res, "vs_control": {**vc, "delta": 1.2, "significant": True, "p_value": 1e-4}}
    assert views.fine_tuning_gain(better) == ""  # beats the same training too: no such warning
    assert "a real gain" in views.control_sentence(better)
    assert views.fine_tuning_gain({**res, "vs_control": None}) == views.control_sentence({"vs_control": None}) == ""


@pytest.mark.slow  # three page runs (the run, its baseline, its control): about 13 s on two cores
def test_a_fine_tuning_configuration_is_compared_with_the_baseline_fine_tuned_the_same_epochs(fresh_cache,
                                                                                              monkeypatch):
    """The control is queued with the run, stored like any run, and the Overview states the paired comparison with
    it (the same figures explorer.run.control gives from the two runs' stored predictions); the curves draw it."""
    from explorer.app import service
    from explorer.run import control

    cache = fresh_cache
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")  # its timing is not what this test reads
    at = _app(sparsity="0.3", prune_epochs="1")
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    res = _stored(at, cache)
    recipe = service.control_recipe(state.to_recipe(_controls(at), {c["name"]: c for c in list_baselines()}[
        "digits_cnn-digits"]))
    assert recipe is not None and [s.kind for s in recipe.steps] == ["finetune"]
    stored = cache.get(run_key(recipe))
    assert stored is not None, "the same-budget control is not in the cache"
    vc = control.compare(res, stored, cache)
    said = [c.value for c in at.caption if c.value.startswith("Against the baseline fine-tuned the same 1 epoch "
                                                              "without compression")]
    lo, hi = vc["delta_ci"]
    assert said and f"{vc['delta']:+.2f} points, 95% interval {lo:+.2f} to {hi:+.2f}" in said[0], said
    assert f"top-1 {stored['accuracy']['top1']:.2f}%" in said[0]
    curve = _figure(at, "chart_sparsity_accuracy")
    assert any("baseline fine-tuned 1 epoch, no compression" in a.get("text", "")
               for a in curve["layout"].get("annotations", []))


def _figure(at, key: str) -> dict:
    import json as _json

    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id)
    return _json.loads(chart.proto.spec)


def _values(v) -> list:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata": base64}."""
    import base64

    import numpy as np

    if isinstance(v, dict) and "bdata" in v:
        return list(np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]))
    return [x for x in (v or []) if x is not None]


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_one_builder_gives_8_bits_the_same_recipe_on_the_page_and_in_a_sweep(cache):
    """8 bits meant 'W8 ptq' in the sidebar and 'W8A8 static' in sweeps: now one function builds both."""
    from explorer.run.controls import grid_point
    from explorer.run.grid import Grid

    at = _app(sparsity="0", bits="8")
    assert not at.exception
    page = _stored(at, cache)
    grid = Grid.of(sparsity=(0.0,), bits=(8,), clusters=(0,)).recipes()[0]
    assert page["label"] == grid.label() == grid_point("digits_cnn", bits=8).label() == "W8A8 static"
    assert page["key"] == run_key(grid)


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_controls_that_do_not_apply_are_disabled_and_start_no_run(cache):
    at = _app(bits="4")  # weights-only: no activation ranges to calibrate
    assert at.sidebar.selectbox(key="calibration").disabled and at.sidebar.slider(key="rank_ratio").disabled
    assert at.sidebar.slider(key="student_width").disabled
    bn = at.sidebar.checkbox(key="bn_adapt_not_applicable")
    assert bn.disabled and bn.value is False  # digits_cnn has no BatchNorm
    first = _stored(at, cache)["key"]
    n = len(cache.keys())
    other = _app(bits="4", calibration="entropy", rank_ratio="0.5")  # a link that sets them anyway
    assert not other.exception and _stored(other, cache)["key"] == first and len(cache.keys()) == n
    assert "calibration" not in other.query_params and "rank_ratio" not in other.query_params


def test_structural_pruning_shows_parameters_removed_and_explains_once(cache):
    at = _app(granularity="channel", sparsity="0.75", prune_epochs="0")
    assert not at.exception
    m = _metrics(at)
    assert "Parameters removed" in m and "Weight sparsity" not in m
    said = [unmd(x.value) for x in (*at.info, *at.warning) if "removing an output channel" in unmd(x.value)
            or "also removes the next layer" in unmd(x.value)]
    assert len(said) == 1, said


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_a_finished_sweep_shows_in_the_charts_and_the_footer_says_so(cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    at = _app()
    at.multiselect(key="sweep_sparsity").set_value([0.25, 0.75])
    at.multiselect(key="sweep_bits").set_value(["fp32"])
    at.multiselect(key="sweep_clusters").set_value(["off"])
    at.multiselect(key="sweep_prune_epochs").set_value([0])
    settle(at.run())
    settle(at.button(key="sweep_run").click().run(timeout=600))
    assert not at.exception
    fig = _figure(at, "chart_sparsity_accuracy")
    xs = {round(float(x), 2) for t in fig["data"] for x in _values(t.get("x"))}
    assert {0.25, 0.75} <= xs, xs  # drawn in the same render that finished the sweep
    assert "after a sweep of 2 runs" in at.caption[-1].value


def test_sweet_spot_table_follows_the_settings_and_can_be_applied(fresh_cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    at = _app(sparsity="0.95", prune_epochs="0", tab="Sweet spot")  # loses far more than 5 points: the baseline
    at.number_input(key="ss_drop").set_value(5.0)
    at.selectbox(key="ss_objective").set_value("fastest")
    at.radio(key="ss_lat_kind").set_value("PyTorch CPU, batch 256")
    settle(at.run())
    assert not at.exception
    msg = next(s.value for s in at.success if "sure" in s.value)
    assert not any(len(tok.split(".")[-1]) > 3 for tok in msg.replace("%", " ").split() if tok[:1].isdigit()
                   and "." in tok), msg  # no raw 7.03836
    table = next(d.value for d in at.dataframe if "recommended" in d.value.columns)
    lat_row = table[table["figure"].str.startswith("latency")].iloc[0]
    assert "PyTorch CPU, batch 256" in lat_row["figure"] and lat_row["baseline"] and lat_row["recommended"]
    speed = table[table["figure"].str.startswith("speed-up")].iloc[0]  # the paired ratio, not two sessions' ms
    told = " ".join(c.value for c in at.caption)
    assert "same rounds" in told and "same engine" in told and "against the baseline's fp32 checkpoint file" in told
    assert table[table["figure"] == "times smaller than the fp32 checkpoint"].iloc[0]["recommended"].endswith("x")
    # the baseline is 1.0 by construction; a measured figure has its interval; a disturbed one has no number
    shapes = (r"1\.00x \(the baseline itself\)|[0-9.]+x \([0-9.]+x to [0-9.]+x\)(, within noise)?"
              r"|timing disturbed: re-timing")
    assert re.fullmatch(shapes, speed["recommended"]), speed
    assert speed["baseline"] == "" or re.fullmatch(shapes, speed["baseline"]), speed
    recommended = next(m.value for m in at.markdown if m.value.startswith("**Recommended:**")).split(":** ")[1]
    current = next(m.value for m in at.markdown if m.value.startswith("**Configuration:**"))
    apply = at.button(key="ss_apply")
    assert recommended not in current and not apply.disabled
    settle(apply.click().run())
    assert not at.exception
    now = next(m.value for m in at.markdown if m.value.startswith("**Configuration:**"))
    assert now == f"**Configuration:** {recommended}", (now, recommended)
    assert at.session_state["sparsity"] == 0.0 and at.query_params["sparsity"] == "0.0"  # the link follows
    assert at.button(key="ss_apply").disabled  # it is the current configuration now


@pytest.mark.slow  # a page run with its baseline: over 10 s on two cores
def test_a_collapsed_run_says_so_at_the_top_of_the_overview(cache):
    """Pruning the digits CNN to 99% leaves it guessing (top-1 9.75%): the Overview says so before any figure, its
    top-1 tile shows no change to weigh, and the downloads say what the files hold."""
    at = _app(sparsity="0.99", prune_epochs="0")
    assert not at.exception
    assert _stored(at, cache).get("collapse")
    errors = [e.value for e in at.error]
    assert errors and errors[0].startswith("This model collapsed") and "Try a lower sparsity" in errors[0]
    tile = next(m for m in at.metric if m.label == "Top-1 (measured)")
    assert tile.proto.delta == "collapsed: a guess"
    assert any("collapsed model" in w.value for w in at.warning)
    assert any("not a trade-off: the model collapsed" in c.value for c in at.caption)


def test_downloads_offer_every_deployable_with_its_size(cache):
    at = _app(sparsity="0.5", bits="8", prune_epochs="0")
    res = _stored(at, cache)
    labels = [b.label for b in at.download_button]
    for name, size in (("Packed .xpk", "packed_bytes"), ("ONNX, fp32", "onnx_bytes"),
                       ("ONNX, int8", "onnx_int8_bytes")):
        n = res["size"][size]
        assert any(label.startswith(name) and (f"{n / 1024:,.1f} KiB" in label or f"{n:,} B" in label)
                   for label in labels), (name, labels)
    assert any(label.startswith("Recipe JSON") for label in labels)
    assert any("summary (PNG" in label for label in labels) and any("summary (HTML" in label for label in labels)


def test_the_link_keeps_the_active_tab(cache):
    at = _app(tab="Sweet spot")
    assert not at.exception and at.session_state["tab"] == "Sweet spot"
    assert at.query_params["tab"] == "Sweet spot"


def test_user_facing_text_uses_plain_words():
    import ast as _ast

    banned = ("seed 00", "Seed 00", "W6 ptq", "ORT int8 b256", "z-score", "b256 ms")
    for f in [ROOT / "app.py", *(ROOT / "explorer" / "app" / "ui").glob("*.py")]:
        for node in _ast.walk(_ast.parse(f.read_text())):
            if isinstance(node, _ast.Constant) and isinstance(node.value, str):
                assert not any(b in node.value for b in banned), (f.name, node.value[:80])


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_an_added_model_is_announced_until_the_next_action(cache, tmp_path, monkeypatch):
    import io

    import torch

    from explorer.models.baselines import load_baseline

    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    model, _ = load_baseline(ROOT / "models" / "digits_cnn-digits.safetensors")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    at = _app(prune_epochs="0")
    at.file_uploader(key="byo_model").set_value(("mine.pt", buf.getvalue(), "application/octet-stream"))
    at.selectbox(key="byo_arch").set_value("digits_cnn")
    at.text_input(key="byo_name").set_value("mine")
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    assert not at.exception and at.session_state["baseline"] == "mine"
    assert any(unmd(s.value).startswith("Added mine: top-1 98.33%") for s in at.success)  # after the page's rerun
    settle(at.run())
    assert any(unmd(s.value).startswith("Added mine") for s in at.success)  # and on the next render too


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_your_model_names_a_timm_architecture_from_the_searchable_list(cache, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from explorer.core.zoo import create_model

    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    model = create_model("timm:test_resnet", num_classes=10, in_channels=1, image_size=8)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    at = _app(prune_epochs="0", tab="Your model")  # the libraries' names are listed where the tab is open
    options = at.selectbox(key="byo_arch").options
    assert {"digits_cnn", "timm:test_resnet", "torchvision:mobilenet_v3_small", "timm:vit_small_patch16_224"} <= set(
        options)
    at.file_uploader(key="byo_model").set_value(("w.safetensors", (tmp_path / "w.safetensors").read_bytes(),
                                                 "application/octet-stream"))
    at.selectbox(key="byo_arch").set_value("timm:test_resnet")
    at.text_input(key="byo_name").set_value("mine_timm")
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["baseline"] == "mine_timm"


DISPLAYS = {"error", "warning", "info", "success", "caption", "markdown", "toast", "title", "header", "subheader"}
# functions of the page's own that build text from figures and fixed words, never from a visitor's text
TRUSTED = {"md", "footer", "_landscape_line", "accuracy_sentence", "recipe_words", "engine", "count", "fmt_bytes",
           "describe", "join", "get", "upper", "label", "measured_so_far"}
# local names that hold the page's own words (the live run's stage, the glossary, counts of threads), by module
OWN_WORDS = {"main.py": {"LIVE", "what", "note", "TABS"}, "shell.py": {"TITLE", "LOADING"}, "panels.py": {"against"},
             "views.py": {"timing", "training", "sentence", "what", "term", "text", "load", "busy", "wait"}}


def _unescaped(node, own: set[str] = frozenset()) -> list[str]:
    """The parts of a message that could carry a visitor's text into Markdown without markup.md."""
    if isinstance(node, ast.Constant) or (isinstance(node, ast.Name) and node.id in own):
        return []
    if isinstance(node, ast.IfExp):
        return _unescaped(node.body, own) + _unescaped(node.orelse, own)
    if isinstance(node, ast.JoinedStr):
        return [p for v in node.values if isinstance(v, ast.FormattedValue) and v.format_spec is None
                for p in _unescaped(v.value, own)]
    if isinstance(node, ast.BinOp):
        return _unescaped(node.left, own) + _unescaped(node.right, own)
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "md":
            return []
        if name in TRUSTED:
            return [p for a in node.args for p in _unescaped(a, own)] if name in ("join", "upper") else []
    if isinstance(node, ast.GeneratorExp):
        return _unescaped(node.elt, own)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("TILES", "HELP"):
        return []
    return [ast.unparse(node)]


def test_every_message_the_page_renders_escapes_what_it_did_not_write():
    """Issue 21: a URL parameter or file name holding `![x](http://attacker/p.png)` was rendered as an image.
    Every st.error/warning/info/success/caption/markdown body and every tooltip in the page's code is fixed
    text, figures, or a value passed through markup.md."""
    found = []
    for f in [ROOT / "app.py", *sorted((ROOT / "explorer" / "app" / "ui").glob("*.py"))]:
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            bodies = node.args[:1] if attr in DISPLAYS else []
            bodies += [k.value for k in node.keywords if k.arg == "help"]
            for body in bodies:
                found += [f"{f.name}:{node.lineno}: {p}" for p in _unescaped(body, OWN_WORDS.get(f.name, set()))]
    assert not found, "\n".join(found)


def _rendered(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)


def test_a_link_holding_markup_is_shown_as_its_text(cache):
    """`?sparsity=![x](http://attacker/p.png)` made every visitor's browser fetch the attacker's image."""
    bad = "![x](http://attacker/p.png)"
    at = _app(sparsity=bad)
    assert not at.exception
    shown = [w.value for w in at.main.warning]  # in the page, where it is seen, not below the sidebar's controls
    assert f"Ignored from the link: sparsity={bad!r} is not a float" in [unmd(w) for w in shown], shown
    assert not at.sidebar.warning
    nowhere = _app(tab="Nonsense")  # Streamlit drops an unknown tab from the link without a word
    assert any(unmd(w.value).startswith("Ignored from the link: tab='Nonsense' must be one of: Overview, Curves")
               for w in nowhere.main.warning), [w.value for w in nowhere.main.warning]
    for body in shown + [e.value for e in at.error] + [c.value for c in at.caption] + [m.value for m in at.markdown]:
        assert "<img" not in _rendered(body) and "attacker" not in _rendered(body).split("<p>")[0], body
        assert not re.search(r"<(img|a)\b", _rendered(body)), body


@pytest.mark.slow  # over 15 s: `make test-all` runs it; test_markup and the link test keep escaping in the default run
def test_an_uploaded_file_name_holding_markup_is_shown_as_its_text(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    name = "![x](http://attacker/p.png)<img src=http://attacker/q.png>.pt"
    at = _app(prune_epochs="0")
    at.file_uploader(key="byo_model").set_value((name, b"not a model", "application/octet-stream"))
    at.selectbox(key="byo_arch").set_value("digits_cnn")
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(repr(name) in unmd(e) for e in errors), errors
    assert not any(re.search(r"<(img|a)\b", _rendered(e)) for e in errors), errors


def test_the_page_reads_no_server_folder_unless_the_operator_allows_it(cache, tmp_path, monkeypatch):
    """Issue 21: the folder box listed any server folder (`/etc` answered with its subfolder names)."""
    import io

    import torch

    from explorer.models.baselines import load_baseline

    monkeypatch.delenv("EXPLORER_DATA_ROOTS", raising=False)
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    at = _app(tab="Your model")
    box = at.text_input(key="byo_root")
    assert box.disabled and any("EXPLORER_DATA_ROOTS" in c.value for c in at.caption)

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("EXPLORER_DATA_ROOTS", str(allowed))
    model, _ = load_baseline(ROOT / "models" / "digits_cnn-digits.safetensors")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    at = _app(tab="Your model")
    assert not at.text_input(key="byo_root").disabled
    at.file_uploader(key="byo_model").set_value(("mine.pt", buf.getvalue(), "application/octet-stream"))
    at.selectbox(key="byo_arch").set_value("digits_cnn")
    at.selectbox(key="byo_dataset").set_value("imagefolder")
    at.text_input(key="byo_root").set_value("/etc")
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    assert not at.exception
    errors = [unmd(e.value) for e in at.error]
    assert errors == [f"dataset folder '/etc' is outside the folders this page may read: {allowed.resolve()} "
                      "(EXPLORER_DATA_ROOTS)"], errors
    assert not list((tmp_path / "user").glob("*.json"))


@pytest.mark.slow  # over 15 s: `make test-all` runs it; test_markup and the link test keep escaping in the default run
def test_a_file_name_uploaded_by_one_visitor_never_reaches_another(cache, tmp_path, monkeypatch):
    """Issue 21: a markdown image in an uploaded file's name was stored with the model and rendered in the error
    another session got for taking the same model name. Issue 33: that name was in the error at all, and in the
    Baseline card every session can open; now only the uploading session sees it, as text."""
    import io

    import torch

    from explorer.models.baselines import load_baseline

    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    model, _ = load_baseline(ROOT / "models" / "digits_cnn-digits.safetensors")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    evil = "![x](http://attacker.invalid/p.png).pt"
    sessions = {}
    for session, file_name in (("first", evil), ("second", "mine.pt")):
        at = sessions[session] = _app(prune_epochs="0")
        at.file_uploader(key="byo_model").set_value((file_name, buf.getvalue(), "application/octet-stream"))
        at.selectbox(key="byo_arch").set_value("digits_cnn")
        at.text_input(key="byo_name").set_value("shared")
        settle(at.run())
        settle(at.button(key="byo_add").click().run())
        assert not at.exception, session
    errors = [e.value for e in at.error]
    assert any("a model named 'shared' already exists (digits_cnn, added" in unmd(e) for e in errors), errors
    assert not any("attacker" in e for e in errors), errors
    at.sidebar.selectbox(key="baseline").set_value("shared")
    settle(at.run())
    seen = [str(j.value) for j in at.json] + [str(c.value) for c in at.caption]
    assert any("sha256" in v for v in seen) and not any("attacker" in v for v in seen), seen  # the card, and no name
    own = [unmd(c.value) for c in settle(sessions["first"].run()).caption if "your file" in c.value]
    assert own == [f"Added from your file {evil}: its name is kept in this session only."], own
    assert not any(re.search(r"<(img|a)\b", _rendered(c.value)) for c in sessions["first"].caption)


def _other_model() -> str:
    names = [c["name"] for c in list_baselines()]
    return next(n for n in ("lenet5-fashion-mnist", "vgg13-digits", *names) if n in names and n != "digits_cnn-digits")


def _sweep_shown(at) -> bool:
    return any("configuration" in d.value.columns and "status" in d.value.columns for d in at.dataframe)


def test_each_model_keeps_its_own_sweep_and_settings_across_a_switch(cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    at = _app(sparsity="0.25", prune_epochs="0", tab="Sweep")
    for key, value in (("sweep_sparsity", [0.0]), ("sweep_bits", ["fp32"]), ("sweep_clusters", ["off"])):
        at.multiselect(key=key).set_value(value)
    at.multiselect(key="sweep_prune_epochs").set_value([0])
    settle(at.run())
    settle(at.button(key="sweep_run").click().run(timeout=600))
    assert not at.exception and _sweep_shown(at)
    other = _other_model()
    at.selectbox(key="baseline").set_value(other).run()  # not settled: the other model's run is not awaited
    assert not at.exception
    # another model's sweep is never shown (nor offered as its CSV) under this model's header
    assert not _sweep_shown(at)
    assert not any(b.proto.label == "Download results CSV" for b in at.get("download_button"))
    # the model opens on its own (default) settings, and the page says the previous ones were not carried over
    assert at.session_state["sparsity"] == state.DEFAULTS["sparsity"]
    assert at.session_state["prune_epochs"] == state.DEFAULTS["prune_epochs"]
    said = " ".join(unmd(i.value) for i in at.sidebar.info)
    assert f"{other} opens on its default settings" in said and "digits_cnn-digits" in said
    settle(at.selectbox(key="baseline").set_value("digits_cnn-digits").run())  # back: its settings and sweep return
    assert at.session_state["sparsity"] == 0.25 and at.session_state["prune_epochs"] == 0
    assert _sweep_shown(at)
    assert "the compression settings you last used with it" in " ".join(unmd(i.value) for i in at.sidebar.info)


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
@pytest.mark.parametrize("tab", ["Layers", pytest.param("Size and latency", marks=pytest.mark.slow),
                                 pytest.param("What it forgets", marks=pytest.mark.slow)])
def test_a_tab_opened_while_computing_says_so_instead_of_staying_blank(fresh_cache, tab):
    """Opened while the run computes (a tab not open is left empty then, so the run gets the cores), the tab
    says so (Size and latency, What it forgets showed nothing at all); once the run is done every tab is drawn."""
    from explorer.app.ui.main import TABS

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for k, v in {"baseline": "digits_cnn-digits", "sparsity": "0.35", "prune_epochs": "0", "tab": tab}.items():
        at.query_params[k] = v
    at.run()  # the first render: the run is queued, not complete
    opened = at.tabs[TABS.index(tab)]
    if any(i.value.startswith("Computing") for i in at.info):  # (a run this fast may be complete already)
        said = [i.value for i in opened.info]
        assert said and said[0].startswith("Computing this configuration"), said
        assert not at.tabs[1].get("plotly_chart") and not at.tabs[1].caption  # the curves wait: not open
    settle(at)
    assert not at.exception and any("chart_layers" in c.proto.id for c in at.tabs[3].get("plotly_chart"))
    columns = list(at.tabs[3].dataframe[0].value.columns)  # in words: they were params, packed_bytes, macs
    assert "bytes in the packed file" in columns and not {"packed_bytes", "macs", "params"} & set(columns), columns
    assert at.tabs[1].get("plotly_chart")  # the run done, the tabs not open are drawn too


def test_downloads_hand_over_their_bytes_as_the_page_is_drawn(cache):
    """A file made only when its button is pressed can be gone by then (the server log said `Deferred file ...
    not found` and the button did nothing): the summaries and the model files are there as the page is drawn."""
    at = _app()
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    summaries = [p for label, p in buttons.items() if label.startswith("One-page summary")]
    assert len(summaries) == 2
    for p in [*summaries, *(p for label, p in buttons.items() if label.startswith(("Packed .xpk", "ONNX")))]:
        assert not p.HasField("deferred_file_id") and p.url, p.label


def test_the_sweep_progress_names_its_final_phase_and_offers_0_6():
    from explorer.app.ui import panels

    assert panels.sweep_progress_words(12, 48, 30.4) == "12/48 runs, about 30 s left"
    last = panels.sweep_progress_words(48, 48, 0.0)
    assert "about 0 s left" not in last and "building the results table" in last
    from explorer.run.controls import control

    assert 0.6 in control("sparsity").offered()  # the Sweep tab offers what the sparsity control says


def test_the_sweet_spot_says_what_it_is_judged_on():
    import pandas as pd

    from explorer.app.ui import panels

    frame = pd.DataFrame({"status": ["ok", "ok", "failed"]})
    assert panels.measured_so_far(frame, None) == "Judged on the 2 runs of this model measured so far."
    said = panels.measured_so_far(frame, {"measured": 2, "total": 40})
    assert "2 of the 40 configurations of the default grid" in said and "can change" in said
    assert "of the default grid" not in panels.measured_so_far(frame, {"measured": 40, "total": 40})
    timed = pd.DataFrame({"status": ["ok", "ok", "ok"], "latency_ms": [1.0, None, None]})
    assert "2 of them are not timed yet" in panels.measured_so_far(timed, None)  # landscape points, timing next


def test_the_server_does_not_collect_garbage_after_every_rerun():
    """Streamlit's default runs gc.collect(2) after every script run, fragments included; with PyTorch loaded each
    collection holds the interpreter long enough that a run's progress, redrawn twice a second, slowed the run it
    showed about 2.5 times (the default model's first figures: 35 s, 15 s without). The repository's
    .streamlit/config.toml turns it off for `streamlit run app.py`."""
    import os
    import subprocess
    import sys

    code = "import streamlit.config as c; c.get_config_options(); print(c.get_option('runner.postScriptGC'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")})
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_the_shell_is_drawn_before_any_heavy_import():
    """The title, the sidebar and a line saying what loads paint at once: app.py draws the shell, which imports
    nothing but Streamlit, before it imports the page (which pulls in PyTorch)."""
    import subprocess
    import sys

    code = ("import sys; import explorer.app.ui.shell; heavy = {'torch', 'torch_pruning', 'onnxruntime', 'timm', "
            "'explorer.app.service'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    guard = next(n for n in ast.parse((ROOT / "app.py").read_text()).body if isinstance(n, ast.If))
    assert ast.unparse(guard.test) == "__name__ == '__main__'"  # the page is drawn only where Streamlit runs it
    opened = next(n for n in guard.body if isinstance(n, ast.With))  # while the shell is drawn (core.opening)
    assert ast.unparse(opened.items[0]) == "page_opening()"
    assert [ast.unparse(n) for n in opened.body] == ["top = shell.draw()"]
    order = [ast.unparse(n) for n in guard.body]
    assert order.index(ast.unparse(opened)) < order.index("from explorer.app.ui.main import main")
    code = ("import sys; import explorer.core.opening; heavy = {'torch', 'streamlit', 'numpy'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_page_draws_one_title_and_one_sidebar_heading(cache):
    at = _app()
    assert [t.value for t in at.title] == ["Compression trade-off explorer"]
    assert [h.value for h in at.sidebar.header] == ["Configuration"]
    assert not any(c.value.startswith("Starting:") for c in at.caption)  # the loading line gave way to the page


def test_transformer_pruning_is_offered_only_for_a_model_with_attention(cache):
    """LeNet-5 offered pruning attention heads; choosing it failed the run and emptied every tab."""
    at = _app(granularity="heads")
    assert not at.exception and not at.error, [e.value for e in at.error]
    gran = next(s for s in at.sidebar.selectbox if s.label == "Granularity")
    assert "heads" not in gran.options and "neurons" not in gran.options and gran.value == "unstructured"
    assert any("Pruning attention heads applies to transformers only, and digits" in unmd(w.value)
               for w in at.main.warning)


def test_whether_a_baseline_has_batchnorm_or_attention_is_read_from_its_weights_names():
    """The first page lists every card without building its model: BatchNorm and attention are read from the
    safetensors header, and agree with the built model for every committed baseline."""
    from explorer.app import service

    cards = service.all_baselines()
    for c in cards:
        for kind in ("batchnorm", "attention"):
            built = service._built_has(c["architecture"], json.dumps(c.get("arch_kwargs") or {}, sort_keys=True), kind)
            assert c[kind] == built, (c["name"], kind)
    assert [c["name"] for c in cards if c["attention"]] == ["vit-fashion-mnist"]
    assert service._weight_names_in(__file__, 0, "batchnorm") is None  # not safetensors: the model is built instead


@pytest.mark.slow  # two page runs: over 10 s on two cores
def test_the_library_names_are_listed_only_where_your_model_is_open(cache):
    """Listing torchvision's and timm's names imports both (seconds beside a page's first run): the Overview
    lists the zoo's names in the (hidden) Your model tab; opened, the tab searches every library's names."""
    at = _app(prune_epochs="0")
    assert not any(o.startswith(("timm:", "torchvision:")) for o in at.selectbox(key="byo_arch").options)
    at = _app(prune_epochs="0", tab="Your model")
    assert "timm:resnet18" in at.selectbox(key="byo_arch").options
