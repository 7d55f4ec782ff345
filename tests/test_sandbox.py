"""Hostile user models (issue 21): an ONNX graph that never ends or asks for gigabytes, a deflated checkpoint that
unpacks to gigabytes. Each is refused in one line, within the limits, without harm to the calling process or
to the model already stored under the name."""

import io
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from explorer.core import settings
from explorer.models import baselines, sandbox
from explorer.models import user as byo
from tests.conftest import ROOT


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_USER_DATA", str(tmp_path / "data"))
    return tmp_path


def _classifier(path, extra_nodes, extra_inits, extra_term):
    """A digits-shaped ONNX model, (N, 1, 8, 8) -> (N, 10) logits, with the scalar `extra_term` added to them."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w")
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             *extra_nodes, helper.make_node("Add", ["mm", extra_term], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              [w, *extra_inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def loop_model(path, trips: int):
    """A Loop of `trips` iterations adding 0 to a scalar: 10**12 of them never end."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "zero"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    inits = [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array(0.0, np.float32), "v0")]
    return _classifier(path, [helper.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body)], inits, "v")


def big_tensor_model(path, n: int):
    """A ConstantOfShape of `n` float ones, summed into the logits: 4n bytes at run time from a 3 kB file."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0)]
    return _classifier(path, nodes, [numpy_helper.from_array(np.array([n], np.int64), "shape")], "s")


def _stored(env) -> list[str]:
    folder = env / "user"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _checkers() -> list:
    """Child processes other than the page's landscape worker, which an earlier page test may have left running."""
    return [p for p in multiprocessing.active_children() if p.name != "explorer-landscape-worker"]


def test_check_limits_are_settings_with_bounds():
    assert settings.parse("EXPLORER_CHECK_TIMEOUT_S") == 60 and settings.parse("EXPLORER_CHECK_MAX_MB") == 4096
    with pytest.raises(ValueError,
                       match=r"^EXPLORER_CHECK_TIMEOUT_S='0' must be a whole number of seconds >= 1, at most 3600 "):
        settings.parse("EXPLORER_CHECK_TIMEOUT_S", "0")
    with pytest.raises(ValueError,
                       match=r"^EXPLORER_CHECK_MAX_MB='1e9' must be a whole number of megabytes >= 64, at most 262144"):
        settings.parse("EXPLORER_CHECK_MAX_MB", "1e9")


