"""Issue 35: what a model is fed, stated and settable, and recipes that travel.

Nothing said what the explorer feeds a model (the user model's card had no normalisation, the form no setting, the
ONNX files and summaries said nothing), so a model trained on [0, 1] inputs silently lost points. The model trained on
[0, 1] inputs here is the committed digits CNN with its normalisation folded into its first convolution: it takes the
[0, 1] pixels themselves (its zero padding is [0, 1]'s zero now, which costs it two points of the original's 98.3%).

And the page's recipe named its model by a path on the server that made it, left out the fine-tuning subset and the
normalisation, and reproduced nothing elsewhere. Now it names its model by name and sha256 and holds every setting
that changes its figures, and the command line finds that model on another machine, or refuses in one line."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from explorer.app import service
from explorer.app.cli import main
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core.data import Split, load_dataset
from explorer.core.train import evaluate
from explorer.core.zoo import create_model
from explorer.models import baselines
from explorer.models import user as byo
from explorer.run import runner
from tests.conftest import ROOT


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    return tmp_path


def raw_inputs_model() -> torch.nn.Module:
    """The digits CNN made to take the [0, 1] pixels: (x - m) / s folded into its first convolution."""
    model, card = baselines.load_baseline(ROOT / "models" / "digits_cnn-digits.safetensors")
    m, s = card["normalisation"]["mean"][0], card["normalisation"]["std"][0]
    conv = model.features[0]
    with torch.no_grad():
        conv.bias -= conv.weight.sum(dim=(1, 2, 3)) * m / s
        conv.weight /= s
    return model


def make_raw_model(folder):
    """The [0, 1] model's file in `folder`, its top-1 on the [0, 1] test images (the reference: un-normalised from
    the default split) and on the default normalisation."""
    path = folder / "raw01.pt"
    model = raw_inputs_model()
    torch.save(model.state_dict(), path)
    own = load_dataset("digits")
    x01 = own.test.x * own.std[0] + own.mean[0]
    return path, evaluate(model, Split(x01, own.test.y))["top1"], evaluate(model, own.test)["top1"]


@contextlib.contextmanager
def added_and_run(path, where):
    """The [0, 1] model added as the page's form adds it, told mean 0 and std 1, and one run of it (int8), in
    `where`'s own user models folder and cache."""
    with pytest.MonkeyPatch.context() as mp:
        for var, value in (("EXPLORER_USER_MODELS", where / "user"), ("EXPLORER_CACHE_DIR", where / "cache"),
                           ("EXPLORER_LATENCY_BUDGET_S", "0.05")):
            mp.setenv(var, str(value))
        card = service.add_model(str(path), arch="digits_cnn", dataset="digits", root=None, name="raw01",
                                 mean=(0.0,), std=(1.0,))
        result = service.run(Recipe(model="digits_cnn", checkpoint=card["path"], steps=(QuantizeConfig(bits=8),)))
        yield where, card, result


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory):
    return make_raw_model(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def added(raw_model, tmp_path_factory):
    with added_and_run(raw_model[0], tmp_path_factory.mktemp("added")) as got:
        yield got


def test_a_user_models_card_records_what_it_is_fed(env):
    torch.save(create_model("digits_cnn", num_classes=10, in_channels=1, image_size=8).state_dict(), env / "m.pt")
    card = byo.add_model(env / "m.pt", arch="digits_cnn")
    data = load_dataset("digits")
    assert card["normalisation"] == {"mean": list(data.mean), "std": list(data.std)}
    assert card["input_size"] == [1, 8, 8] and "preprocessing" not in card  # the data set's own
    listed = next(c for c in service.list_baselines() if c["name"] == card["name"])
    assert listed["normalisation"] == card["normalisation"] and listed["input_size"] == [1, 8, 8]
    # a committed card written before the field gets it on read; its file is not rewritten
    committed = ROOT / "models" / "lenet5-fashion-mnist.json"
    before = committed.read_bytes()
    assert baselines.read_card(ROOT / "models" / "lenet5-fashion-mnist.safetensors")["input_size"] == [1, 28, 28]
    assert committed.read_bytes() == before and b"input_size" not in before


def test_the_mean_and_std_a_user_gives_reach_the_data(added, raw_model, monkeypatch):
    path, on_raw, on_normalised = raw_model
    where, told, res = added
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(where / "user"))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(where / "cache"))
    assert on_raw > on_normalised + 2  # fed the data set's own normalisation, the model silently loses points
    assert told["accuracy"]["top1"] == pytest.approx(on_raw, abs=1e-6)
    assert told["preprocessing"] == {"mean": [0.0], "std": [1.0]}
    assert told["normalisation"] == {"mean": [0.0], "std": [1.0]}
    assert service.feed_words(told) == "images of 1x8x8, scaled to [0, 1], as they are (mean 0, std 1)"
    # the same file fed otherwise is another model, under another name, with other runs
    plain = service.add_model(str(path), arch="digits_cnn", dataset="digits", root=None, name=None)
    assert plain["accuracy"]["top1"] == pytest.approx(on_normalised, abs=1e-6) and plain["name"] != "raw01"
    again = byo.add_model(path, arch="digits_cnn", mean=(0.0,), std=(1.0,))  # fed as before: the same model
    assert again["reused"] and again["name"] == "raw01"
    again = service.add_model(str(path), arch="digits_cnn", dataset="digits", root=None, name=None)
    assert again["reused"] and again["name"] == plain["name"]
    keys = {runner.run_key(Recipe(model="digits_cnn", checkpoint=c["path"])) for c in (told, plain)}
    assert len(keys) == 2
    # every later load of the model's data uses them: the baseline's scores, calibration, ONNX Runtime's accuracy
    assert res["status"] == "ok" and res["baseline_accuracy"]["top1"] == pytest.approx(on_raw, abs=1e-6)
    assert res["onnx"]["fp32"]["accuracy"]["top1"] == pytest.approx(on_raw, abs=0.3)  # one image of 359
    assert res["onnx"]["int8"]["accuracy"]["top1"] > on_normalised
    assert res["preprocessing"] == {"input_size": [1, 8, 8], "mean": [0.0], "std": [1.0],
                                    "given": {"mean": [0.0], "std": [1.0]}}


