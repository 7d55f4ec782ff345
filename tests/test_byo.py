import hashlib
import json
import pickle
import zipfile
from datetime import date

import numpy as np
import pytest
import torch

from explorer.app import service
from explorer.app.cli import main
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core.zoo import create_model
from explorer.models import user as byo
from explorer.models.baselines import load_baseline
from explorer.models.formats import detect_format
from tests.conftest import make_image_folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_USER_DATA", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture(scope="module")
def baseline():
    return load_baseline("models/digits_cnn-digits.safetensors")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(env, capsys):
    marker = env / "pwned"
    evil = env / "evil.pt"
    torch.save({"features.0.weight": Evil(str(marker))}, evil)  # a zip checkpoint whose data.pkl runs open()
    with pytest.raises(ValueError, match="was refused") as refused:
        byo.add_model(evil, arch="digits_cnn")
    assert not marker.exists()
    # what torch refused, not the opening of its paragraph about its defaults, cut mid-sentence
    assert "(Unsupported global: GLOBAL io.open" in str(refused.value) and "PyTorch 2.6" not in str(refused.value)
    raw = env / "raw.pth"
    raw.write_bytes(pickle.dumps({"w": Evil(str(marker))}))  # a legacy plain pickle
    with pytest.raises(ValueError, match="was refused: it pickles Python objects besides tensors"):
        byo.add_model(raw, arch="digits_cnn")
    recipe = env / "r.json"
    recipe.write_text('{"model": "digits_cnn"}')
    assert main(["run", "--recipe", str(recipe), "--checkpoint", str(evil), "--arch", "digits_cnn"]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_state_dict_model_gets_every_view(env, baseline):
    model, card = baseline
    torch.save(model.state_dict(), env / "mine.pt")
    added = byo.add_model(env / "mine.pt", arch="digits_cnn", name="mine")
    assert added["accuracy"]["top1"] == card["accuracy"]["top1"]
    assert added["path"].endswith("mine.safetensors") and "mine" in [c["name"] for c in service.list_baselines()]
    res = service.run(Recipe(model="digits_cnn", checkpoint=added["path"], steps=(PruneConfig(sparsity=0.5),)))
    assert res["status"] == "ok" and res["size"]["packed_bytes"] and res["latency"]["torch_cpu_fp32"]["b1"]["available"]
    # nothing pickled is kept: the cache and the user folder hold JSON, safetensors, packed and ONNX files only
    kept = {p.suffix for d in ("cache", "user") for p in (env / d).rglob("*") if p.is_file()}
    assert kept <= {".json", ".safetensors", ".xpk", ".onnx", ".npy", ".lock", ""}
    for p in (env / "cache").rglob("*.npy"):  # predictions: plain integer arrays, loadable without pickle
        assert np.load(p, allow_pickle=False).dtype == np.int16


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_foreign_models_get_size_latency_and_int8_only(env, baseline, fmt):
    model, card = baseline
    path = env / {"torchscript": "m.pt", "exported": "m.pt2", "onnx": "m.onnx"}[fmt]
    if fmt == "torchscript":
        torch.jit.script(model).save(str(path))
    elif fmt == "exported":
        torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(path))
    else:
        from explorer.measure.onnx_export import export_onnx

        export_onnx(model, (1, 8, 8), path)
    assert detect_format(path) == fmt
    added = byo.add_model(path, name=f"m-{fmt}", trust_code=fmt != "onnx")
    assert added["format"] == "onnx" and added["accuracy"]["top1"] == card["accuracy"]["top1"]
    res = service.run(Recipe(model="onnx", checkpoint=added["path"], steps=(QuantizeConfig(mode="static"),)))
    assert res["status"] == "ok" and res["onnx"]["int8"]["available"]
    assert abs(res["accuracy_delta"]) <= 1.0 and res["size"]["onnx_int8_bytes"] < res["size"]["onnx_bytes"]
    assert res["latency"]["onnxruntime_cpu_int8"]["b1"]["available"]
    assert not res["latency"]["torch_cpu_fp32"]["b1"]["available"]
    with pytest.raises(ValueError, match="prune .prune 50% unstructured. is not available for an ONNX model: pruning"):
        service.run(Recipe(model="onnx", checkpoint=added["path"], steps=(PruneConfig(sparsity=0.5),)))
    with pytest.raises(ValueError, match="layers='inner' is not available for an ONNX model.*allowed: 'all'"):
        service.run(Recipe(model="onnx", checkpoint=added["path"],
                           steps=(QuantizeConfig(mode="static", layers="inner"),)))