def test_an_endless_loop_is_refused_in_time_and_the_stored_model_kept(env, monkeypatch):
    """The Loop runs in a child that is killed at the limit: the caller gets one line, spends no CPU on the
    loop, has no process left behind, and the model stored under the name before is untouched."""
    kept = byo.add_model(loop_model(env / "three.onnx", 3), name="mine")
    before = (baselines.sha256_file(kept["path"]), _stored(env))
    assert kept["checked"] == {"process": "child", "timeout_s": 60, "max_mb": 4096}

    monkeypatch.setenv("EXPLORER_CHECK_TIMEOUT_S", "5")
    hostile = loop_model(env / "loop.onnx", 10**12)
    outcome: dict = {}

    def add():
        try:
            byo.add_model(hostile, name="mine", replace=True)
        except ValueError as e:
            outcome["error"] = str(e)

    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    worker = threading.Thread(target=add, daemon=True)  # on a hang the test fails here instead of hanging
    worker.start()
    worker.join(240)
    cpu1, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    assert not worker.is_alive(), "the Loop of 10**12 iterations was never stopped"
    assert outcome["error"] == ("model 'loop.onnx' took longer than 5 s to check (a loop, or a graph too large to "
                                "run here): refused (the limit is EXPLORER_CHECK_TIMEOUT_S=5)")
    assert elapsed >= 5  # it was given its time
    assert (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime) < 4  # the loop ran elsewhere
    assert _checkers() == []  # the child was killed and reaped
    assert (baselines.sha256_file(kept["path"]), _stored(env)) == before
    assert not list((env / "cache" / ".scratch").iterdir())


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_the_command_line_refuses_an_endless_loop_in_one_line(env):
    hostile = loop_model(env / "loop.onnx", 10**12)
    run_env = {**os.environ, "EXPLORER_CHECK_TIMEOUT_S": "5", "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, "-m", "explorer", "add-model", "--checkpoint", str(hostile)],
                              env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("add-model never returned from an ONNX Loop of 10**12 iterations")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("error: model 'loop.onnx' took longer than 5 s to check (a loop, or a graph too large "
                           "to run here): refused (the limit is EXPLORER_CHECK_TIMEOUT_S=5)\n")
    assert _stored(env) == []


def test_a_graph_that_needs_more_memory_than_the_limit_is_refused(env, monkeypatch):
    monkeypatch.setenv("EXPLORER_CHECK_MAX_MB", "256")
    hostile = big_tensor_model(env / "big.onnx", 2**28)  # 1 GB of ones at run time
    with pytest.raises(ValueError) as e:
        byo.add_model(hostile, name="big")
    assert str(e.value) == ("model 'big.onnx' needed more than 256 MB of memory to check (a graph or a tensor too "
                            "large to run here): refused (the limit is EXPLORER_CHECK_MAX_MB=256)")
    assert _stored(env) == []


def hog(chunks: int, chunk_mb: int) -> int:
    """Grows by `chunk_mb` at a time, each chunk written: the parent's watch on resident memory stops it."""
    sandbox.start_clock()
    kept = []
    for _ in range(chunks):
        kept.append(np.ones(chunk_mb * 2**20, np.uint8))
        time.sleep(0.02)
    return len(kept)


def test_a_child_growing_past_the_memory_limit_is_killed(monkeypatch):
    monkeypatch.setenv("EXPLORER_CHECK_MAX_MB", "128")
    with pytest.raises(ValueError, match=r"^the test's hog needed more than 128 MB of memory to check"):
        sandbox.run_checked(hog, 40, 16, what="the test's hog")  # 640 MB in 16 MB steps
    assert _checkers() == []


def crash() -> None:
    sandbox.start_clock()
    os.abort()  # as an uncaught C++ exception in a runtime's thread does


def test_a_check_that_crashes_is_one_line():
    with pytest.raises(ValueError) as e:
        sandbox.run_checked(crash, what="model 'x.onnx'")
    assert str(e.value) == ("model 'x.onnx' crashed the process that checked it (killed by SIGABRT; the check allows "
                            "60 s and 4,096 MB): refused")


def whoami() -> tuple[int, str | None, str]:
    return os.getpid(), os.environ.get("EXPLORER_TEST_MARK"), os.getcwd()


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_a_checking_process_is_reused_with_the_callers_settings_until_it_fails(monkeypatch, tmp_path):
    """Loading torch costs seconds, so a process that answered is kept for the next check; it takes each
    check's settings and folder from the caller as they are then, and one that failed is never used again."""
    monkeypatch.setenv("EXPLORER_TEST_MARK", "a")
    first = sandbox.run_checked(whoami, what="w")
    monkeypatch.setenv("EXPLORER_TEST_MARK", "b")
    monkeypatch.chdir(tmp_path)
    again = sandbox.run_checked(whoami, what="w", reuse=False)
    assert again == (first[0], "b", str(tmp_path)) and first[0] != os.getpid()
    fresh = sandbox.run_checked(whoami, what="w")
    assert fresh[0] != first[0]  # not reused after reuse=False (code the user trusted)
    with pytest.raises(ValueError, match="crashed the process that checked it"):
        sandbox.run_checked(crash, what="w")
    assert sandbox.run_checked(whoami, what="w")[0] not in (first[0], fresh[0])


def deflated_checkpoint(path, n_bytes: int):
    """torch.save's zip of one zero tensor of `n_bytes`, re-written with its records deflated (torch reads it)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(n_bytes // 4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    return path


def test_a_deflated_checkpoint_bomb_is_refused_before_torch_reads_it(env, monkeypatch):
    bomb = deflated_checkpoint(env / "bomb.pt", 64 * 2**20)  # 64 MB of records in about 66 kB
    assert bomb.stat().st_size < 2**20 and torch.load(bomb, weights_only=True)["w"].numel() == 16 * 2**20

    def reached(*a, **k):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", reached)
    with pytest.raises(ValueError, match=r"^checkpoint 'bomb.pt' declares records 1,0\d\dx larger than their "
                                         r"compressed bytes, over the cap of 200x \(EXPLORER_ZIP_MAX_RATIO\): "
                                         "refused before reading"):
        baselines.load_state_dict_file(bomb, shown="bomb.pt")
    monkeypatch.setenv("EXPLORER_ZIP_MAX_RATIO", "5000")
    monkeypatch.setenv("EXPLORER_ZIP_MAX_MB", "16")
    with pytest.raises(ValueError, match=r"^checkpoint 'bomb.pt' declares 64 MB of records, over the cap of 16 MB "
                                         r"a zip may expand to \(EXPLORER_ZIP_MAX_MB\): refused before reading$"):
        baselines.load_state_dict_file(bomb, shown="bomb.pt")
    monkeypatch.delenv("EXPLORER_ZIP_MAX_RATIO")
    with pytest.raises(ValueError, match=r"^checkpoint 'bomb.pt' declares 64 MB of records"):
        byo.add_model(bomb, arch="digits_cnn", name="bomb")  # the same refusal from the checking process
    assert _stored(env) == []


def _state(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a live process; None once it has gone (a zombie has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[0])


def _checking_child(pid: int) -> int | None:
    """The spawned checking process among `pid`'s children (not multiprocessing's resource tracker)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        child = int(stat.parent.name)
        try:
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if (_state(child) or (0, ""))[0] == pid and b"multiprocessing-fork" in cmd:
            return child
    return None


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_a_check_whose_caller_was_killed_stops_itself(env):
    """A server killed mid-check, so its kill of the child never comes: the child stops itself instead of
    running the loop at 100% CPU for ever."""
    hostile = loop_model(env / "loop.onnx", 10**12)
    code = f"from explorer.models import user; user.add_model({str(hostile)!r}, name='x')"
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, checker = time.monotonic() + 120, None
        while checker is None and time.monotonic() < deadline:
            checker = _checking_child(caller.pid)
            time.sleep(0.2)
        assert checker is not None, "no checking process was started: the Loop runs in the caller itself"
        while not list((env / "cache" / ".scratch").glob("*/model.onnx")) and time.monotonic() < deadline:
            time.sleep(0.2)  # staged: the data set is loaded and the model about to run
        time.sleep(2)
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 120
    while _state(checker) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(checker) is None, "the checking process outlived its caller"


