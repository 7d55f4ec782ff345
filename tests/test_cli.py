import subprocess
import sys

import numpy as np

from explorer.cli import main
from explorer.data import load_dataset
from tests.conftest import ROOT


def _run(*args):
    return subprocess.run([sys.executable, "-m", "explorer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_unknown_model_one_line_error_nonzero_exit():
    r = _run("train", "--model", "nope")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "model='nope' must be one of" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_dataset_folder_one_line(tmp_path, capsys):
    rc = main(["train", "--model", "lenet5", "--dataset", "mnist", "--root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: dataset folder") and "train-images-idx3-ubyte" in err


def test_data_export_writes_the_evaluated_tensors(tmp_path):
    out = tmp_path / "test.npz"
    assert main(["data", "export", "--dataset", "digits", "--split", "test", "--out", str(out)]) == 0
    z = np.load(out)
    ref = load_dataset("digits").test
    assert z["x"].dtype == np.float32 and z["y"].dtype == np.int64
    np.testing.assert_array_equal(z["x"], ref.x.numpy())
    np.testing.assert_array_equal(z["y"], ref.y.numpy())