def test_wrong_architecture_lists_the_keys(env, baseline):
    torch.save(create_model("lenet5", image_size=8).state_dict(), env / "lenet.pt")
    with pytest.raises(ValueError) as e:
        byo.add_model(env / "lenet.pt", arch="digits_cnn")
    assert "missing" in str(e.value) and "unexpected" in str(e.value) and "mis-shaped" in str(e.value)


def test_class_count_that_does_not_match(env, baseline):
    model, _ = baseline
    make_image_folder(env / "three", per_class=6, size=8)
    from explorer.measure.onnx_export import export_onnx

    export_onnx(model, (1, 8, 8), env / "m.onnx")
    with pytest.raises(ValueError, match="has 3 classes"):
        byo.add_model(env / "m.onnx", dataset="imagefolder", root=str(env / "three"), image_size=8)
    torch.save(model.state_dict(), env / "m.pt")
    with pytest.raises(ValueError, match=r"mis-shaped.*classifier.4.*\(the architecture was built for imagefolder: "
                                         r"8x8 images, 1 channel, 3 classes; if the model was trained on another "
                                         r"data set or image size, choose that one\)$"):
        byo.add_model(env / "m.pt", arch="digits_cnn", dataset="imagefolder", root=str(env / "three"), image_size=8)


def test_truncated_and_corrupted_files(env, baseline):
    model, _ = baseline
    torch.save(model.state_dict(), env / "m.pt")
    (env / "cut.pt").write_bytes((env / "m.pt").read_bytes()[:500])
    with pytest.raises(ValueError):
        byo.add_model(env / "cut.pt", arch="digits_cnn")
    (env / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="junk.onnx"):
        byo.add_model(env / "junk.onnx")
    (env / "x.bin").write_bytes(b"1234")
    with pytest.raises(ValueError, match=r"model file 'x.bin' is not a model file the explorer reads: expected "
                                         r"safetensors, a PyTorch state_dict checkpoint"):
        byo.add_model(env / "x.bin")


def test_nan_weights_refused(env, baseline):
    model, _ = baseline
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.4.weight"][0, 0] = float("inf")
    torch.save(state, env / "inf.pt")
    with pytest.raises(ValueError, match="NaN or Inf values in classifier.4.weight"):
        byo.add_model(env / "inf.pt", arch="digits_cnn")


def test_upload_over_the_cap(env, baseline, monkeypatch):
    model, _ = baseline
    torch.save(model.state_dict(), env / "m.pt")
    monkeypatch.setenv("EXPLORER_MAX_UPLOAD_MB", "0.01")
    with pytest.raises(ValueError, match=r"over the upload cap of 0 MB \(set EXPLORER_MAX_UPLOAD_MB"):
        byo.add_model(env / "m.pt", arch="digits_cnn")
    monkeypatch.setenv("EXPLORER_MAX_UPLOAD_MB", "lots")
    with pytest.raises(ValueError, match="EXPLORER_MAX_UPLOAD_MB='lots' must be a positive number"):
        byo.max_upload_bytes()


