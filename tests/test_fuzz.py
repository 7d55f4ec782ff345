"""Random and mutated bytes into every archive format the explorer opens, through the same entry points
the page and the CLI use (zip datasets, torch zip checkpoints, TorchScript, safetensors, ONNX, CIFAR
batches, packed files, recipes). Every outcome is a success or a one-line ValueError; nothing is written
outside the explorer's own folders (the system temp directory and HOME point into the sandbox, so a stray
write would land there and be seen); nothing is left in scratch space; no case hangs (an alarm fails it)."""

import io
import os
import signal
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from explorer.artifact import pack
from explorer.compress.base import CompressionState
from explorer.compress.recipe import Recipe
from explorer.core.data import load_dataset, safe_unpickle
from explorer.measure.onnx_export import export_onnx
from explorer.models import user as byo
from explorer.models.baselines import load_baseline
from tests.conftest import make_cifar, make_mnist, png_header
from tests.packfiles import Limited, forged, nested

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)
HANG_S = 30

_model, _card = load_baseline("models/digits_cnn-digits.safetensors")
GOOD = {
    ".safetensors": save({k: v.contiguous() for k, v in _model.state_dict().items()}),
    ".xpk": pack.pack(_model, CompressionState(), {"name": "digits_cnn", "kwargs": _card["arch_kwargs"]}),
}
_buf = io.BytesIO()
torch.save(_model.state_dict(), _buf)
GOOD[".pt"] = _buf.getvalue()
_buf = io.BytesIO()
torch.jit.save(torch.jit.script(_model), _buf)
GOOD["torchscript"] = _buf.getvalue()
_zbuf = io.BytesIO()
with zipfile.ZipFile(_zbuf, "w", zipfile.ZIP_DEFLATED) as _z:
    from PIL import Image

    for i, cls in enumerate(("cat", "dog") * 3):  # 3 images a class: the fewest a flat tree's splits need
        _img = io.BytesIO()
        Image.new("L", (8, 8), color=40 * i).save(_img, format="PNG")
        _z.writestr(f"d/{cls}/{i}.png", _img.getvalue())
GOOD[".zip"] = _zbuf.getvalue()
_pbuf = io.BytesIO()
Image.new("RGB", (4, 4)).save(_pbuf, format="PNG")
GOOD_PNG = _pbuf.getvalue()
with tempfile.TemporaryDirectory() as _tmp:
    export_onnx(_model, (1, 8, 8), Path(_tmp) / "m.onnx")
    GOOD[".onnx"] = (Path(_tmp) / "m.onnx").read_bytes()
    make_cifar(Path(_tmp), 10, n_train=10, n_test=10)
    GOOD["cifar"] = (Path(_tmp) / "cifar-10-batches-py" / "data_batch_1").read_bytes()


def mutated(good: bytes):
    """Random bytes, truncations, and byte flips of a valid file."""
    return st.one_of(
        st.binary(max_size=2048),
        st.integers(0, len(good)).map(lambda n: good[:n]),
        st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
            lambda flips: bytes(_flip(good, flips))),
    )


