"""Model files that are programs never run unless trusted on the command line; formats come from the bytes.

The attack: a TorchScript model whose forward calls torch.from_file(path, True, n), which creates (or
overwrites the start of) any file the server can write. It ran through add-model, run --checkpoint and
the page's upload, and the upload was reported as a success."""

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from streamlit.testing.v1 import AppTest
from torch import nn

from explorer.app import service
from explorer.app.cli import main
from explorer.core.markup import unmd
from explorer.models import user as byo
from explorer.models.formats import detect_format
from tests.conftest import ROOT, settle


class FileWriter(nn.Module):
    """Writes 64 bytes at `marker` whenever it runs (the result is used, so TorchScript keeps the call)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        t = torch.from_file(self.marker, True, 16)
        return self.lin(x.flatten(1)) + t.sum() * 0


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_USER_DATA", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def attack(env):
    marker = env / "bashrc"
    path = env / "model.pt"
    torch.jit.save(torch.jit.script(FileWriter(str(marker))), str(path))
    torch.jit.load(str(path))(torch.zeros(1, 1, 8, 8))  # the attack works when the model runs...
    assert marker.exists()
    marker.unlink()  # ...and every test below checks that the explorer never runs it
    return path, marker


def test_the_attack_is_refused_by_every_entry_point(env, attack, capsys):
    path, marker = attack
    for arch in (None, "digits_cnn"):
        with pytest.raises(ValueError, match="is a TorchScript program: loading it would run code.*--trust-code"):
            byo.add_model(path, arch=arch)
    with pytest.raises(ValueError, match="TorchScript program"):
        service.add_model(str(path), arch=None, dataset="digits", root=None, name=None)
    recipe = env / "r.json"
    recipe.write_text('{"model": "digits_cnn"}')
    for argv in (["add-model", "--checkpoint", str(path)],
                 ["run", "--recipe", str(recipe), "--checkpoint", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "TorchScript program" in err and "--trust-code" in err
    assert not marker.exists()
    assert not list((env / "user").glob("*.json"))


@pytest.mark.parametrize("name", ["weights.safetensors", "model.onnx", "model.pth", "model.bin"])
def test_a_program_under_another_name_is_still_a_program(env, attack, name):
    path, marker = attack
    renamed = env / name
    renamed.write_bytes(path.read_bytes())
    assert detect_format(renamed) == "torchscript"
    with pytest.raises(ValueError, match=f"model file '{name}' is a TorchScript program"):
        byo.add_model(renamed)
    with pytest.raises(ValueError, match="TorchScript program"):
        byo.add_model(renamed, arch="digits_cnn")
    assert not marker.exists()


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_the_page_refuses_the_upload_and_never_runs_it(env, attack):
    path, marker = attack
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["baseline"] = "digits_cnn-digits"
    settle(at.run())
    at.file_uploader(key="byo_model").set_value(("model.pt", path.read_bytes(), "application/octet-stream"))
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    assert not at.exception
    errors = [unmd(e.value) for e in at.error]  # the page escapes what it repeats (issue 21)
    assert any("'model.pt' is a TorchScript program" in e for e in errors), errors
    assert not any("/" in e.split("'model.pt'")[0] for e in errors), "the server's temp path is shown"
    assert not marker.exists() and not list((env / "user").glob("*.json"))
    assert not [s.value for s in at.success if "Added" in s.value]


def test_the_page_offers_no_way_to_trust_code():
    """No flag, no environment variable: no name in the page's code mentions trust (only its help text
    does, to point at the command line), and the backend call it makes to add a model passes
    trust_code=False."""
    import ast
    import inspect

    for f in [ROOT / "app.py", *(ROOT / "explorer" / "app" / "ui").glob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [getattr(node, a, None) for a in ("id", "attr", "arg", "name")]
            assert not any(isinstance(n, str) and "trust" in n.lower() for n in names), (f.name, names)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "TRUST" not in node.value, (f.name, node.value)  # no environment variable either
    assert "trust_code=False" in inspect.getsource(service.add_model)


def test_exported_program_refused_unless_trusted(env, capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    path = env / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(path))
    assert detect_format(path) == "exported"
    with pytest.raises(ValueError, match=r"is an exported program \(torch.export, .pt2\): loading it would run"):
        byo.add_model(path)
    assert main(["add-model", "--checkpoint", str(path), "--name", "ep", "--trust-code"]) == 0
    assert "added ep (onnx" in capsys.readouterr().out
    card = next(c for c in byo.list_user_models() if c["name"] == "ep")
    assert card["path"].endswith(".onnx") and card["source"]["format"] == "exported"


def test_pickled_module_needs_trust_and_then_becomes_onnx(env):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    torch.save(model, env / "whole.pt")  # pickles the module's classes: a program
    with pytest.raises(ValueError, match="was refused: it pickles Python objects besides tensors"):
        byo.add_model(env / "whole.pt")
    card = byo.add_model(env / "whole.pt", trust_code=True, name="whole")
    assert card["architecture"] == "onnx" and card["source"]["format"] == "state_dict"


def _onnx_with_node(path: Path, domain: str) -> Path:
    node = helper.make_node("Relu" if not domain else "Frobnicate", ["input"], ["logits"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 10])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_onnx_with_operators_outside_the_standard_domains_is_refused(env, tmp_path):
    path = _onnx_with_node(tmp_path / "custom.onnx", "com.evil")
    assert detect_format(path) == "onnx"
    with pytest.raises(ValueError, match="uses operator 'Frobnicate' from the domain 'com.evil': only the standard"):
        byo.add_model(path)


def _digits_onnx(path: Path, where: str) -> Path:
    """A linear digits classifier whose 64x10 weights sit inline, or in an external file `secret.bin`, as an
    initializer or as a Constant node's value (the place an initializer-only check missed) inside an If's branch."""
    from onnx.external_data_helper import set_external_data

    w = helper.make_tensor("W", TensorProto.FLOAT, [64, 10], b"\0" * 2560, raw=True)
    if where != "inline":
        (path.parent / "secret.bin").write_bytes(b"\0" * 2560)
        set_external_data(w, location="secret.bin")
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
    flat = helper.make_node("Flatten", ["input"], ["f"], axis=1)
    mm = helper.make_node("MatMul", ["f", "W"], ["logits"])
    inits, nodes = ([w], [flat, mm]) if where in ("inline", "initializer") else ([], [flat, mm])
    if where == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=w))
    if where == "branch":
        branch = helper.make_graph([helper.make_node("Constant", [], ["Wb"], value=w)], "b", [],
                                   [helper.make_tensor_value_info("Wb", TensorProto.FLOAT, [64, 10])])
        cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
        nodes[:0] = [helper.make_node("Constant", [], ["cond"], value=cond),
                     helper.make_node("If", ["cond"], ["W"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_with_any_tensor_in_an_external_file_is_refused(env, tmp_path):
    """The location of external data is a file path: from an upload it could name any file here, or the upload
    itself read back as weights. Initializers, Constant nodes and subgraphs are all checked."""
    assert byo.add_model(_digits_onnx(tmp_path / "inline.onnx", "inline"), name="inline")["architecture"] == "onnx"
    for where in ("initializer", "constant", "branch"):
        path = _digits_onnx(tmp_path / f"{where}.onnx", where)
        with pytest.raises(ValueError, match=f"'{where}.onnx' keeps tensor 'W' in an external data file "
                                             r"\('secret.bin'\): upload a single-file model"):
            byo.add_model(path, name=where)


def test_an_onnx_file_is_parsed_only_in_the_checking_process(env, tmp_path, monkeypatch):
    """ONNX has no magic number, so telling it takes parsing the whole file: a file of millions of empty nodes took
    some 80 times its size (1.6 GB for 20 MB) in the page's server, before the checking process and its memory
    limit. The server now leaves every file that is none of the other formats to the checking process."""
    from explorer.models import formats

    parsed = []
    monkeypatch.setattr(formats, "_is_onnx", lambda p: parsed.append(p) or True)  # this process only
    bomb = tmp_path / "bomb.onnx"
    nodes = 200_000
    graph = b"\x0a\x00" * nodes  # GraphProto.node, empty, over and over
    bomb.write_bytes(b"\x08\x08" + b"\x42\x02\x10\x11" + b"\x3a" + _varint(len(graph)) + graph)
    with pytest.raises(ValueError, match=r"^ONNX model 'bomb.onnx' is not valid: "):
        byo.add_model(bomb)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"^model file 'notes.txt' is not a model file the explorer reads: expected"):
        byo.add_model(tmp_path / "notes.txt")
    assert parsed == []


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_formats_come_from_the_bytes(tmp_path):
    from safetensors.torch import save_file

    m = nn.Linear(4, 2)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "a.pt"))
    torch.save(m.state_dict(), tmp_path / "b.safetensors")
    torch.save(m.state_dict(), tmp_path / "c.pt", _use_new_zipfile_serialization=False)  # legacy: a pickle
    onnx_path = _onnx_with_node(tmp_path / "d.bin", "")
    assert [detect_format(tmp_path / n) for n in ("a.pt", "b.safetensors", "c.pt")] == [
        "safetensors", "state_dict", "pickle"]
    assert detect_format(onnx_path) == "onnx"
    (tmp_path / "e.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="'e.onnx' is not a valid ONNX model"):
        detect_format(tmp_path / "e.onnx")


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_trusted_program_that_fails_is_one_line(env, tmp_path):
    """A malformed .pt2 and a TorchScript model whose export fails used to print two tracebacks from
    torch's logger; with --trust-code they now give the explorer's one line."""
    bad = tmp_path / "bad.pt2"
    good = tmp_path / "g.pt2"
    torch.export.save(torch.export.export(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
                                          (torch.zeros(1, 1, 8, 8),)), str(good))
    data = bytearray(good.read_bytes())
    i = data.find(b"models/model.json")
    data[i - 200:i - 100] = b"\0" * 100  # a damaged entry of the archive
    bad.write_bytes(bytes(data))

    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.fft.fft(x.flatten(1)[:, :10]).real

    ts = tmp_path / "fft.pt"
    torch.jit.save(torch.jit.script(Unexportable()), str(ts))
    for path in (bad, ts):
        r = subprocess.run([sys.executable, "-m", "explorer", "add-model", "--checkpoint", str(path), "--trust-code"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "EXPLORER_USER_MODELS": str(env / "user")})
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == "", "torch's exporter printed its graph"
        assert f"'{path.name}'" in r.stderr
