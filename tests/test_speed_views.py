"""One run read through every view gives the same speed-up (issue 22): the tile, the comparison table, the
sweet spot, the sweep CSV, the report and the one-page summary all read run.result.speed. A disturbed timing
shows no number anywhere, and the baseline is 1.0 by construction."""

import io
import math

import pandas as pd
import pytest

from explorer.app import report, summary
from explorer.app.metrics import sweet_spot
from explorer.app.ui import panels, views
from explorer.app.ui.timing import busy_words, timing_rows
from explorer.core.engines import B256, ORT_CPU_FP32, ORT_CPU_INT8, TORCH_CPU, lat_col, speedup_col
from explorer.run.result import DISTURBED, results_frame, speed

LAT = {"available": True, "median_ms": 10.0, "p90_ms": 11.0, "ci_ms": [9.8, 10.2], "runs": 40,
       "round_ms": [10.0] * 10}


def _lat(ms: float) -> dict:
    return {**LAT, "median_ms": ms, "p90_ms": ms * 1.1, "ci_ms": [ms * 0.98, ms * 1.02]}


def _result(key: str, steps: list, speedups: dict, gain: dict | None = None, disturbed=()) -> dict:
    base_ms = {TORCH_CPU: 10.0, ORT_CPU_FP32: 4.0, ORT_CPU_INT8: 2.0}
    run_ms = {e: base_ms[e] / (speedups[e]["ratio"] if speedups[e].get("ratio") else 1) for e in base_ms}
    return {
        "schema": 5, "status": "ok", "key": key, "label": key, "model": "digits_cnn", "dataset": "digits",
        "recipe": {"model": "digits_cnn", "dataset": "digits", "seed": 0, "steps": steps}, "test_samples": 359,
        "accuracy": {"top1": 98.0, "top3": 99.5, "top5": 99.9},
        "baseline_accuracy": {"top1": 98.3, "top3": 99.6, "top5": 100.0},
        "accuracy_delta": -0.3, "accuracy_ci": {"top1": [96.0, 99.0]},
        "vs_baseline": {"both_right": 350, "baseline_only": 3, "run_only": 2, "both_wrong": 4,
                        "delta_ci": [-1.5, 0.9], "p_value": 1.0, "significant": False},
        "sparsity": 0.5 if steps else 0.0, "params": 100, "baseline_params": 100, "nonzero_params": 50, "macs": 1000,
        "size": {"file_bytes": 400, "gzip_bytes": 300, "zstd_bytes": 290, "packed_bytes": 200, "onnx_bytes": 400,
                 "onnx_int8_bytes": 120},
        "baseline_size": {"file_bytes": 400},
        "reduction_factor": {"vs_fp32_file": {"packed_bytes": 2.0, "gzip_bytes": 1.33}, "same_kind": {}},
        "onnx": {"fp32": {"available": True}, "int8": {"available": True}},
        "latency": {e: {B256: _lat(ms)} for e, ms in run_ms.items()},
        "baseline_latency": {e: {B256: _lat(ms)} for e, ms in base_ms.items()},
        "speedup": {e: {B256: v} for e, v in speedups.items()},
        "deployment_gain": {e: {B256: v} for e, v in (gain or {}).items()},
        "timing_quality": {"disturbed": list(disturbed), "retimes": 2 if disturbed else 0, "sessions": [],
                           "figures": {}, "load_average": {"before": [3.5, 2, 1], "after": [3.9, 2, 1]}},
        "hardware": {"cpu": "test CPU", "logical_cores": 2}, "latency_threads": 1, "layers": [], "notes": []}


def measured(ratio, lo, hi):
    return {"ratio": ratio, "ci": [lo, hi], "rounds": 10, "status": "measured"}


BASELINE = {"ratio": 1.0, "ci": [1.0, 1.0], "rounds": 0, "status": "baseline"}
BASE = _result("base", [], {e: BASELINE for e in (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8)},
               gain={ORT_CPU_INT8: measured(5.0, 4.8, 5.2)})
STEPS = [{"kind": "prune", "sparsity": 0.5, "granularity": "unstructured", "finetune_epochs": 2}]
RUN = _result("run", STEPS, {TORCH_CPU: measured(1.01, 0.97, 1.04), ORT_CPU_FP32: measured(1.0, 0.98, 1.03),
                             ORT_CPU_INT8: measured(3.21, 3.1, 3.3)}, gain={ORT_CPU_INT8: measured(16.1, 15.5, 16.6)})