def test_the_onnx_files_say_what_their_input_must_be(added, monkeypatch):
    import onnx

    where, card, res = added
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(where / "cache"))
    for name in ("model.onnx", "model.int8.onnx"):
        meta = {p.key: p.value for p in onnx.load_from_string(service.artifact(res["key"], name)).metadata_props}
        assert json.loads(meta["input_size"]) == [1, 8, 8] and json.loads(meta["mean"]) == [0.0]
        assert json.loads(meta["std"]) == [1.0] and json.loads(meta["classes"]) == [str(d) for d in range(10)]
        assert meta["input_scale"] == "scaled to [0, 1]" and meta["model"] == card["name"]
    assert res["size"]["onnx_bytes"] == len(service.artifact(res["key"], "model.onnx"))  # the file as shipped


def test_the_summaries_say_what_the_model_is_fed(added, monkeypatch):
    import pandas as pd

    from explorer.app import summary

    where, card, res = added
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(where / "user"))
    said = "Inputs: images of 1x8x8, scaled to [0, 1], as they are (mean 0, std 1)."
    assert summary.inputs(res) == said and said in summary.page(res, pd.DataFrame(), card["name"])
    older = {k: v for k, v in res.items() if k != "preprocessing"}  # a run stored before the record: from its card
    assert summary.inputs(older) == said
    committed = {"recipe": Recipe(model="lenet5", dataset="fashion-mnist").to_dict()}
    assert summary.inputs(committed) == "Inputs: images of 1x28x28, scaled to [0, 1], then (x - 0.286) / 0.3529."