def test_zipped_image_folder_dataset(env, baseline):
    import zipfile

    make_image_folder(env / "pics" / "mydata", per_class=6, size=8)
    with zipfile.ZipFile(env / "pics.zip", "w") as z:
        for p in (env / "pics").rglob("*.png"):
            z.write(p, p.relative_to(env / "pics"))
    root = service.add_dataset_zip(str(env / "pics.zip"), "mydata")
    assert sorted(p.name for p in __import__("pathlib").Path(root).iterdir()) == ["cat", "dog", "eel"]
    m = create_model("digits_cnn", num_classes=3, in_channels=3, image_size=8)
    torch.save(m.state_dict(), env / "three.pt")
    added = byo.add_model(env / "three.pt", arch="digits_cnn", dataset="imagefolder", root=root, image_size=8)
    assert added["arch_kwargs"] == {"num_classes": 3, "in_channels": 3, "image_size": 8}
    res = service.run(Recipe(model="digits_cnn", dataset="imagefolder", checkpoint=added["path"],
                             steps=(PruneConfig(sparsity=0.5),)))
    assert res["status"] == "ok" and res["test_samples"] == 3


def test_cli_add_model(env, baseline, capsys):
    model, _ = baseline
    torch.save(model.state_dict(), env / "m.pt")
    assert main(["add-model", "--checkpoint", str(env / "m.pt"), "--arch", "digits_cnn", "--name", "cli"]) == 0
    assert "added cli (digits_cnn, 40,394 parameters)" in capsys.readouterr().out
    assert main(["add-model", "--checkpoint", str(env / "m.pt"), "--arch", "alexnet"]) == 2
    err = capsys.readouterr().err
    assert "model 'alexnet' is not known: close matches: torchvision:alexnet" in err and err.count("\n") == 1


def _zip_tree(path, files: dict):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), color=value).save(buf, format="PNG")
    return buf.getvalue()


def test_a_refused_zip_never_touches_the_stored_dataset(env):
    good = {f"d/{c}/{i}.png": _png(10 * i + (c == "dog")) for c in ("cat", "dog") for i in range(3)}
    root = service.add_dataset_zip(str(_zip_tree(env / "a.zip", good)), "mydata")
    before = sorted(p.relative_to(env / "data") for p in (env / "data").rglob("*"))
    bad = {**good, "../escape.png": b"x"}  # refused mid-extraction
    with pytest.raises(ValueError, match="climbs out"):
        service.add_dataset_zip(str(_zip_tree(env / "b.zip", bad)), "mydata")
    other = {f"d/{c}/{i}.png": _png(i + 3 * (c == "fox")) for c in ("eel", "fox") for i in range(3)}
    with pytest.raises(ValueError, match="a dataset named 'mydata' already exists with other files"):
        service.add_dataset_zip(str(_zip_tree(env / "c.zip", other)), "mydata")
    assert sorted(p.relative_to(env / "data") for p in (env / "data").rglob("*")) == before
    assert service.add_dataset_zip(str(env / "a.zip"), "mydata") == root  # the same files again: reused
    assert not list((env / "cache" / ".scratch").iterdir())


def test_model_names_are_unique_and_replaced_only_on_request(env, baseline, capsys):
    from explorer.measure.onnx_export import export_onnx

    model, card = baseline
    torch.save(model.state_dict(), env / "m.pt")
    export_onnx(model, (1, 8, 8), env / "m.onnx")
    assert main(["add-model", "--checkpoint", str(env / "m.pt"), "--arch", "digits_cnn", "--name", "dup"]) == 0
    assert main(["add-model", "--checkpoint", str(env / "m.onnx"), "--name", "dup"]) == 2
    assert f"a model named 'dup' already exists (digits_cnn, added {date.today().isoformat()}): choose another name" \
        in capsys.readouterr().err
    dups = [c for c in service.list_baselines() if c["name"] == "dup"]
    assert len(dups) == 1 and dups[0]["architecture"] == "digits_cnn"
    res = service.run(Recipe(model="digits_cnn", checkpoint=dups[0]["path"], steps=(PruneConfig(sparsity=0.3),)))
    assert res["status"] == "ok"  # the first model still works
    assert main(["add-model", "--checkpoint", str(env / "m.onnx"), "--name", "dup", "--replace"]) == 0
    dups = [c for c in service.list_baselines() if c["name"] == "dup"]
    assert len(dups) == 1 and dups[0]["architecture"] == "onnx"
    assert sorted(p.name for p in (env / "user").iterdir() if not p.name.startswith(".")) == ["dup.json",
                                                                                              "dup.onnx"]
    with pytest.raises(ValueError, match="is a committed baseline's"):
        byo.add_model(env / "m.pt", arch="digits_cnn", name="digits_cnn-digits", replace=True)


