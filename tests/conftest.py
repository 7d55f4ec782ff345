"""Shared fixtures: tiny datasets written in torchvision's on-disk formats (nothing downloads)."""

import gzip
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# one run cache for the whole session, never the repository's own cache/ (tests that need their own set it)
_SESSION_CACHE = tempfile.mkdtemp(prefix="explorer-test-cache-")
os.environ.setdefault("EXPLORER_CACHE_DIR", _SESSION_CACHE)
# no background landscape under the tests, except where a test turns it on: it would compete for the cores
os.environ.setdefault("EXPLORER_LANDSCAPE", "0")


_EXIT_GRACE_S = 120.0  # how long the process may take to end after the summary before the watchdog ends it
_status = [0]


def pytest_sessionfinish(session, exitstatus):
    """The session's run cache goes with the session (it is only ever this session's)."""
    _status[0] = int(exitstatus)
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A thread a test left waiting keeps the process alive after the summary: CI once sat so until its
    limit. A daemon watchdog names the threads still running, prints their stacks and ends the process with
    a failing status; a process that ends normally ends the watchdog with it."""
    import faulthandler
    import sys
    import threading
    import time

    def watchdog():
        time.sleep(_EXIT_GRACE_S)
        left = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon
                and t is not threading.main_thread()]
        err = sys.__stderr__
        err.write(f"\nthe tests ended {_EXIT_GRACE_S:.0f} s ago but these threads still run: {left}\n")
        faulthandler.dump_traceback(file=err)
        err.flush()
        os._exit(_status[0] or 1)

    threading.Thread(target=watchdog, name="tests-exit-watchdog", daemon=True).start()


@pytest.fixture(autouse=True)
def _no_background_work_outlives_its_test():
    """A page test leaves the server process's queue of runs (and any landscape) working in this process; a
    run still going when the next test starts would write into that test's cache. Each test ends them."""
    yield
    import sys

    service = sys.modules.get("explorer.app.service")
    if service is not None:
        service.shutdown()


def settle(at, timeout: float = 300.0):
    """Rerun an AppTest page until its runs are complete, as the browser's periodic refresh does (runs are
    computed off the page's script and the page shows them as they arrive)."""
    import time

    deadline = time.monotonic() + timeout
    while any(x.value.startswith("Computing") for x in at.info) and time.monotonic() < deadline:
        time.sleep(0.25)
        at.run()
    return at

ROOT = Path(__file__).resolve().parent.parent


def open_tab(at, name: str):
    """Open one of the page's tabs, as a click does (only the open tab is drawn), and let its runs complete."""
    at.query_params["tab"] = name
    return settle(at.run())


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """idx format as MNIST ships it: magic (0, 0, type 0x08 uint8, ndim), big-endian dims, data; gzipped
    (as the authors and Debian ship it) when `gz`, with the .gz suffix added."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_mnist(root: Path, cls_name: str = "MNIST", n_train: int = 60, n_test: int = 20, seed: int = 0,
               gz: bool = False) -> Path:
    """A tiny MNIST-format folder (cls_name "FashionMNIST" for Fashion-MNIST's layout)."""
    rng = np.random.default_rng(seed)
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
    return root


def make_cifar(root: Path, classes: int = 10, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    if classes == 10:
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        per = n_train // 5
        for i in range(1, 6):
            batch = {b"data": rng.integers(0, 255, (per, 3072), dtype=np.uint8),
                     b"labels": [int(v) for v in np.arange(per) % 10]}
            (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        test = {b"data": rng.integers(0, 255, (n_test, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in np.arange(n_test) % 10]}
        (base / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
        (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    else:
        base = root / "cifar-100-python"
        base.mkdir(parents=True, exist_ok=True)
        for name, n in (("train", n_train * 5), ("test", n_test * 5)):
            d = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) for v in np.arange(n) % 100]}
            (base / name).write_bytes(pickle.dumps(d, protocol=4))
        (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}))
    return root


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6, size: int = 12,
                      seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture
def mnist_root(tmp_path):
    return make_mnist(tmp_path)


@pytest.fixture
def cifar10_root(tmp_path):
    return make_cifar(tmp_path, 10)


@pytest.fixture(scope="session", autouse=True)
def _session_cache():
    yield
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def png_header(width: int, height: int, colour: int = 2) -> bytes:
    """A PNG that declares width x height (colour type 2: RGB, 0: grey) and holds no pixels: tiny on disk, and
    whatever it declares is what Pillow reports before decoding (image-bomb tests)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def complete(result: dict) -> dict:
    """A test's made-up successful run with every field the cache requires of one (explorer.run.result.malformed)
    that it does not set itself: what a real run always has, with plausible values."""
    from explorer.core.version import SCHEMA_VERSION

    acc = {"top1": 97.0, "top3": 99.0, "top5": 99.5, "loss": 0.1}
    recipe = {"model": "digits_cnn", "dataset": "digits", "seed": 0, "steps": []}
    return {"schema": SCHEMA_VERSION, "recipe": recipe, "label": "test", "model": "digits_cnn", "dataset": "digits",
            "accuracy": acc, "baseline_accuracy": acc, "accuracy_delta": 0.0, "test_samples": 100,
            "size": {"packed_bytes": 100}, "baseline_size": {"packed_bytes": 400},
            "reduction_factor": {"vs_fp32_file": {"packed_bytes": 4.0}, "same_kind": {}}, **result}
