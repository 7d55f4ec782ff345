"""The charts carry the figures of the runs they draw: checked on a hand-made table whose answer is known."""

import json

import pandas as pd
import pytest

from explorer.app import plots


def _frame() -> pd.DataFrame:
    rows = []
    for i, (sp, bits, top1, packed) in enumerate([(0.5, 32, 98.0, 80_000), (0.9, 32, 96.0, 30_000),
                                                   (0.0, 8, 98.2, 45_000), (0.5, 8, 97.5, 25_000),
                                                   (0.9, 8, 90.0, 12_000), (0.5, 4, 95.0, 20_000)]):
        rows.append({"status": "ok", "key": f"k{i}", "label": f"run {i}", "sparsity_requested": sp, "bits": bits,
                     "clusters": 0, "top1": top1, "accuracy_delta": top1 - 98.33, "packed_bytes": packed,
                     "recipe_json": json.dumps({"steps": [{"kind": "prune", "sparsity": sp}]})})
    rows.append({"status": "failed", "key": "bad", "label": "failed run"})
    return pd.DataFrame(rows)


def test_sparsity_accuracy_draws_one_line_per_bit_width_the_current_run_and_the_baseline():
    fig = plots.sparsity_accuracy(_frame(), current_key="k3")
    lines = {t.name: t for t in fig.data if t.name != "current"}
    assert set(lines) == {"fp32", "8-bit", "4-bit"}
    assert list(lines["8-bit"].x) == [0.0, 0.5, 0.9] and list(lines["8-bit"].y) == [98.2, 97.5, 90.0]
    (cur,) = [t for t in fig.data if t.name == "current"]
    assert (cur.x[0], cur.y[0]) == (0.5, 97.5)
    (base,) = fig.layout.shapes
    assert base.y0 == base.y1 == pytest.approx(98.33)
    assert "failed" not in json.dumps([list(t.customdata[:, 0]) for t in lines.values()])


def test_pareto_joins_exactly_the_non_dominated_runs():
    fig = plots.pareto(_frame(), "packed_bytes", "packed bytes", current_key="k0")
    runs, front, cur = fig.data
    assert len(runs.x) == 6
    # by size: 12k (90%) < 20k (95%) < 25k (97.5%) < 45k (98.2%); 30k and 80k are dominated
    assert list(front.x) == [12_000, 20_000, 25_000, 45_000] and list(front.y) == [90.0, 95.0, 97.5, 98.2]
    assert (cur.x[0], cur.y[0]) == (80_000, 98.0)


def test_empty_and_failed_only_tables_give_an_empty_chart_not_an_error():
    failed = _frame().iloc[-1:]
    for df in (pd.DataFrame(), failed):
        assert "no runs yet" in plots.sparsity_accuracy(df).layout.title.text
        assert "no runs yet" in plots.pareto(df, "packed_bytes", "packed bytes").layout.title.text


def test_size_and_latency_bars_show_the_run_result_figures():
    result = {
        "size": {"file_bytes": 160_000, "gzip_bytes": 80_000, "packed_bytes": 16_000, "onnx_int8_bytes": None,
                 "state_dict_bytes": 159_000},
        "baseline_size": {"file_bytes": 160_000},
        "latency": {"torch_cpu_fp32": {"b1": {"available": True, "median_ms": 0.1, "p90_ms": 0.12, "runs": 50},
                                       "b256": {"available": True, "median_ms": 6.0, "p90_ms": 6.5, "runs": 9}},
                    "torch_cuda_fp32": {"b1": {"available": False, "reason": "no CUDA device"}}},
    }
    (bars,) = plots.size_bars(result).data
    assert list(bars.x) == ["checkpoint (fp32/fp16 file)", "gzip of checkpoint", "packed .xpk"]
    assert list(bars.y) == [160_000, 80_000, 16_000] and list(bars.text) == ["1.0x", "2.0x", "10.0x"]
    fig = plots.latency_bars(result)
    assert [t.name for t in fig.data] == ["batch 1", "batch 256"]  # the CUDA engine that cannot run is left out
    b256 = fig.data[1]
    assert list(b256.x) == ["PyTorch eager CPU fp32"] and list(b256.y) == [6.0]
    assert list(b256.error_y.array) == pytest.approx([0.5])
    assert "no engine could run" in plots.latency_bars({"latency": {}}).layout.title.text


def _with_intervals() -> pd.DataFrame:
    df = _frame().iloc[:-1].copy()
    df["top1_lo"], df["top1_hi"] = df["top1"] - 1.5, (df["top1"] + 1.0).clip(upper=100)
    df["significant"] = [False, True, False, False, True, True]
    return df


