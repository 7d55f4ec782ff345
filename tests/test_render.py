"""One pass per render: a cached configuration's page asks the backend for each thing once, and hashes no file when
nothing changed. A slider move used to call into the run layer 17 times, build the results table twice, and hash
every stored result.json (about 120 files) for the landscape's status, every 3 s.

What is counted: calls from the page (explorer.app) into the run layer's stateful parts, the modules that read or
write the cache folder, its locks and the background queues and processes, a RunCache made included. The run
layer's pure functions (the controls' recipe builder, the reading of a speed-up) and attribute reads are not
counted."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from unittest import mock

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, settle

STATEFUL = ("explorer.run.cache", "explorer.run.landscape", "explorer.run.jobs", "explorer.run.executor",
            "explorer.run.runner", "explorer.run.sensitivity", "explorer.run.timing", "explorer.run.onnx",
            "explorer.run.workers", "explorer.run.control")


@pytest.fixture(params=["0", pytest.param("1", marks=pytest.mark.slow)], ids=["no-fine-tuning", "fine-tuning"])
def counted(request, monkeypatch, tmp_path):
    """The page on a cached digits configuration, with the background grid on (its worker never started); with
    fine-tuning, its same-budget control is queued, stored and compared with too."""
    from explorer.run import cache as cache_mod
    from explorer.run import landscape

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LANDSCAPE", "1")
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    monkeypatch.setattr(landscape.Landscapes, "_submit", lambda self, *a, **k: mock.Mock(done=lambda: False))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for k, v in {"baseline": "digits_cnn-digits", "sparsity": "0.3", "prune_epochs": request.param}.items():
        at.query_params[k] = v
    settle(at.run(), timeout=600)
    settle(at.run())  # the run, its baseline (and its control) are stored; the page has seen them
    time.sleep(1.2)  # a file written within the last second is hashed again (one clock tick could hold two writes)
    at.run()  # ...so the page looks once more, now that nothing is that new
    hashed = []
    real = cache_mod._hash
    monkeypatch.setattr(cache_mod, "_hash", lambda path, data: hashed.append(path) or real(path, data))
    return at, hashed


def _property_code() -> set:
    """The code of every property of the counted modules' classes: reading one is an attribute read."""
    import importlib
    import inspect

    out = set()
    for name in STATEFUL:
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            out |= {p.fget.__code__ for p in vars(cls).values() if isinstance(p, property) and p.fget}
    return out


def _calls_during(fn) -> Counter:
    calls: Counter = Counter()
    reads = _property_code()

    def profile(frame, event, arg):
        if event != "call":
            return
        where = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        name = frame.f_code.co_name
        counted = not name.startswith("_") or name == "__init__"
        if where in STATEFUL and caller.startswith("explorer.app") and counted and frame.f_code not in reads:
            calls[f"{where}.{name}"] += 1

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return calls


def test_a_cached_render_calls_into_the_run_layer_at_most_ten_times_and_hashes_nothing(counted):
    at, hashed = counted
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    hashed.clear()
    calls = _calls_during(at.run)
    assert not at.exception
    assert sum(calls.values()) <= 10, calls
    assert calls["explorer.run.landscape.status_of"] == 1, calls  # the status line and the curves share it
    assert hashed == []  # nothing changed since the last render: no file is hashed again