def _csv_row(frame: pd.DataFrame, key: str) -> pd.Series:
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False)))
    return back[back["key"] == key].iloc[0]


def test_one_run_shows_the_same_speedup_in_every_view():
    frame = results_frame([BASE, RUN])
    sp = speed(RUN, ORT_CPU_INT8, B256)
    assert (sp.state, sp.ratio, sp.text) == ("faster", 3.21, "3.21x faster")
    # the tile
    assert views._speedup(RUN, ORT_CPU_INT8, B256) == ("3.21x faster", "green", "up")
    # a slower run is red with its arrow down: Streamlit's own reading of "1.19x slower" was a green gain
    slow = _result("slow", STEPS, {TORCH_CPU: measured(1 / 1.19, 0.8, 0.86), ORT_CPU_FP32: measured(1.0, 0.98, 1.03),
                                   ORT_CPU_INT8: measured(1.0, 0.98, 1.03)})
    assert views._speedup(slow, TORCH_CPU, B256) == ("1.19x slower", "red", "down")
    # the comparison table: the same words, the baseline from the same rounds, and the change agreeing in sign
    table = views.comparison_table(RUN, BASE).set_index("figure")
    row = table.loc["latency, ONNX Runtime, int8, batch of 256 (median ms)"]
    assert row["against the baseline"] == "3.21x faster" and row["baseline"] == 2.0 and row["change"] < 0
    assert table.loc["latency, PyTorch on the CPU, fp32, batch of 256 (median ms)", "against the baseline"] == \
        "within noise"
    # the sweet spot, picking by the like-for-like speed-up
    pick = sweet_spot(frame, objective="fastest", latency_col=lat_col(ORT_CPU_INT8, B256))
    assert pick.row["key"] == "run" and pick.row[speedup_col(ORT_CPU_INT8, B256)] == 3.21
    assert panels.speed_cell(pick.row, ORT_CPU_INT8, B256) == "3.21x (3.10x to 3.30x)"
    assert "nothing here is measurably faster" not in pick.reason
    # the sweep CSV
    assert _csv_row(frame, "run")[speedup_col(ORT_CPU_INT8, B256)] == 3.21
    # the report
    html = report.render(frame)
    assert "3.21" in html[html.index("<h2>All runs</h2>"):]
    # the one-page summary (one decimal)
    what, value, under = summary.big_numbers(RUN)[1]
    assert (what, value) == ("faster", "3.2x") and "baseline's own ONNX Runtime int8" in under
    assert "16.10x faster" in under  # the deployment gain, separately labelled
    assert "16.1" not in views._speedup(RUN, ORT_CPU_INT8, B256)[0]  # never the tile's arrow


def test_the_baseline_row_is_exactly_one_everywhere():
    frame = results_frame([BASE, RUN])
    base_row = frame[frame["key"] == "base"].iloc[0]
    assert base_row[speedup_col(ORT_CPU_INT8, B256)] == 1.0
    assert _csv_row(frame, "base")[speedup_col(ORT_CPU_INT8, B256)] == 1.0
    assert panels.speed_cell(base_row, ORT_CPU_INT8, B256) == "1.00x (the baseline itself)"
    assert views._speedup(BASE, ORT_CPU_INT8, B256) == ("the baseline itself (1.00x)", "off", "off")
    assert summary.big_numbers(BASE)[1][1] == "1.0x"


def test_a_disturbed_timing_shows_no_number_in_any_view():
    bad = {"ratio": 43.85, "ci": [4.35, 183.76], "rounds": 10, "status": "disturbed"}
    run = _result("noisy", STEPS, {TORCH_CPU: measured(1.0, 0.9, 1.1), ORT_CPU_FP32: measured(1.0, 0.95, 1.05),
                                   ORT_CPU_INT8: bad}, disturbed=["speed-up onnxruntime_cpu_int8 b256"])
    frame = results_frame([BASE, run])
    assert views._speedup(run, ORT_CPU_INT8, B256) == (DISTURBED, "off", "off")
    row = views.comparison_table(run, BASE).set_index("figure").loc[
        "latency, ONNX Runtime, int8, batch of 256 (median ms)"]
    assert row["against the baseline"] == DISTURBED and math.isnan(row["change"])
    r = frame[frame["key"] == "noisy"].iloc[0]
    assert pd.isna(r[speedup_col(ORT_CPU_INT8, B256)]) and panels.speed_cell(r, ORT_CPU_INT8, B256) == DISTURBED
    assert pd.isna(_csv_row(frame, "noisy")[speedup_col(ORT_CPU_INT8, B256)])
    html = report.render(frame)
    table = html[html.index("<h2>All runs</h2>"):]  # (plotly.js, embedded above, holds every digit pattern)
    assert "43.8" not in table and "183" not in table and "disturbed" in table
    what, value, under = summary.big_numbers(run)[1]
    assert (what, value) == ("speed-up", "not timed yet") and "disturbed" not in value and "quieter" in under
    assert "too busy" in busy_words(run) and "3.50" in busy_words(run)
    assert views.fastest_on_cpu(run) is None


