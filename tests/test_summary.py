"""The one-page summary a stakeholder gets: the big numbers, the curve, the recipe, as PNG and HTML."""

import pandas as pd

from explorer.app import summary

RESULT = {"key": "k1", "dataset": "digits", "test_samples": 359, "recipe": {"model": "digits_cnn", "steps": [
    {"kind": "prune", "sparsity": 0.7, "granularity": "unstructured", "schedule": "oneshot", "finetune_epochs": 2}]},
    "accuracy": {"top1": 97.49}, "baseline_accuracy": {"top1": 98.33}, "accuracy_delta": -0.84,
    "vs_baseline": {"delta_ci": [-2.98, 1.15], "significant": False},
    "size": {"packed_bytes": 49_800, "file_bytes": 162_432}, "baseline_size": {"file_bytes": 162_432},
    "reduction_factor": {"vs_fp32_file": {"packed_bytes": 3.26}},
    "speedup": {"onnxruntime_cpu_int8": {"b256": {"ratio": 7.6, "ci": [4.7, 10.3], "status": "measured"}}},
    "hardware": {"cpu": "AMD EPYC"}, "latency_threads": 1}
FRAME = pd.DataFrame([{"status": "ok", "key": "k1", "label": "prune 70%", "sparsity_requested": 0.7, "top1": 97.49,
                       "top1_lo": 95.3, "top1_hi": 98.7, "accuracy_delta": -0.84, "scheme": "fp32 (no quantisation)",
                       "clusters": 0, "packed_bytes": 49_800}])


def test_the_big_numbers_say_what_a_stakeholder_asks():
    (size, speed, acc) = summary.big_numbers(RESULT)
    assert size[:2] == ("smaller", "3.3x") and speed[:2] == ("faster", "7.6x")
    assert acc[1] == "-0.84 pts" and "within noise" in acc[2] and "-2.98 to +1.15" in acc[2]
    flat = {"ratio": 1.02, "ci": [0.9, 1.1], "status": "measured"}
    slow = {**RESULT, "speedup": {"onnxruntime_cpu_int8": {"b256": flat}}}
    assert summary.big_numbers(slow)[1][:2] == ("speed-up", "within noise")  # not "no change / faster"


def test_png_and_html_are_one_page_each():
    png = summary.png(RESULT, FRAME, "digits_cnn-digits")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    page = summary.page(RESULT, FRAME, "digits_cnn-digits")
    assert page.startswith("<!doctype html>") and "3.3x" in page and "7.6x" in page and "plotly" in page
    assert "prune 70% of the single weights" in page


LONG = {**RESULT, "recipe": {"model": "digits_cnn", "steps": [
    {"kind": "prune", "sparsity": 0.7, "granularity": "block", "schedule": "gradual", "finetune_epochs": 12},
    {"kind": "cluster", "clusters": 16, "finetune": True},
    {"kind": "quantize", "bits": 4, "mode": "qat", "per_channel": True, "symmetric": False, "qat_epochs": 5}]}}
FAMILIES = pd.DataFrame([
    {"status": "ok", "key": f"k{i}", "label": f"run {i}", "sparsity_requested": sp, "top1": top1, "accuracy_delta":
     top1 - 98.33, "scheme": "fp32 (no quantisation)", "clusters": k, "packed_bytes": 40_000}
    for i, (sp, k, top1) in enumerate([(0.0, 0, 98.3), (0.5, 0, 98.0), (0.9, 0, 96.0), (0.5, 16, 66.0),
                                       (0.9, 16, 60.0)])])


def test_every_text_of_the_png_lies_inside_the_canvas_even_with_a_long_title():
    fig = summary.figure(LONG, FAMILIES, "a-long-model-name-of-someone-s-own-$price$-" * 2)
    fig.canvas.draw()  # as savefig does: axis labels take their places
    renderer = fig.canvas.get_renderer()
    # everything drawn (matplotlib's own measure, the one bbox_inches="tight" uses), in inches
    drawn = fig.get_tightbbox(renderer)
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= 16.01 and drawn.y1 <= 9.01, drawn
    title = next(t for t in fig.texts if "a-long-model-name" in t.get_text())
    box = title.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, box
    assert "$price$" in title.get_text().replace("\\$", "$")  # a dollar sign is text, not mathematical notation


def test_the_png_draws_one_line_per_configuration_family():
    fig = summary.figure(RESULT, FAMILIES, "digits_cnn-digits")
    curve = next(ax for ax in fig.axes if ax.get_title(loc="left") == "Sparsity vs accuracy")
    lines = {c.get_label(): c.lines[0].get_xdata().tolist() for c in curve.containers}
    # clustered and unclustered runs are never joined into one line (a fake cliff under the star)
    assert lines == {"fp32 (no quantisation)": [0.0, 0.5, 0.9],
                     "fp32 (no quantisation), 16 shared values per layer": [0.5, 0.9]}, lines


def test_the_html_curve_leaves_room_for_its_tick_labels_and_axis_titles():
    import json
    import re

    page = summary.page(RESULT, FAMILIES, "digits_cnn-digits")
    layout = json.loads(re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"responsive"',
                                  page, re.S).group(2))
    assert layout["yaxis"]["automargin"] and layout["xaxis"]["automargin"]
    assert layout["margin"]["l"] >= 60 and layout["yaxis"]["title"]["standoff"] > 0
    assert "the baseline&#x27;s fp32 checkpoint file (digits_cnn-digits.safetensors)" in page


# issue 35: pruning 50% with 2 fine-tune epochs on an under-trained model, against the baseline and its control
TUNED = {**RESULT, "accuracy": {"top1": 86.57}, "baseline_accuracy": {"top1": 81.59}, "accuracy_delta": 4.98,
         "vs_baseline": {"delta_ci": [4.4, 5.6], "significant": True},
         "vs_control": {"delta_ci": [-0.9, 0.1], "significant": False, "p_value": 0.12, "delta": -0.4, "top1": 86.97,
                        "top1_ci": [86.3, 87.6], "budget": "2 epochs", "epochs": 2, "key": "c" * 20}}


def test_the_slides_accuracy_figure_is_against_the_same_training_where_the_recipe_fine_tunes():
    acc = summary.big_numbers(TUNED)[-1]
    assert acc[:2] == ("accuracy change against the same training", "-0.40 pts")
    assert "baseline fine-tuned the same 2 epochs without compression" in acc[2] and "-0.90 to +0.10" in acc[2]
    assert "within noise" in acc[2] and "against the untouched baseline +4.98 pts" in acc[2]
    assert summary.big_numbers(RESULT)[-1][:2] == ("accuracy change", "-0.84 pts")  # no control: as before
    fig = summary.figure(TUNED, FRAME, "mobilenet")
    labels = [t.get_text() for ax in fig.axes for t in (ax.get_legend().get_texts() if ax.get_legend() else [])]
    assert "baseline fine-tuned 2 epochs, no compression: 86.97%" in labels
    assert "baseline fine-tuned 2 epochs, no compression: 86.97%" in summary.page(TUNED, FRAME, "mobilenet")
