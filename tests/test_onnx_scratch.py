"""ONNX Runtime's quantiser makes its temporary folders in the explorer's scratch folder, not the system temp
folder (security review, issue 21: `ort.quant.*` folders piled up there, and a kill -9 left them for good)."""

import tempfile
from pathlib import Path

import pytest

from explorer.core import scratch
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model
from explorer.measure.onnx_export import export_onnx, quantize_int8


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_the_quantisers_temporary_folders_live_in_scratch(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    system = tmp_path / "system-temp"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))  # the system temp folder, as tempfile sees it
    made = []

    class Recorded(tempfile.TemporaryDirectory):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(Path(self.name))
            assert Path(self.name).exists()

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    data = load_dataset("digits")
    export_onnx(create_model("digits_cnn").eval(), data.input_shape, tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", mode=mode, calibration=data.calibration(64).numpy())
    assert (tmp_path / "q.onnx").stat().st_size > 0
    assert {p.name.split(".quant.")[0] for p in made} >= {"pre"} | ({"ort"} if mode == "static" else set())
    assert all(p.is_relative_to(scratch.root()) for p in made), made  # they were in the system temp folder
    assert list(system.iterdir()) == [] and list(scratch.root().iterdir()) == []  # and nothing is left over
    assert not any(p.exists() for p in made)