def test_fastest_says_when_nothing_is_measurably_faster():
    flat = _result("flat", STEPS, {e: measured(1.02, 0.95, 1.1) for e in (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8)})
    pick = sweet_spot(results_frame([BASE, flat]), objective="fastest", latency_col=lat_col(ORT_CPU_INT8, B256))
    assert "nothing here is measurably faster than the baseline" in pick.reason


def test_the_int8_download_is_called_fastest_only_when_measured_fastest():
    assert views.fastest_on_cpu(RUN) == ORT_CPU_INT8  # 0.62 ms beside 4 and 9.9 ms, intervals apart
    slow_int8 = {**RUN, "latency": {**RUN["latency"], ORT_CPU_INT8: {B256: _lat(30.0)}}}
    assert views.fastest_on_cpu(slow_int8) == ORT_CPU_FP32


def test_the_timing_checks_table_reads_in_words():
    check = {"ratio": 3.21, "ci": [3.1, 3.3], "rounds": 10, "ratio_of_medians": 3.2, "spread": 1.06,
             "max_spread": 1.3, "reference_deviation": 0.04, "failed": [], "accepted": True, "session": 0}
    run = {**RUN, "timing_quality": {**RUN["timing_quality"], "figures": {"speedup": {ORT_CPU_INT8: {B256: check}}},
                                     "sessions": [{"rounds_kept": 10, "rounds_dropped": 2, "dropped": [3, 7],
                                                   "cpu_share": [0.99] * 3 + [0.5] + [0.98] * 3 + [0.6] + [0.97] * 4}]}}
    (row,) = timing_rows(run).to_dict("records")
    assert row["shown as"] == "3.21x faster" and row["rounds dropped (no CPU)"] == 2
    assert row["lowest CPU share in a kept round"] == pytest.approx(0.97) and row["checks failed"] == "none"
    assert row["baseline vs its reference time"] == "+4%" and row["other cores busy with other work"] is None
    waived = {**check, "reference_deviation": 0.4, "reference_waived": True}
    beside = {**run, "timing_quality": {**run["timing_quality"], "figures": {"speedup": {ORT_CPU_INT8: {B256: waived}}},
                                        "sessions": [{**run["timing_quality"]["sessions"][0], "others_busy": 0.03}]}}
    (row,) = timing_rows(beside).to_dict("records")
    assert row["baseline vs its reference time"].startswith("+40% (nothing else ran beside it")
    assert row["other cores busy with other work"] == "3%"
    from explorer.app.ui.timing import load_words

    assert load_words(beside).startswith("load average 3.50 before timing and 3.90 after")
    assert load_words(beside).endswith("other work kept the other cores busy for 3% of the timing rounds at most")
    sessions = [{**beside["timing_quality"]["sessions"][0], "stolen": 0.12}]
    stolen = {**beside, "timing_quality": {**beside["timing_quality"], "sessions": sessions}}
    assert "other virtual machines on the same host took up to 12% of the CPU time" in load_words(stolen)


def _schema4(key: str, steps: list, ratio: float, lo: float, hi: float) -> dict:
    """A run as the cache held it before speed-ups checked themselves (schema 4): ratios against PyTorch with no
    status, no timing record, no in-round baseline and no deployment gain."""
    r = _result(key, steps, {e: {"ratio": ratio, "ci": [lo, hi], "rounds": 10}
                             for e in (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8)})
    for k in ("baseline_latency", "deployment_gain", "timing_quality"):
        r.pop(k)
    return {**r, "schema": 4}


