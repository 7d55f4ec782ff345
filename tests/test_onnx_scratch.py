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


def test_a_quantisation_killed_mid_way_leaves_nothing_after_the_next_start_up(tmp_path):
    """kill -9 during calibration: the quantiser's folders are in a scratch folder whose owner is gone, which the
    next start-up's scratch.clean removes; they used to stay in the system temp folder for good."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = """
import sys, time
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model
from explorer.measure import onnx_export

class Stuck(onnx_export._Reader):
    def get_next(self):
        print("calibrating", flush=True)
        time.sleep(120)

onnx_export._Reader = Stuck
data = load_dataset("digits")
onnx_export.export_onnx(create_model("digits_cnn").eval(), data.input_shape, sys.argv[1] + "/m.onnx")
onnx_export.quantize_int8(sys.argv[1] + "/m.onnx", sys.argv[1] + "/q.onnx", calibration=data.calibration(64).numpy())
"""
    system, cache = tmp_path / "system-temp", tmp_path / "cache"
    system.mkdir()
    env = {**os.environ, "TMPDIR": str(system), "EXPLORER_CACHE_DIR": str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "calibrating"
        assert not list(system.glob("*.quant.*"))  # the quantiser's folders are in scratch while it works
        assert list((cache / ".scratch").glob("int8-*/ort.quant.*"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    r = subprocess.run([sys.executable, "-c", "from explorer.core import scratch; print(len(scratch.clean()))"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "1" and list((cache / ".scratch").iterdir()) == []
    assert not list(system.glob("*.quant.*"))