def test_add_model_takes_the_mean_std_and_size_on_the_command_line(env, raw_model, capsys):
    path = str(raw_model[0])
    assert main(["add-model", "--checkpoint", path, "--arch", "digits_cnn", "--mean", "0", "--std", "1"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {raw_model[1]:.2f}%" in out and "fed images of 1x8x8, scaled to [0, 1], as they are" in out
    for flags, said in ((["--mean", "0", "--std", "0"], "std 0 must be above 0"),
                        (["--mean", "0,0,0", "--std", "1,1,1"], "have 3 values each, but the images have 1 channel"),
                        (["--mean", "0.5"], "the mean is given without the std")):
        assert main(["add-model", "--checkpoint", path, "--arch", "digits_cnn", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err
    # a digits model added at another size is fed that size wherever its data is loaded (it was fed 8x8 at run time)
    torch.save(create_model("digits_cnn", num_classes=10, in_channels=1, image_size=16).state_dict(), env / "m16.pt")
    card = byo.add_model(env / "m16.pt", arch="digits_cnn", image_size=16)
    assert card["input_size"] == [1, 16, 16] and card["preprocessing"] == {"image_size": 16}
    assert baselines.baseline_data(card).input_shape == (1, 16, 16)
    assert baselines.describe_baseline(card["path"])["measured"]["top1"] == card["accuracy"]["top1"]


@pytest.mark.slow  # the page, a run and its baseline: over 10 s on two cores
def test_the_your_model_form_says_what_it_feeds_and_its_values_reach_the_model(env, raw_model):
    from streamlit.testing.v1 import AppTest

    from explorer.core.markup import unmd
    from tests.conftest import settle

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for k, v in {"baseline": "digits_cnn-digits", "prune_epochs": "0", "tab": "Your model"}.items():
        at.query_params[k] = v
    settle(at.run())
    said = [unmd(c.value) for c in at.caption if "The explorer will feed" in unmd(c.value)]
    assert said == ["The explorer will feed images of 1x8x8, scaled to [0, 1], then (x - 0.3056) / 0.3763."]
    at.text_input(key="byo_std").set_value("0")
    at.text_input(key="byo_mean").set_value("0").run()
    assert any("std 0 must be above 0" in unmd(e.value) for e in at.error) and at.button(key="byo_add").disabled
    at.text_input(key="byo_std").set_value("1").run()
    assert any("as they are (mean 0, std 1)" in unmd(c.value) for c in at.caption)
    at.file_uploader(key="byo_model").set_value(("raw.pt", raw_model[0].read_bytes(), "application/octet-stream"))
    at.selectbox(key="byo_arch").set_value("digits_cnn")
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    added = next(c for c in byo.list_user_models())
    assert added["preprocessing"] == {"mean": [0.0], "std": [1.0]} and at.session_state["baseline"] == added["name"]
    assert any(f"top-1 {raw_model[1]:.2f}%" in unmd(s.value) and "as they are" in unmd(s.value) for s in at.success)


def _travel():
    from explorer.models import travel  # imported where used: each test then fails on its own claim on older code

    return travel


def test_the_page_hands_out_a_recipe_that_names_its_model_not_a_server_path(added, monkeypatch):
    where, card, res = added
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(where / "user"))
    shared = json.loads(service.recipe_download(res))
    assert "checkpoint" not in shared and str(where) not in json.dumps(shared)
    assert shared["baseline"] == "raw01" and shared["sha256"] == card["sha256"]
    assert shared["source_sha256"] == card["source"]["sha256"]
    assert (shared["mean"], shared["std"]) == ([0.0], [1.0])
    # a committed baseline's recipe states the fine-tuning subset its card recommends, and is the page's own run
    page = Recipe(model="lenet5", dataset="fashion-mnist", steps=(QuantizeConfig(bits=8),))
    stored = {"recipe": page.to_dict()}
    lenet = _travel().shared_of(stored)
    assert lenet["finetune_samples"] == 12000 and lenet["baseline"] == "lenet5-fashion-mnist"
    resolved = _travel().resolve(Recipe.from_dict(lenet))
    assert resolved.checkpoint is None and runner.run_key(resolved) == runner.run_key(page)


def test_a_travelling_recipe_finds_its_model_or_says_in_one_line_why_not(env, raw_model, capsys):
    path = raw_model[0]
    shared = env / "recipe.json"
    card = byo.add_model(path, arch="digits_cnn", mean=(0.0,), std=(1.0,))
    stored = {"recipe": Recipe(model="digits_cnn", checkpoint=card["path"]).to_dict()}
    shared.write_text(json.dumps(_travel().shared_of(stored)))
    assert _travel().resolve(Recipe.from_file(shared)).checkpoint == card["path"]  # found by its weights' sha256
    wrong = str(ROOT / "models" / "digits_cnn-digits.safetensors")
    assert main(["run", "--recipe", str(shared), "--checkpoint", wrong]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {wrong!r} holds other weights than the recipe's model" in err
    shutil.rmtree(env / "user")  # another machine: the model is not there
    assert main(["run", "--recipe", str(shared)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not on this machine" in err and "--checkpoint FILE" in err
    byo.add_model(path, arch="digits_cnn")  # there, but fed the data set's own normalisation
    assert main(["run", "--recipe", str(shared)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is fed mean 0 and std 1, but the model here with its weights" in err
    recipe = Recipe.from_file(shared)
    with pytest.raises(ValueError, match="is fed mean 0 and std 1, but the model at"):  # its path named outright
        runner.run_key(Recipe(model="digits_cnn", checkpoint=byo.list_user_models()[0]["path"], mean=recipe.mean,
                              std=recipe.std))


def test_older_recipes_and_the_committed_runs_keep_their_meaning_and_keys():
    old = {"model": "digits_cnn", "dataset": "digits", "checkpoint": "models/digits_cnn-digits.safetensors",
           "seed": 0, "steps": [{"kind": "prune", "sparsity": 0.5}]}
    r = Recipe.from_dict(old)
    named = Recipe.from_dict({**old, "baseline": "digits_cnn-digits", "sha256": "4555913a9db8db1b4cefa0b9bfd36967efeb"
                              "36bc91f8b0d34ef3dfeab36d13a1"})
    assert named.canonical_json() == r.canonical_json() and runner.run_key(named) == runner.run_key(r)
    assert set(json.loads(r.canonical_json())) == {"model", "dataset", "checkpoint", "seed", "steps"}
    assert _travel().resolve(r) is r  # a recipe with its path is used as it is


@pytest.mark.slow  # a fresh process (torch's import, a full run with its timing): over 10 s on two cores
def test_a_recipe_from_the_page_reproduces_its_top1_in_a_fresh_folder(added, raw_model, tmp_path_factory,
                                                                      monkeypatch):
    """The other machine: a folder with only the model's file and the recipe the page hands out, a fresh cache and
    a fresh user models folder, and `python -m explorer run --recipe recipe.json --checkpoint FILE --json`."""
    path = raw_model[0]
    where, _, page = added
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(where / "user"))
    away = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(path, away / "model.pt")
    (away / "recipe.json").write_text(service.recipe_download(page))
    fresh = {**os.environ, "EXPLORER_USER_MODELS": str(away / "user"),
             "EXPLORER_CACHE_DIR": str(away / "cache"), "EXPLORER_LATENCY_BUDGET_S": "0.05", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "explorer", "run", "--recipe", "recipe.json", "--checkpoint",
                          "model.pt", "--json"], cwd=away, env=fresh, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout)
    assert there["accuracy"] == page["accuracy"] and there["baseline_accuracy"] == page["baseline_accuracy"]
    assert there["key"] != page["key"]  # computed afresh there, not looked up here