@pytest.mark.slow  # 25 s, run by `make test-all`: the refusal itself is test_an_endless_loop_is_refused_in_time...
def test_the_page_refuses_an_endless_loop_and_stores_nothing(env, monkeypatch):
    """The page's "Your model": the spinner ends with the refusal instead of running for ever."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import settle

    monkeypatch.setenv("EXPLORER_CHECK_TIMEOUT_S", "5")
    hostile = loop_model(env / "loop.onnx", 10**12)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["baseline"] = "digits_cnn-digits"
    settle(at.run())
    at.file_uploader(key="byo_model").set_value(("loop.onnx", hostile.read_bytes(), "application/octet-stream"))
    settle(at.run())
    settle(at.button(key="byo_add").click().run())
    assert not at.exception
    errors = [e.value for e in at.error]
    # the page escapes markdown in what it shows (the file's name came from the visitor)
    assert any("'loop.onnx' took longer than 5 s to check" in e.replace("\\", "") for e in errors), errors
    assert not [s.value for s in at.success if "Added" in s.value]
    assert _stored(env) == []


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_a_loop_that_runs_only_on_the_timing_batch_is_refused_when_added(env, monkeypatch):
    """A Loop of 10**12 iterations only for a batch of 256 inputs: the test images (one batch of 359, and 2
    for the trial) pass, the page's latency timing at batch 256 would hang the server. Added, it is refused:
    the check also runs the inputs the page gives the model later."""
    monkeypatch.setenv("EXPLORER_CHECK_TIMEOUT_S", "5")
    from explorer.core.engines import BATCH_SIZES

    assert 256 in BATCH_SIZES
    i64 = TensorProto.INT64
    inits = [numpy_helper.from_array(np.array([256], np.int64), "n256"),
             numpy_helper.from_array(np.array([10**12], np.int64), "huge"),
             numpy_helper.from_array(np.array([0], np.int64), "first"),
             numpy_helper.from_array(np.array([1], np.int64), "one_i"),
             numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array(0.0, np.float32), "v0")]
    nodes = [helper.make_node("Shape", ["input"], ["shape"]),
             helper.make_node("Slice", ["shape", "first", "one_i"], ["batch"]),
             helper.make_node("Equal", ["batch", "n256"], ["is256"]),
             helper.make_node("Cast", ["is256"], ["is256_i"], to=i64),
             helper.make_node("Mul", ["is256_i", "huge"], ["trips1"]),
             helper.make_node("Squeeze", ["trips1"], ["trips"])]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "zero"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", i64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    nodes.append(helper.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body))
    sly = _classifier(env / "sly.onnx", nodes, inits, "v")
    from explorer.measure.onnx_export import onnx_logits

    assert onnx_logits(sly, np.zeros((359, 1, 8, 8), np.float32)).shape == (359, 10)  # the test images pass
    with pytest.raises(ValueError, match=r"^model 'sly.onnx' took longer than 5 s to check"):
        byo.add_model(sly, name="sly")
    assert _stored(env) == []


def data_hog(chunks: int, chunk_mb: int, how: str) -> int:
    """Runs out of memory while it prepares the data it checks on: grows until the parent's watch stops it, or asks
    for more than the address space allows; after a preparation that fitted, `how="model"` does so outside it."""
    sandbox.start_clock()
    with sandbox.preparing("the test's images at 512x512"):
        if how == "grow":
            return hog(chunks, chunk_mb)
        if how == "raise":
            return len(bytearray(2**44))  # 16 TB: refused by the address-space limit (or by the kernel) at once
    return len(bytearray(2**44))


@pytest.mark.parametrize("how", ["grow", "raise"])
def test_memory_run_out_while_preparing_the_data_names_the_data_not_the_model(monkeypatch, how):
    """Issue 33: `add-model --image-size 512` ran out of memory resizing the data set in the check, and the refusal
    blamed the model ("a graph or a tensor too large to run here"). Work the check marks as preparing its data is
    named as what it is; the same failure in the model's own time still names the model."""
    monkeypatch.setenv("EXPLORER_CHECK_MAX_MB", "128")
    with pytest.raises(ValueError) as e:
        sandbox.run_checked(data_hog, 40, 16, how, what="model 'w.safetensors'")  # 640 MB in 16 MB steps
    assert str(e.value) == ("the test's images at 512x512 needed more than 128 MB of memory while model "
                            "'w.safetensors' was being checked: the data is too large to check on here, not the model: "
                            "refused (the limit is EXPLORER_CHECK_MAX_MB=128; a smaller image size, --image-size, "
                            "needs less)")
    if how == "raise":
        with pytest.raises(ValueError, match=r"^model 'w.safetensors' needed more than 128 MB of memory to check "
                                             r"\(a graph or a tensor too large to run here\)"):
            sandbox.run_checked(data_hog, 0, 0, "model", what="model 'w.safetensors'")
    assert _checkers() == []