def test_a_run_stored_before_the_checks_is_read_by_every_view_without_a_number(tmp_path):
    """Earlier versions' runs stay in the cache (under other keys) and the page lists them: every view reads
    them, and none shows their unchecked speed-up (43.85x, 1.31x for the baseline itself) as a number."""
    import json

    from explorer.app import plots
    from explorer.app.ui.timing import load_words
    from explorer.run.cache import RunCache
    from explorer.run.result import UNCHECKED

    old_base, old_run = _schema4("c" * 20, [], 1.31, 0.73, 7.44), _schema4("d" * 20, STEPS, 43.85, 4.35, 183.76)
    cache = RunCache(tmp_path / "cache")
    for r in (old_base, old_run):
        work = tmp_path / r["key"]
        work.mkdir()
        cache.commit(r["key"], work, r)
    listed = [cache.peek(k) for k in cache.keys()]
    assert sorted(r["key"] for r in listed) == sorted([old_base["key"], old_run["key"]])
    run = json.loads(json.dumps(cache.peek(old_run["key"])))
    base = cache.peek(old_base["key"])
    frame = results_frame(listed)
    assert frame[speedup_col(ORT_CPU_INT8, B256)].isna().all()
    assert speed(run, ORT_CPU_INT8, B256).text == UNCHECKED == views._speedup(run, ORT_CPU_INT8, B256)[0]
    table = views.comparison_table(run, base).set_index("figure")
    row = table.loc["latency, ONNX Runtime, int8, batch of 256 (median ms)"]
    assert row["against the baseline"] == UNCHECKED and math.isnan(row["change"])
    assert timing_rows(run).empty and busy_words(run) is None and load_words(run) == ""
    assert views.fastest_on_cpu(run) is None  # no download called fastest from unchecked timing
    assert summary.big_numbers(run)[1][1] == "not shown"
    html = report.render(frame)
    assert "43.8" not in html[html.index("<h2>All runs</h2>"):]
    pick = sweet_spot(frame, objective="fastest", latency_col=lat_col(ORT_CPU_INT8, B256))
    assert pick.row is None or pd.isna(pick.row.get(speedup_col(ORT_CPU_INT8, B256)))
    assert not any(ch.isdigit() for ch in panels.speed_cell(frame.iloc[1], ORT_CPU_INT8, B256))
    plots.latency_bars(run)
    plots.pareto(frame, "packed_bytes", "size", run["key"], short="size")
    summary.page(run, frame, "old run")


def test_the_paired_counts_are_said_in_the_right_number():
    one = {**RUN, "vs_baseline": {**RUN["vs_baseline"], "baseline_only": 1, "run_only": 2}}
    said = views.accuracy_sentence(one)
    assert "1 image it got right is now wrong, 2 images it got wrong are now right" in said


def test_a_download_is_named_by_its_configuration():
    """Every download was model.xpk, summary.png...: files from several configurations overwrote each other."""
    assert views.file_name(RUN, "model.int8.onnx") == "digits_cnn-digits-run-model.int8.onnx"
    named = {**RUN, "model": "timm:vit_tiny_patch16_224", "key": "3fa9c2d1e0aa11223344"}
    assert views.file_name(named, "summary.png") == "timm_vit_tiny_patch16_224-digits-3fa9c2d1-summary.png"


def test_the_overview_table_signs_its_changes(monkeypatch):
    """Changes showed no sign ('0.010') and latencies '-0.000'."""
    shown = []
    monkeypatch.setattr(views.st, "dataframe", lambda df, **kw: shown.append(df))
    views.show_table(pd.DataFrame({"figure": ["a", "b", "c", "d"], "baseline": [1.5, 2.5, 3.5, 4],
                                   "change": [0.01, -0.0001, -3.5, 2]}), key="t")
    assert list(shown[0]["change"]) == ["+0.010", "0", "-3.500", "+2"]
    assert list(shown[0]["baseline"]) == ["1.500", "2.500", "3.500", "4"]


def test_a_re_time_that_waits_for_a_quieter_machine_says_why(monkeypatch):
    """On a machine kept busy, 'timing disturbed: re-timing' stayed for forty minutes without a word of why."""
    from explorer.app import service
    from explorer.run import scheduler

    monkeypatch.setattr(scheduler, "cores", lambda: 2)
    monkeypatch.setattr(service.os, "getloadavg", lambda: (3.4, 3.0, 2.0))
    said = service.retime_wait_words()
    assert said and "load average is 3.4 now, and a re-time waits until it is below 2" in said
    monkeypatch.setattr(service.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert service.retime_wait_words() is None