def _flip(good: bytes, flips):
    b = bytearray(good)
    for i, v in flips:
        b[i] = v
    return b


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The explorer's own folders, and everywhere else a stray write could go, inside one folder. A good
    file of each kind goes through first, so the caches libraries make on first use (ONNX Runtime's id
    under HOME, torch's compile cache under TMPDIR) exist before the cases are watched."""
    own = tmp_path / "explorer"
    for name, sub in (("EXPLORER_CACHE_DIR", "cache"), ("EXPLORER_USER_MODELS", "user"),
                      ("EXPLORER_USER_DATA", "data")):
        monkeypatch.setenv(name, str(own / sub))
    for var in ("HOME", "TMPDIR", "TMP", "TEMP"):
        monkeypatch.setenv(var, str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "inputs").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    byo.add_model(_write(tmp_path, "w.pt", GOOD[".pt"]), arch="digits_cnn", name="warm")
    byo.add_model(_write(tmp_path, "w.onnx", GOOD[".onnx"]), name="warm-onnx")
    byo.add_dataset_zip(_write(tmp_path, "w.zip", GOOD[".zip"]), "warm")
    _seen[tmp_path] = set((tmp_path / "elsewhere").rglob("*"))
    return tmp_path


_seen: dict[Path, set] = {}


def _alarm(signum, frame):
    raise TimeoutError(f"a case ran past {HANG_S} s: a hang")


def outcome(sandbox: Path, fn) -> str:
    """Run `fn`: success, or a ValueError of one line; then check where files were written."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        fn()
        result = "ok"
    except ValueError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"not a one-line error: {msg!r}"
        result = "refused"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    stray = sorted(set((sandbox / "elsewhere").rglob("*")) - _seen.get(sandbox, set()))
    assert not stray, f"written outside the explorer's folders: {stray[:5]}"
    scratch = sandbox / "explorer" / "cache" / ".scratch"
    assert not (scratch.is_dir() and any(scratch.iterdir())), f"scratch left behind: {list(scratch.iterdir())}"
    event(result)  # --hypothesis-show-statistics: how many cases each outcome had
    return result


def _write(sandbox: Path, name: str, data: bytes) -> Path:
    p = sandbox / "inputs" / name
    p.write_bytes(data)
    return p


@FUZZ
@given(data=mutated(GOOD[".safetensors"]))
def test_fuzz_safetensors_upload(sandbox, data):
    p = _write(sandbox, "m.safetensors", data)
    outcome(sandbox, lambda: byo.add_model(p, arch="digits_cnn", name="f", replace=True))


@FUZZ
@given(data=mutated(GOOD[".pt"]))
def test_fuzz_torch_zip_checkpoint_upload(sandbox, data):
    p = _write(sandbox, "m.pt", data)
    outcome(sandbox, lambda: byo.add_model(p, arch="digits_cnn", name="f", replace=True))
    outcome(sandbox, lambda: byo.add_model(p, name="g", replace=True))


@FUZZ
@given(data=mutated(GOOD["torchscript"]))
def test_fuzz_torchscript_upload_is_never_loaded(sandbox, data, monkeypatch):
    def never(*a, **k):
        raise AssertionError("a program was loaded without --trust-code")

    monkeypatch.setattr(torch.jit, "load", never)
    monkeypatch.setattr(torch.export, "load", never)
    p = _write(sandbox, "m.pt", data)
    for arch in ("digits_cnn", None):
        outcome(sandbox, lambda a=arch: byo.add_model(p, arch=a, name="f", replace=True))


@FUZZ
@given(data=mutated(GOOD[".onnx"]))
def test_fuzz_onnx_upload(sandbox, data):
    p = _write(sandbox, "m.onnx", data)
    outcome(sandbox, lambda: byo.add_model(p, name="f", replace=True))


@FUZZ
@given(data=mutated(GOOD[".zip"]))
def test_fuzz_dataset_zip_upload(sandbox, data):
    p = _write(sandbox, "d.zip", data)
    outcome(sandbox, lambda: byo.add_dataset_zip(p, "fuzzed"))


@FUZZ
@given(sizes=st.lists(st.tuples(st.integers(1, 60_000), st.integers(1, 60_000)), min_size=1, max_size=4))
def test_fuzz_declared_image_sizes_in_a_dataset_zip(sandbox, sizes):
    """Issue 21: images that declare any size (tiny on disk, as a bomb is): a zip is stored only when every image
    is within the pixel cap, refused in one line naming that cap otherwise, and then nothing is stored."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):  # two classes, one of 3 images: a data set the splits take, whatever is added
            z.writestr(f"d/ok/{i}.png", GOOD_PNG)
        z.writestr("d/fine/0.png", GOOD_PNG)
        for i, (w, h) in enumerate(sizes):
            z.writestr(f"d/c{i % 2}/{i}.png", png_header(w, h))
    name = "z" + "-".join(f"{w}x{h}" for w, h in sizes)
    p = _write(sandbox, "sizes.zip", buf.getvalue())
    over = any(w * h > 16_000_000 for w, h in sizes)
    errors = []

    def add():
        try:
            byo.add_dataset_zip(p, name)
        except ValueError as e:
            errors.append(str(e))
            raise

    assert outcome(sandbox, add) == ("refused" if over else "ok")
    assert not over or "over the cap of 16,000,000 pixels per image (EXPLORER_MAX_IMAGE_PIXELS)" in errors[0]
    assert (sandbox / "explorer" / "data" / name).exists() == (not over)


@FUZZ
@given(data=mutated(GOOD["cifar"]))
def test_fuzz_cifar_batch(sandbox, data):
    root = sandbox / "inputs" / "cifar"
    if not root.exists():
        make_cifar(root, 10, n_train=10, n_test=10)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(data)
    outcome(sandbox, lambda: load_dataset("cifar10", root))


@FUZZ
@given(data=mutated(GOOD[".xpk"]))
def test_fuzz_packed_file(sandbox, data):
    outcome(sandbox, lambda: pack.unpack(data))


@pytest.fixture(scope="module")
def limited():
    child = Limited(GOOD[".xpk"], cap_mb=500)
    yield child
    child.close()


_PATHS = ("features.0", "features.2", "features.5", "classifier.1", "classifier.4", "features.1", "classifier",
          "features.9", "classifier.1.weight", "extra", "")
_SIZE = st.one_of(st.integers(1, 70_000), st.integers(1, 300), st.integers(-3, 0), st.integers(2**31, 2**80),
                  st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=3))