def test_accuracy_charts_carry_error_bars_open_markers_and_an_axis_that_spans_them():
    df = _with_intervals()
    fig = plots.sparsity_accuracy(df)
    fp32 = next(t for t in fig.data if t.name == "fp32")
    assert list(fp32.error_y.array) == pytest.approx([1.0, 1.0]) and list(fp32.error_y.arrayminus) == [1.5, 1.5]
    assert list(fp32.marker.symbol) == ["circle-open", "circle"]  # 0.5 not significant, 0.9 significant
    lo, hi = fig.layout.yaxis.range
    assert lo <= df["top1_lo"].min() and hi >= df["top1_hi"].max()
    assert any("within noise" in (t.name or "") for t in fig.data)
    runs = plots.pareto(df, "packed_bytes", "packed bytes").data[0]
    assert runs.error_y.array is not None and list(runs.marker.symbol).count("circle-open") == 3
    # a difference far smaller than its interval does not fill the axis
    tight = df.assign(top1=[97.5, 97.6, 97.55, 97.7, 97.52, 97.65])
    tight = tight.assign(top1_lo=tight.top1 - 1.6, top1_hi=tight.top1 + 1.4)
    lo, hi = plots.sparsity_accuracy(tight).layout.yaxis.range
    assert hi - lo > 3.0


def test_latency_whiskers_are_the_interval_of_the_median_when_it_is_there():
    result = {"latency": {"torch_cpu_fp32": {"b1": {"available": True, "median_ms": 0.1, "p90_ms": 0.12, "runs": 50,
                                                    "ci_ms": [0.09, 0.105]}}}}
    bar = plots.latency_bars(result).data[0]
    assert list(bar.error_y.array) == pytest.approx([0.005]) and list(bar.error_y.arrayminus) == pytest.approx([0.01])
    assert "95% interval" in plots.latency_bars(result).layout.yaxis.title.text


def test_series_are_named_by_scheme_and_keep_their_colour():
    df = _frame().iloc[:-1].copy()
    df["scheme"] = ["fp32 (no quantisation)", "fp32 (no quantisation)", "8-bit weights and activations (static int8)",
                    "8-bit weights and activations (static int8)", "8-bit weights and activations (static int8)",
                    "4-bit weights only (post-training)"]
    df["words"] = [f"configuration {i}" for i in range(6)]
    fig = plots.sparsity_accuracy(df)
    names = {t.name: t for t in fig.data if t.name not in ("current",)}
    assert "8-bit weights and activations (static int8)" in names and "4-bit weights only (post-training)" in names
    again = plots.sparsity_accuracy(df.iloc[::-1])  # another order, another rerun: the same colours
    for t in again.data:
        if t.name in names:
            assert (t.line.color, t.line.dash) == (names[t.name].line.color, names[t.name].line.dash)
    assert "configuration" in fig.data[0].customdata[0][1] and "KiB" in fig.data[0].customdata[0][2]


def test_every_family_of_a_chart_is_told_apart():
    """A hash of the name gave '4-bit weights only' and '8-bit ..., 16 shared values' one brown, and both fp16
    lines one pink: now each scheme has its own colour and each cluster count of it its own dash."""
    names = ["4-bit weights only (post-training)", "8-bit weights and activations (static int8)",
             "8-bit weights and activations (static int8), 16 shared values per layer",
             "8-bit weights and activations (static int8), 8 shared values per layer",
             "fp32 (no quantisation), 16 shared values per layer", "fp32 (no quantisation), 2 shared values per layer",
             "16-bit floats (fp16)", "16-bit floats (fp16), 16 shared values per layer", "fp32 (no quantisation)"]
    style = plots.series_styles(names)
    assert len(set(style.values())) == len(names)
    colour = {n.split(", ")[0]: style[n][0] for n in names}
    assert len(set(colour.values())) == 4  # one per scheme: its clustered lines share it, dashed
    assert style["fp32 (no quantisation)"] == (plots.PALETTE[0], "solid")
    assert style["fp32 (no quantisation), 2 shared values per layer"][0] == plots.PALETTE[0]
    assert plots.series_styles(reversed(names)) == style


def test_pareto_marks_the_baseline():
    df = _frame().iloc[:-1].copy()
    df["technique"] = ["prune"] * 2 + ["baseline"] + ["prune"] * 3
    fig = plots.pareto(df, "packed_bytes", "packed bytes")
    (base,) = [t for t in fig.data if t.name == "baseline"]
    assert (base.x[0], base.y[0]) == (45_000, 98.2)


def test_a_time_pareto_says_how_many_runs_it_leaves_out():
    """With every timing disturbed it showed the baseline alone, and its legend listed runs that were not there."""
    df = _frame().iloc[:-1].copy()
    df["reltime"] = [None, None, 1.0, 0.5, None, None]  # two timed, four not (yet)
    title = plots.pareto(df, "reltime", "time").layout.title.text
    assert "4 runs not shown: not timed yet, or their timing was disturbed" in title
    assert "not shown" not in plots.pareto(df, "packed_bytes", "bytes").layout.title.text  # sizes are always there


