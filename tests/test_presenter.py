"""The presenter view and the Overview's one sentence: three tiles, one chart, one sentence for a demo, with the
statistics behind an expander (eight paragraphs of them stood before the comparison table)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from explorer.app.ui.views import plain_sentence
from explorer.core.markup import unmd
from tests.conftest import ROOT, settle


def _result(delta: float, significant: bool) -> dict:
    return {"accuracy": {"top1": 90.0 + delta}, "accuracy_delta": delta,
            "vs_baseline": {"significant": significant, "p_value": 0.01 if significant else 0.6}}


def test_the_sentence_says_no_more_than_its_measurements_hold():
    shipped = {"what": "the packed file (.xpk, loaded with explorer.unpack)", "times_smaller": 2.04,
               "no_smaller": False}
    quiet = plain_sentence(_result(-0.3, False), shipped)
    assert quiet.startswith("This configuration keeps the baseline's accuracy (top-1 89.70%, a change within noise)")
    assert "the packed file is 2.0x smaller" in quiet and "ONNX Runtime" not in quiet  # no timing: no speed claim
    lost = plain_sentence(_result(-4.25, True), {"what": "the ONNX fp32 file (any runtime)", "no_smaller": True})
    assert "loses 4.25 points of top-1" in lost and "the ONNX fp32 file is no smaller" in lost


def test_the_presenter_view_shows_three_figures_one_chart_and_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for k, v in {"baseline": "digits_cnn-digits", "sparsity": "0.5", "prune_epochs": "0"}.items():
        at.query_params[k] = v
    settle(at.run(), timeout=600)
    assert len(at.metric) >= 5 and any(d for d in at.dataframe)  # the full Overview: five tiles, the tables
    assert any(e.label == "The statistics behind these figures" for e in at.expander)
    settle(at.sidebar.toggle(key="presenter").set_value(True).run())
    assert not at.exception
    assert [m.label for m in at.metric] == ["Top-1 (measured)", "Packed size", "ONNX Runtime int8"]
    assert len(at.get("plotly_chart")) == 1
    sentence = [unmd(m.value) for m in at.markdown if unmd(m.value).startswith("This configuration ")]
    assert len(sentence) == 1
    assert any(e.label == "The comparison table and the files to take home" for e in at.expander)