@st.composite
def declared(draw):
    """Layers of any size at any path, maybe with the tensor table forged to match them, maybe inside a header
    nested deep."""
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["Linear", "Conv2d", "BatchNorm2d", "Factorized", "Attention", "Sequential"]))
        size = st.one_of(_SIZE, st.sampled_from([1, 16, 64, 256]))
        if kind == "Linear":
            args = {"in_features": draw(size), "out_features": draw(size), "bias": draw(st.booleans())}
        elif kind == "Conv2d":
            k = draw(st.one_of(st.integers(1, 12), _SIZE))
            args = {"in_channels": draw(size), "out_channels": draw(size), "kernel_size": [k, k],
                    "padding": draw(st.sampled_from([[1, 1], [0, 0], "same", 3]))}
        else:
            args = {"num_features": draw(size)} if kind == "BatchNorm2d" else {}
        entries.append({"path": draw(st.sampled_from(_PATHS)), "type": kind, "args": args})
    return entries, draw(st.booleans()), draw(st.sampled_from([0, 0, 3, 65, 1000, 100_000]))


def _forge(entries, match_table: bool, deep: int) -> bytes:
    def change(header):
        header["structure"] = entries
        table = {e["name"]: e for e in header["tensors"]}
        for e in entries if match_table else ():
            a = e["args"]
            shape = ([a["out_features"], a["in_features"]] if e["type"] == "Linear" else
                     [a["out_channels"], a["in_channels"], *a["kernel_size"]] if e["type"] == "Conv2d" else None)
            if shape and f"{e['path']}.weight" in table:
                table[f"{e['path']}.weight"]["shape"] = shape
                if f"{e['path']}.bias" in table:
                    table[f"{e['path']}.bias"]["shape"] = shape[:1]

    blob = forged(change, GOOD[".xpk"])
    return nested(blob, deep) if deep else blob


@FUZZ
@given(case=declared())
def test_fuzz_declared_sizes_and_depths_in_a_packed_file(limited, case):
    """Issue 33: every hostile file gives PackError within 2 s and 500 MB (a child process's address space is
    capped 500 MB above its start); a file whose layers are the architecture's own still loads. Before, one
    declared Linear(40000, 40000) allocated 6.7 GB, a deep header raised RecursionError."""
    kind, msg, seconds, grown = limited.unpack(_forge(*case))
    assert kind in ("ok", "PackError"), f"{kind}: {msg}"
    assert "\n" not in msg, msg
    assert seconds < 2.0 and grown < 500 * 2**20, (seconds, grown, msg)
    event(kind)


def _plain(obj: object) -> bool:
    """Only what safe_unpickle documents: containers, strings, numbers and numpy arrays of numbers or bytes."""
    if isinstance(obj, dict):
        return all(_plain(k) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind in "biufcSUV"
    return obj is None or isinstance(obj, (str, bytes, bytearray, int, float, complex, np.dtype))


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), mutated(GOOD["cifar"])))
def test_fuzz_safe_unpickler(data):
    """Every outcome is a documented one: plain data back, or one ValueError of one line that says which refusal."""
    try:
        obj = safe_unpickle(data)
    except ValueError as e:
        msg = str(e)
        assert msg.startswith(("refused global ", "not a pickle of arrays (")), f"an undocumented refusal: {msg!r}"
        assert "\n" not in msg, f"not one line: {msg!r}"
        event("refused")
        return
    assert _plain(obj), f"safe_unpickle returned {type(obj).__name__}, which is not plain data"
    event("ok")


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_mnist_idx_reader(sandbox, data):
    root = sandbox / "inputs" / "m"
    if not root.exists():
        make_mnist(root, n_train=20, n_test=10)
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(data)
    outcome(sandbox, lambda: load_dataset("mnist", root))


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_recipe_json(sandbox, text):
    p = _write(sandbox, "r.json", text.encode("utf-8", "surrogatepass"))
    outcome(sandbox, lambda: Recipe.from_file(p))


def test_outcome_sees_a_stray_write(sandbox):
    """The harness itself: a write to the system temp directory is caught."""
    with pytest.raises(AssertionError, match="written outside"):
        outcome(sandbox, lambda: tempfile.mkstemp())
    assert os.environ["TMPDIR"].startswith(str(sandbox))
