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
    assert summary.big_numbers(slow)[1][1] == "no change"


def test_png_and_html_are_one_page_each():
    png = summary.png(RESULT, FRAME, "digits_cnn-digits")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    page = summary.page(RESULT, FRAME, "digits_cnn-digits")
    assert page.startswith("<!doctype html>") and "3.3x" in page and "7.6x" in page and "plotly" in page
    assert "prune 70% of the single weights" in page