def test_an_added_model_at_an_image_size_too_large_names_the_data_not_the_model(env, monkeypatch):
    """Issue 33: the data set the check resizes is held to EXPLORER_MAX_DECODED_MB before it is made, in the checking
    process too; and one within that cap but past the check's memory is named as the data, not as the model."""
    weights = ROOT / "models" / "digits_cnn-digits.safetensors"
    monkeypatch.setenv("EXPLORER_MAX_DECODED_MB", "16")
    with pytest.raises(ValueError) as e:
        byo.add_model(weights, arch="digits_cnn", image_size=64, name="big")
    assert str(e.value) == ("image size 64 would make the 1,797 images of digits take 28 MB, above "
                            "EXPLORER_MAX_DECODED_MB=16: choose a smaller image size (--image-size), or raise the cap "
                            "where the memory is there")
    monkeypatch.setenv("EXPLORER_MAX_DECODED_MB", "1024")
    monkeypatch.setenv("EXPLORER_CHECK_MAX_MB", "64")
    with pytest.raises(ValueError) as e:
        byo.add_model(weights, arch="digits_cnn", image_size=256, name="big")  # 1,797 x 256 x 256 floats: 449 MB
    assert str(e.value).startswith("the digits images at 256x256 needed more than 64 MB of memory while model "
                                   "'digits_cnn-digits.safetensors' was being checked: the data is too large to check "
                                   "on here, not the model: refused")
    assert _stored(env) == []