def test_one_baseline_file_size_on_the_size_chart_and_in_the_table():
    from explorer.app.ui.views import comparison_table

    result = {"size": {"file_bytes": 162_384, "packed_bytes": 10_000}, "baseline_size": {"file_bytes": 162_432},
              "accuracy": {"top1": 97.0, "top3": 99.0, "top5": 100.0},
              "baseline_accuracy": {"top1": 98.0, "top3": 99.5, "top5": 100.0}, "params": 10, "baseline_params": 10,
              "nonzero_params": 5, "macs": 1}
    own_run = {"size": {"file_bytes": 162_384, "packed_bytes": 60_000}}  # the baseline's own run re-saves it
    table = comparison_table(result, own_run).set_index("figure")
    chart_line = plots.size_bars(result).layout.shapes[0].y0
    assert table.loc[table.index.str.startswith("checkpoint file"), "baseline"].iloc[0] == chart_line == 162_432
    assert table.loc["packed .xpk (bytes)", "baseline"] == 60_000


def test_per_class_change_draws_each_class_interval_and_greys_what_is_within_noise():
    import numpy as np

    from explorer.app.metrics import forgets

    y = np.repeat([0, 1], 200)
    base = y.copy()
    run = y.copy()
    run[:60] = 1  # class a: 60 of 200 lost, far outside noise
    run[200:201] = 0  # class b: one of 200 lost, within noise
    f = forgets(y, base, run, ["a", "b"])
    bar = plots.per_class_change(f.per_class).data[0]
    by_class = {label.split(":")[0]: c for label, c in zip(bar.y, bar.marker.color, strict=True)}
    assert by_class["b"] == "#b0b0b0" and by_class["a"] == "#d62728"
    d = f.per_class.sort_values("change")
    assert list(bar.error_x.array) == pytest.approx(list(d["change_hi"] - d["change"]))
    # the figures are in each row's label, not printed at the bar's end where its whisker runs over them
    assert not bar.text and any(t.startswith("b: ") and "within noise" in t for t in bar.y)


def test_the_flipped_images_title_stands_above_the_first_rows_captions():
    import numpy as np

    fig = plots.flipped_images(np.zeros((3, 1, 8, 8)), ["a<br>was a, now b"] * 3, "Lost: the baseline was right")
    # the captions are two lines above the first row of images, which starts at the plot area's top
    assert fig.layout.margin.t >= 90 and fig.layout.title.yanchor == "top"


def test_counts_in_page_text_take_the_right_number_and_thousands_separators():
    from explorer.core.words import count

    assert (count(1, "run"), count(3, "run"), count(0, "run")) == ("1 run", "3 runs", "0 runs")
    assert count(10_000, "test image") == "10,000 test images" and count(2, "entry", "entries") == "2 entries"
    assert count("?", "thread") == "? threads"  # an unknown count still reads as a phrase


def test_the_same_budget_controls_are_reference_lines_with_their_intervals():
    controls = pd.DataFrame([{"status": "ok", "key": "c1", "top1": 99.1, "top1_lo": 98.6, "top1_hi": 99.5,
                              "control_budget": "2 epochs"}])
    fig = plots.sparsity_accuracy(_frame(), current_key="k3", controls=controls)
    lines = [s for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1 == pytest.approx(99.1)]
    bands = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(lines) == 1 and len(bands) == 1 and (bands[0].y0, bands[0].y1) == (98.6, 99.5)
    assert any(a.text == "baseline fine-tuned 2 epochs, no compression: 99.10%" for a in fig.layout.annotations)
    assert fig.layout.yaxis.range[1] >= 99.5  # the axis spans the control's interval
    assert not [t for t in fig.data if "c1" in json.dumps(list(t.customdata[:, 0]) if t.customdata is not None
                                                         else [])]  # never a point of a curve


def test_series_with_the_very_same_points_are_drawn_once_under_both_names():
    """The legend listed series whose points were hidden under another's (fp32 and fp16 of a small model)."""
    import pandas as pd

    from explorer.app import plots

    rows = [{"key": f"{s}{b}", "label": f"{s} {b}", "status": "ok", "sparsity_requested": sp, "top1": t,
             "scheme": s, "bits": b, "clusters": 0}
            for s, b in (("none (fp32)", 32), ("16-bit floats (fp16)", 16), ("4-bit weights only", 4))
            for sp, t in ((0.0, 98.0), (0.5, 97.0 if b != 4 else 95.0))]
    fig = plots.sparsity_accuracy(pd.DataFrame(rows))
    names = [t.name for t in fig.data if t.name not in ("current",)]
    assert "none (fp32) = 16-bit floats (fp16) (the same points)" in names or \
        "16-bit floats (fp16) = none (fp32) (the same points)" in names
    assert "4-bit weights only" in names and len([n for n in names if "fp32" in n]) == 1
