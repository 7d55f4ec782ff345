"""Random and mutated bytes into every loader: only the documented ValueError, never another exception,
never a hang (each case has a deadline)."""

import io
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from explorer import byo, pack
from explorer.baselines import load_baseline, load_state_dict_file
from explorer.compress.base import CompressionState
from explorer.data import load_dataset, safe_unpickle
from explorer.recipe import Recipe
from explorer.safezip import extract_zip
from tests.conftest import make_mnist

FUZZ = settings(max_examples=40, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)

_model, _card = load_baseline("models/digits_cnn-digits.safetensors")
GOOD = {
    ".safetensors": save({k: v.contiguous() for k, v in _model.state_dict().items()}),
    ".xpk": pack.pack(_model, CompressionState(), {"name": "digits_cnn", "kwargs": _card["arch_kwargs"]}),
}
_buf = io.BytesIO()
torch.save(_model.state_dict(), _buf)
GOOD[".pt"] = _buf.getvalue()
_zbuf = io.BytesIO()
with zipfile.ZipFile(_zbuf, "w", zipfile.ZIP_DEFLATED) as _z:
    _z.writestr("d/cat/1.png", b"\x89PNG" + b"a" * 300)
    _z.writestr("d/dog/2.png", b"\x89PNG" + b"b" * 300)
GOOD[".zip"] = _zbuf.getvalue()


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


def _only_value_error(fn):
    try:
        fn()
    except ValueError:
        pass


@FUZZ
@given(data=mutated(GOOD[".safetensors"]))
def test_fuzz_safetensors_loader(tmp_path, data):
    p = tmp_path / "m.safetensors"
    p.write_bytes(data)
    _only_value_error(lambda: load_state_dict_file(p))


@FUZZ
@given(data=mutated(GOOD[".pt"]))
def test_fuzz_pt_loader(tmp_path, data):
    p = tmp_path / "m.pt"
    p.write_bytes(data)
    _only_value_error(lambda: load_state_dict_file(p))
    _only_value_error(lambda: byo.detect_format(p))


@FUZZ
@given(data=mutated(GOOD[".xpk"]))
def test_fuzz_packed_file(data):
    _only_value_error(lambda: pack.unpack(data))


@FUZZ
@given(data=mutated(GOOD[".zip"]))
def test_fuzz_zip_extraction(tmp_path, data):
    p = tmp_path / "d.zip"
    p.write_bytes(data)
    out = tmp_path / "out"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    _only_value_error(lambda: extract_zip(p, out))


@FUZZ
@given(data=st.binary(max_size=512))
def test_fuzz_safe_unpickler(data):
    import pickle

    try:
        safe_unpickle(data)
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, UnicodeDecodeError, MemoryError):
        pass  # load_dataset turns each of these into its ValueError naming the file


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_mnist_idx_reader(tmp_path, data):
    root = make_mnist(tmp_path / "m", n_train=20, n_test=10) if not (tmp_path / "m").exists() else tmp_path / "m"
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(data)
    _only_value_error(lambda: load_dataset("mnist", root))


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_recipe_json(text):
    _only_value_error(lambda: Recipe.from_json(text))


@pytest.mark.parametrize("suffix", [".onnx"])
@FUZZ
@given(data=st.binary(max_size=1024))
def test_fuzz_onnx_upload(tmp_path, suffix, data):
    p = tmp_path / f"m{suffix}"
    p.write_bytes(data)
    _only_value_error(lambda: byo.onnx_model_accuracy(p, _DIGITS))


_DIGITS = load_dataset("digits")