def test_concurrent_checks_never_pass_the_cap_and_the_others_are_told_they_wait(env, monkeypatch):
    """Issue 33: every session adding a model got a checking process of its own, of up to EXPLORER_CHECK_MAX_MB each
    (three adding torchvision:vit_l_16 took 7.3 GB). Three checks asked at once, with a cap of two: never more than
    two run, and the third is told it waits for two."""
    from tests.checkjobs import overlap

    monkeypatch.setenv("EXPLORER_MAX_CHECKS", "2")
    running = env / "running"
    running.mkdir()
    seen, told = [], []

    def check() -> None:  # each holds its turn until a third runs beside it, or 3 s pass
        seen.append(sandbox.run_checked(overlap, str(running), 2, 3.0, what="w", on_wait=told.append))

    threads = [threading.Thread(target=check) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(seen) == 3 and max(seen) <= 2, seen
    assert told == [2]
    assert sandbox.waiting(2) == ("The check is waiting for 2 others to finish (at most 2 run at once: "
                                  "EXPLORER_MAX_CHECKS).")
    assert settings.parse("EXPLORER_MAX_CHECKS") == 2
    with pytest.raises(ValueError, match=r"^EXPLORER_MAX_CHECKS='0' must be a whole number of checks >= 1, at most 64"):
        settings.parse("EXPLORER_MAX_CHECKS", "0")


def test_an_architecture_too_large_for_the_memory_limit_is_refused_before_it_is_built(env, monkeypatch):
    """Issue 33: torchvision:vit_h_14 (630 million parameters, 2.4 GB of weights) was built in the checking process
    and only then killed at the memory limit, having taken the memory; its parameters, counted without memory,
    now refuse it before it is built, in one line that says what it needs and what to raise."""
    from safetensors.torch import save_file

    monkeypatch.setenv("EXPLORER_CHECK_MAX_MB", "2048")  # below what it needs, with room for a loaded machine
    save_file({"heads.head.weight": torch.zeros(10, 1280)}, env / "huge.safetensors")
    with pytest.raises(ValueError) as refused:
        byo.add_model(env / "huge.safetensors", arch="torchvision:vit_h_14", name="huge")
    assert str(refused.value) == (
        "architecture 'torchvision:vit_h_14' has 630,275,850 parameters, which need about 3,006 MB to check (4 bytes "
        "each, and a quarter more to build and run it), over the limit of 2,048 MB: refused before it is built (the "
        "limit is EXPLORER_CHECK_MAX_MB=2048)")
    assert _stored(env) == []
    with pytest.raises(ValueError, match=r"^architecture 'x' has 1,000,000,000 parameters, which need about 4,769 MB"):
        sandbox.check_weights("x", 10**9)
    monkeypatch.setenv("EXPLORER_CHECK_MAX_MB", "8192")
    sandbox.check_weights("x", 10**9)  # within the limit: nothing to say


def _release_once_queued(other, cache) -> None:
    """The other process's check ends once this process's check has joined the queue behind it."""
    deadline = time.monotonic() + 60
    while not list((cache / ".locks" / "checks").glob("wait-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # its first look at the queue, and its word, come right after it joins
    other.communicate("\n")


def test_the_command_line_and_the_page_say_their_check_waits_for_another_process(env, monkeypatch, capsys):
    """The cap holds across processes: with one check at a time, a check another process runs (the page's, beside
    the command line's add-model) makes this one wait, and it says so in one line."""
    from explorer.app import service
    from explorer.app.cli import main
    from tests.test_slots import other_process

    monkeypatch.setenv("EXPLORER_MAX_CHECKS", "1")
    model, _ = baselines.load_baseline(ROOT / "models" / "digits_cnn-digits.safetensors")
    torch.save(model.state_dict(), env / "m.pt")
    said = "The check is waiting for 1 other to finish (at most 1 run at once: EXPLORER_MAX_CHECKS).\n"
    cli = ["add-model", "--checkpoint", str(env / "m.pt"), "--arch", "digits_cnn"]
    for add in (lambda: main(cli) == 0,
                lambda: service.add_model(str(env / "m.pt"), arch="digits_cnn", dataset="digits", root=None,
                                          name="page", on_wait=lambda s: print(s, file=sys.stderr))["name"] == "page"):
        other = other_process()
        threading.Thread(target=_release_once_queued, args=(other, env / "cache")).start()
        assert add()
        other.wait(30)
        assert capsys.readouterr().err == said
