"""Sizes of what ships: the user says once what they deploy (the packed file, ONNX fp32 or ONNX int8), and the
tiles, the Pareto chart, the sweet spot and the summary use that file's bytes, against the baseline's own file of
that kind. A pruned model's dense ONNX file is no smaller, and the page says so instead of '2.1x smaller'."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from explorer.app import summary, tables
from explorer.core.markup import unmd
from tests.conftest import ROOT, open_tab, settle


def _result(**size) -> dict:
    base = {"file_bytes": 1000, "packed_bytes": 900, "onnx_bytes": 1100, "onnx_int8_bytes": 400}
    return {"recipe": {"model": "m", "dataset": "d", "steps": [{"kind": "prune"}]}, "sparsity": 0.5,
            "params": 100, "baseline_params": 100, "size": {**base, **size}, "baseline_size": base,
            "reduction_factor": {"vs_fp32_file": {}, "same_kind": {}}}


def test_what_ships_is_measured_against_the_baselines_file_of_its_kind():
    r = _result(packed_bytes=450, onnx_bytes=1100, onnx_int8_bytes=399)
    packed = tables.shipped(r, "packed")
    assert packed["bytes"] == 450 and packed["times_smaller"] == pytest.approx(1000 / 450) and not packed["no_smaller"]
    assert "fp32 checkpoint" in packed["against"]
    onnx = tables.shipped(r, "onnx")
    assert onnx["bytes"] == 1100 and onnx["times_smaller"] == pytest.approx(1.0) and onnx["no_smaller"]
    assert tables.shipped(r, "onnx_int8")["no_smaller"]  # 1 byte smaller is not smaller
    baseline = {**r, "recipe": {"steps": []}}
    assert not tables.shipped(baseline, "onnx")["no_smaller"]  # the baseline itself is no compression claim
    assert tables.ship_choices({"format": "onnx"}) == ["onnx", "onnx_int8"]
    box = summary.big_numbers({**r, "accuracy": {"top1": 90.0}, "accuracy_delta": 0.0}, "onnx")[0]
    assert box[1] == "no smaller" and "ONNX fp32 file" in box[2]


def test_with_onnx_runtime_as_the_target_the_sweet_spot_sizes_are_the_onnx_files_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for k, v in {"baseline": "digits_cnn-digits", "sparsity": "0.5", "prune_epochs": "0",
                 "ship": "onnx_int8"}.items():
        at.query_params[k] = v
    settle(at.run(), timeout=600)
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.sidebar.selectbox(key="ship").value == "onnx_int8"
    tile = next(m for m in at.metric if m.label.endswith(" size"))
    assert tile.label == "ONNX int8 size" and tile.delta == "no smaller"  # pruned single weights: a dense file
    assert any("which you deploy, is no smaller than the baseline's" in unmd(w.value) for w in at.warning)
    open_tab(at, "Sweet spot")
    settle(at.selectbox(key="ss_confidence").set_value("point estimates only").run())  # 359 images: no 95% pick
    tables_shown = [d.value for d in at.dataframe if "recommended" in d.value.columns]
    assert tables_shown, [unmd(w.value)[:200] for w in at.warning]
    table = tables_shown[0]
    size_row = table[table["figure"].str.startswith("size: ")].iloc[0]
    assert size_row["figure"] == "size: ONNX int8"
    from explorer.app import service

    frame = service.frame("digits_cnn", "digits")
    assert size_row["recommended"] in {tables.fmt_bytes(v) for v in frame["onnx_int8_bytes"]}  # ONNX int8 bytes
    assert size_row["recommended"] not in {tables.fmt_bytes(v) for v in frame["packed_bytes"]}
    assert any("what you deploy" in unmd(c.value) for c in at.caption)
