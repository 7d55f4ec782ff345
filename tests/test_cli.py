import os
import subprocess
import sys

import numpy as np
import pytest

from explorer.app.cli import main
from explorer.core.data import load_dataset
from tests.conftest import ROOT


def _run(*args):
    return subprocess.run([sys.executable, "-m", "explorer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_unknown_model_one_line_error_nonzero_exit():
    r = _run("train", "--model", "nope")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "model 'nope' is not known" in r.stderr
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


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_concurrent_runs_of_one_new_recipe_compute_it_once(tmp_path):
    """Four `run` commands for the same new recipe used to compute it four times; they now go through the
    cache and its per-key lock, like sweeps and the page."""
    import json
    import os

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.41}]}))
    env = {**os.environ, "EXPLORER_CACHE_DIR": str(tmp_path / "cache"), "EXPLORER_LATENCY_BUDGET_S": "0.05"}
    procs = [subprocess.Popen([sys.executable, "-m", "explorer", "run", "--recipe", str(recipe), "--json"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    assert sorted(r["cache"]["hit"] for r in results) == [False, True, True, True]
    assert len({json.dumps(r["accuracy"]) for r in results}) == 1
    fresh = subprocess.run([sys.executable, "-m", "explorer", "run", "--recipe", str(recipe), "--json", "--no-cache"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0 and "cache" not in json.loads(fresh.stdout)  # computed afresh, not looked up


@pytest.mark.parametrize("var,value,allowed", [
    ("EXPLORER_THREADS", "abc", "a whole number of threads >= 1"),
    ("EXPLORER_THREADS", "0", "a whole number of threads >= 1"),
    ("EXPLORER_LATENCY_BUDGET_S", "abc", "a positive number of seconds"),
])
def test_a_bad_setting_fails_at_start_up_in_one_line(tmp_path, var, value, allowed):
    """Bad settings used to fail after about 7 s of compute with Python's own 'invalid literal for int()'."""
    import os

    recipe = tmp_path / "r.json"
    recipe.write_text('{"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.5}]}')
    r = subprocess.run([sys.executable, "-m", "explorer", "run", "--recipe", str(recipe)], cwd=ROOT,
                       env={**os.environ, var: value, "EXPLORER_CACHE_DIR": str(tmp_path / "cache")},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"error: {var}={value!r} must be {allowed}" in r.stderr
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_unreadable_recipe_files_name_the_file(tmp_path, capsys):
    (tmp_path / "bytes.json").write_bytes(bytes([0x7B, 0xB6, 0x00, 0xFF]))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for name, why in (("bytes.json", "is not UTF-8 text (byte 0xb6 at position 1)"),
                      ("deep.json", "nests JSON too deeply")):
        assert main(["run", "--recipe", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"recipe file '{tmp_path / name}' {why}" in err


def test_a_recipe_file_that_gives_a_key_twice_is_one_line(tmp_path, capsys):
    path = tmp_path / "twice.json"
    path.write_text('{"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.5}], "model": "vgg13"}')
    assert main(["run", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: recipe file {str(path)!r} is ambiguous: key 'model' is given twice in one object: give " \
                  "each key once\n"


@pytest.mark.parametrize("value", ["-5", "0"])
def test_train_refuses_a_bad_finetune_samples_before_training(tmp_path, capsys, value):
    """`train --finetune-samples -5` used to train and write -5 into the card, which every later run then used
    (0 was dropped from the card without a word)."""
    rc = main(["train", "--model", "digits_cnn", "--epochs", "1", "--finetune-samples", value,
               "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: --finetune-samples={value} must be an integer in [100, 10000000]\n"
    assert list(tmp_path.iterdir()) == []  # nothing trained, no card


def test_a_card_with_a_bad_finetune_samples_is_refused_where_it_is_read(tmp_path, capsys):
    import json
    import shutil

    for ext in ("safetensors", "json"):
        shutil.copy(ROOT / "models" / f"digits_cnn-digits.{ext}", tmp_path / f"digits_cnn-digits.{ext}")
    card = tmp_path / "digits_cnn-digits.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "finetune_samples": -5}))
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "digits_cnn", "checkpoint": str(tmp_path / "digits_cnn-digits.safetensors"),
                                  "steps": [{"kind": "prune", "sparsity": 0.3, "finetune_epochs": 1}]}))
    assert main(["run", "--recipe", str(recipe), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: baseline card {str(card)!r}: finetune_samples=-5 must be an integer in [100, "
                        "10000000]\n") and err.count("error:") == 1


def test_sweep_workers_0_is_refused_not_read_as_the_default(tmp_path, capsys):
    out = tmp_path / "r.csv"
    rc = main(["sweep", "--workers", "0", "--sparsity", "0", "--bits", "32", "--clusters", "0", "--no-latency",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: --workers=0 must be a whole number >= 1, or omitted for the default\n"
    assert not out.exists()


@pytest.mark.parametrize("flag,value,allowed", [
    ("--confidence", "1.5", "0 (point estimates alone) or a fraction below 1"),
    ("--confidence", "nan", "0 (point estimates alone) or a fraction below 1"),
    ("--size-budget-kb", "0", "a positive number of KiB"),
])
def test_recommend_refuses_constraints_no_run_could_meet(tmp_path, capsys, flag, value, allowed):
    results = tmp_path / "r.csv"
    results.write_text("label,status,top1,accuracy_delta,packed_bytes,latency_ms\nbase,ok,98.0,0.0,1000,1.0\n")
    rc = main(["recommend", str(results), "--latency", "latency_ms", "--confidence", "0", flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {flag}={float(value)!r} must be {allowed}\n"


@pytest.mark.parametrize("command", [["data", "export"], ["train", "--model", "lenet5", "--epochs", "1"]])
def test_a_large_image_size_is_refused_in_one_line_before_the_resize(tmp_path, monkeypatch, capsys, command):
    """Issue 33: `data export` and `train` with `--image-size 512` resized the whole data set in the command's own
    process (past 8 GB for Fashion-MNIST) and, at worst, died with the allocator's own message."""
    from explorer.core import data
    from tests.conftest import make_mnist

    def resized(x, size):
        raise AssertionError("the images were resized")

    monkeypatch.setattr(data, "_resize", resized)
    monkeypatch.setenv("EXPLORER_MAX_DECODED_MB", "20")
    out = tmp_path / "out"
    extra = ["--out", str(out / "x.npz")] if command[0] == "data" else ["--models-dir", str(out)]
    rc = main([*command, "--dataset", "fashion-mnist", "--root", str(make_mnist(tmp_path / "f", "FashionMNIST")),
               "--image-size", "512", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("error: image size 512 would make the 80 images of fashion-mnist take 80 MB, above "
                               "EXPLORER_MAX_DECODED_MB=20: choose a smaller image size (--image-size), or raise the "
                               "cap where the memory is there\n")
    assert not out.exists()


def _not_files(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    return {"a named pipe": tmp_path / "pipe", "a device": "/dev/zero", "a folder": tmp_path / "folder"}


@pytest.mark.timeout(120)  # the named pipe, opened, would wait for a writer for ever; /dev/zero never ends
def test_a_pipe_a_device_or_a_folder_named_as_a_file_is_said_to_be_one(tmp_path, monkeypatch, capsys):
    """Issue 33: a FIFO, /dev/zero or a folder given as a recipe (or as a sweep's CSV, or a checkpoint) was reported as
    "does not exist". Each is now named for what it is, in one line, without opening it."""
    import json

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    for kind, path in _not_files(tmp_path).items():
        recipe = tmp_path / "recipe.json"
        recipe.write_text(json.dumps({"model": "digits_cnn", "checkpoint": str(path), "steps": []}))
        for args, what, shown in ((["run", "--recipe", str(path)], "recipe file", str(path)),
                                  (["report", str(path), "--html", str(tmp_path / "r.html")], "results file",
                                   str(path)),
                                  (["recommend", str(path)], "results file", str(path)),
                                  (["add-model", "--checkpoint", str(path), "--arch", "digits_cnn"], "model file",
                                   os.path.basename(path)),
                                  (["run", "--recipe", str(recipe), "--no-cache"], "checkpoint", str(path))):
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert err.startswith(f"error: {shown!r} is {kind}, not a {what}") and err.count("\n") == 1, (args, err)
    assert main(["run", "--recipe", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err == f"error: recipe file {str(tmp_path / 'none.json')!r} does not exist\n"
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "user").exists()


def test_a_recipe_is_read_no_further_than_its_cap(monkeypatch):
    """A file that says it is small and is not (a file of /proc says it is empty) is read only to the cap, and
    refused as too large rather than read whole."""
    from explorer.compress import recipe as recipes

    path = "/proc/self/maps"  # this process's memory map: 0 bytes by its size, some hundred kB with torch loaded
    if not os.path.isfile(path) or os.path.getsize(path) != 0:
        pytest.skip("needs Linux's /proc")
    monkeypatch.setattr(recipes, "MAX_RECIPE_BYTES", 4096)
    with pytest.raises(ValueError, match=rf"^recipe file {path!r} is over 4,096 bytes: a recipe is a small JSON "):
        recipes.Recipe.from_file(path)


@pytest.mark.timeout(60)
def test_a_pipe_put_in_place_of_a_checked_file_does_not_hold_the_read(tmp_path, monkeypatch):
    """The file is opened without waiting and judged again by what was opened: a named pipe swapped in after the
    check (the check skipped here) is refused at once, not waited on for a writer."""
    from explorer.core import paths

    os.mkfifo(tmp_path / "pipe")
    monkeypatch.setattr(paths, "user_file", lambda *a, **k: 0)
    with pytest.raises(ValueError, match=rf"^{str(tmp_path / 'pipe')!r} is a named pipe, not a recipe file$"):
        paths.read_user_file(tmp_path / "pipe", "recipe file", 100)