def test_adding_the_same_file_again_reuses_it_and_another_gets_a_new_name(env, baseline):
    model, _ = baseline
    torch.save(model.state_dict(), env / "m.pt")
    first = byo.add_model(env / "m.pt", arch="digits_cnn")
    again = byo.add_model(env / "m.pt", arch="digits_cnn")
    assert again["reused"] and again["path"] == first["path"]
    assert first["name"] == f"digits_cnn-digits-{_hash(env / 'm.pt')}"  # a hash of the file, not its name
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    (env / "sub").mkdir()
    torch.save(other, env / "sub" / "m.pt")
    second = byo.add_model(env / "sub" / "m.pt", arch="digits_cnn")
    assert second["name"] == f"digits_cnn-digits-{_hash(env / 'sub' / 'm.pt')}" and not second.get("reused")
    (env / "renamed.pt").write_bytes((env / "m.pt").read_bytes())  # the same bytes under another name: the same model
    assert byo.add_model(env / "renamed.pt", arch="digits_cnn")["reused"]
    names = [c["name"] for c in service.list_baselines()]
    assert len(names) == len(set(names))


def _hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def test_an_uploaded_file_name_stays_out_of_what_every_visitor_sees(env, baseline):
    """Issue 33: visitor A's file name became the automatic model name (digits_cnn-digits-<file stem>) that every
    visitor lists, and the card every visitor can open held it again (source.file), as did another visitor's refusal
    for taking the name; an uploaded zip's name became the data set's folder. Now the page's models and data sets
    are named by a short hash of the file, and only the command line (the operator's own file) keeps its name."""
    model, _ = baseline
    secret = "alice-merger-plan"
    torch.save(model.state_dict(), env / "upload")  # the page stores an upload's bytes under a name of its own
    card = service.add_model(str(env / "upload"), arch="digits_cnn", dataset="digits", root=None, name=None,
                             shown=f"{secret}.pt")
    assert card["name"] == f"digits_cnn-digits-{_hash(env / 'upload')}"
    again = service.add_model(str(env / "upload"), arch="digits_cnn", dataset="digits", root=None, name=None,
                              shown="another name.pt")
    assert again["reused"] and again["name"] == card["name"]
    with pytest.raises(ValueError, match="already exists") as taken:  # another visitor typing that name
        service.add_model(str(env / "upload"), arch="digits_cnn", dataset="digits", root=None, name=card["name"],
                          shown="b.pt")
    assert secret not in str(taken.value)
    pics = make_image_folder(env / "pics" / "d", per_class=3, size=8)
    with zipfile.ZipFile(env / "zipped", "w") as z:
        for p in pics.rglob("*.png"):
            z.write(p, p.relative_to(pics.parent))
    root = service.add_dataset_zip(str(env / "zipped"), None, shown=f"{secret}.zip")
    assert root == str(env / "data" / f"zip-{_hash(env / 'zipped')}" / "d")
    listed = json.dumps(service.list_baselines())
    stored = " ".join(p.read_text() for p in (env / "user").glob("*.json"))
    assert secret not in listed + stored and secret not in " ".join(str(p) for p in env.glob("data/**/*"))
    torch.save(model.state_dict(), env / "operators-own.pt")  # the operator's file, named on the command line
    assert main(["add-model", "--checkpoint", str(env / "operators-own.pt"), "--arch", "digits_cnn"]) == 0
    cli = next(c for c in byo.list_user_models() if c["source"].get("file"))
    assert cli["source"]["file"] == "operators-own.pt"
    assert cli["name"] == f"digits_cnn-digits-{_hash(env / 'operators-own.pt')}"
