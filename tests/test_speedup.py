"""Speed-ups like for like, and timings that check themselves (issue 22), with real timing that stays robust
on a loaded machine: no test asserts a time, only what the checks did."""

import os
import subprocess
import sys

import pytest

from explorer.compress import compress
from explorer.compress.prune import PruneConfig
from explorer.core.engines import ORT_CPU_FP32, ORT_CPU_INT8, TORCH_CPU
from explorer.core.stats import ratio_of_medians
from explorer.measure.latency import WARM_ROUNDS, set_quiet_slot, time_rounds, torch_cpu_timer
from explorer.measure.onnx_export import export_onnx, quantize_int8
from explorer.measure.speedup import BASE, measure_latency
from explorer.models.baselines import baseline_data, load_baseline


@pytest.fixture(scope="module")
def baseline():
    model, card = load_baseline("models/digits_cnn-digits.safetensors")
    return model, baseline_data(card)


@pytest.fixture(scope="module")
def onnx_pair(baseline, tmp_path_factory):
    """The baseline and a pruned run, each exported to ONNX fp32 and int8."""
    model, data = baseline
    tmp = tmp_path_factory.mktemp("pair")
    run = compress(model, [PruneConfig(sparsity=0.5)], data).model
    calib = data.calibration(64).numpy()
    paths = {}
    for name, m in (("base", model), ("run", run)):
        export_onnx(m, data.input_shape, tmp / f"{name}.onnx")
        quantize_int8(tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx", calibration=calib)
        paths[name] = (str(tmp / f"{name}.onnx"), str(tmp / f"{name}.int8.onnx"))
    return run, paths


def test_a_round_with_a_cpu_hog_on_the_same_core_is_dropped(baseline):
    """A busy process pinned to the timing thread's core, started in the middle of a session: the rounds it
    ran in lose half the CPU, and are dropped (or, if too few rounds stay clean, the session says so)."""
    import torch

    model, _ = baseline
    x = torch.randn(64, 1, 8, 8)
    core = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    hog: dict = {"proc": None, "attempts": []}
    calls = {"n": 0}

    def between(_fraction: float) -> None:
        attempt = calls["n"]
        calls["n"] += 1
        if attempt == 2:  # the third round runs beside the hog
            hog["proc"] = subprocess.Popen(
                [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}}); print('go', flush=True)\n"
                                       "while True: pass"], stdout=subprocess.PIPE, text=True)
            hog["proc"].stdout.readline()  # it is burning now
        if hog["proc"] is not None and hog["proc"].poll() is None:
            if attempt >= 4:
                hog["proc"].kill()
                hog["proc"].wait()
            else:
                hog["attempts"].append(attempt)

    os.sched_setaffinity(0, {core})  # this thread (the timing thread) on one core
    try:
        sess = time_rounds({"a": torch_cpu_timer(model, x, 1), "b": torch_cpu_timer(model, x, 1)}, rounds=6,
                           budget_s=0.6, between_rounds=between)
    finally:
        os.sched_setaffinity(0, old)
        if hog["proc"] is not None and hog["proc"].poll() is None:
            hog["proc"].kill()
            hog["proc"].wait()
    assert hog["attempts"] == [2, 3]
    assert set(hog["attempts"]) <= set(sess.dropped) or not sess.cpu_ok, sess.record()
    assert all(sess.cpu_share[i] < 0.9 for i in sess.dropped)
    assert sess.figures["a"]["rounds"] == len(sess.figures["b"]["round_ms"])


def test_a_figure_from_a_session_without_the_cpu_is_flagged_not_shown(baseline):
    """A hog on the same core for the whole session: the speed-up is disturbed, and it is not timed again at
    once (that would only add load to a busy machine; it waits for a re-time when the machine is quieter)."""
    model, data = baseline
    core = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}}); "
                            "print('go', flush=True)\nwhile True: pass"], stdout=subprocess.PIPE, text=True)
    hog.stdout.readline()
    os.sched_setaffinity(0, {core})
    try:
        lat = measure_latency(model, data.input_shape, batches=(64,), budget_s=0.3, gpu=False, reference=model,
                              rounds=4, retimes=2)
    finally:
        os.sched_setaffinity(0, old)
        hog.kill()
        hog.wait()
    s = lat["speedup"][TORCH_CPU]["b64"]
    assert s["status"] == "disturbed"
    assert lat["timing_quality"]["disturbed"] == ["speed-up torch_cpu_fp32 b64"]
    check = lat["timing_quality"]["figures"]["speedup"][TORCH_CPU]["b64"]
    assert "cpu" in check["failed"] and not check["accepted"]
    assert lat["timing_quality"]["retimes"] == 0 and "too busy" in lat["timing_quality"]["stopped"]


def test_speedups_are_like_for_like_and_the_gain_is_separate(baseline, onnx_pair):
    model, data = baseline
    run, paths = onnx_pair
    lat = measure_latency(run, data.input_shape, onnx_fp32=paths["run"][0], onnx_int8=paths["run"][1],
                          reference=model, reference_onnx_fp32=paths["base"][0], reference_onnx_int8=paths["base"][1],
                          batches=(8,), budget_s=0.1, gpu=False, rounds=4, retimes=0)
    for engine in (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8):
        s = lat["speedup"][engine]["b8"]
        same = ratio_of_medians(lat["baseline"][engine]["b8"]["round_ms"], lat["engines"][engine]["b8"]["round_ms"])
        assert s["against"] == engine and (s["ratio"], s["ci"]) == (same["ratio"], same["ci"])
    session = next(x for x in lat["timing_quality"]["sessions"] if x["batch"] == "b8")
    assert set(session["timers"]) == {TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8, BASE + TORCH_CPU, BASE + ORT_CPU_FP32,
                                      BASE + ORT_CPU_INT8}
    g = lat["deployment_gain"][ORT_CPU_INT8]["b8"]
    vs_torch = ratio_of_medians(lat["baseline"][TORCH_CPU]["b8"]["round_ms"],
                                lat["engines"][ORT_CPU_INT8]["b8"]["round_ms"])
    assert g["against"] == TORCH_CPU and g["ratio"] == vs_torch["ratio"]
    assert TORCH_CPU not in lat["deployment_gain"]
    for kind in ("speedup", "deployment_gain"):
        for engine, per in lat[kind].items():
            check = lat["timing_quality"]["figures"][kind][engine]["b8"]
            assert per["b8"]["status"] == ("measured" if check["accepted"] else "disturbed")


def test_the_baseline_against_itself_is_one_by_construction(baseline, onnx_pair):
    model, data = baseline
    _, paths = onnx_pair
    lat = measure_latency(model, data.input_shape, onnx_fp32=paths["base"][0], onnx_int8=paths["base"][1],
                          batches=(8,), budget_s=0.05, gpu=False, rounds=4, retimes=0)
    for engine in (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8):
        assert lat["speedup"][engine]["b8"] == {"ratio": 1.0, "ci": [1.0, 1.0], "rounds": 0, "status": "baseline"}
    assert not any(t.startswith(BASE) for s in lat["timing_quality"]["sessions"] for t in s["timers"])
    assert lat["deployment_gain"][ORT_CPU_INT8]["b8"]["against"] == TORCH_CPU  # its own engines, same rounds


def test_every_round_runs_in_the_quiet_slot(baseline):
    import contextlib

    import torch

    model, _ = baseline
    entered = []

    @contextlib.contextmanager
    def slot():
        entered.append(1)
        yield

    set_quiet_slot(slot)
    try:
        sess = time_rounds({"a": torch_cpu_timer(model, torch.randn(2, 1, 8, 8), 1)}, rounds=3, budget_s=0.01)
    finally:
        set_quiet_slot(None)
    assert len(entered) == WARM_ROUNDS + sess.kept + len(sess.dropped) >= 3  # the warm round's calls too


def test_the_baseline_reference_timing_is_the_record_of_its_steady_sessions(tmp_path, monkeypatch):
    """run.timing keeps the reference the reference check compares with: the median of the baseline's last
    steady sessions (every round on the CPU; a run's session passing its other checks) and their range; a session
    that lost the CPU, or failed another check, never enters the record, and the oldest sessions leave it."""
    from explorer.compress.recipe import Recipe
    from explorer.measure.timing_checks import reference_agrees, reference_interval
    from explorer.run import timing

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    fig = {"available": True, "median_ms": 10.0, "ci_ms": [9.8, 10.2]}
    own = Recipe(model="digits_cnn")
    run = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5),))
    busy = {"baseline": {TORCH_CPU: {"b256": fig}},
            "timing_quality": {"sessions": [{"batch": "b256", "cpu_ok": False}]}}
    timing.update_reference(own, 1, busy)
    assert timing.reference_times(own, 1) == {}  # a session that lost the CPU sets nothing
    clean = {**busy, "timing_quality": {"sessions": [{"batch": "b256", "cpu_ok": True}]}}
    timing.update_reference(own, 1, clean)
    first = timing.reference_times(run, 1)[f"{TORCH_CPU}/b256"]  # one book per checkpoint
    assert (first["median_ms"], first["ci_ms"], first["sessions"]) == (10.0, None, 1)  # one session: no spread yet
    assert timing.reference_times(run, 2) == {}  # and per thread count

    def session(ms: float, failed: list[str]) -> dict:
        return {"baseline": {TORCH_CPU: {"b256": {**fig, "median_ms": ms}}},
                "timing_quality": {"figures": {"speedup": {TORCH_CPU: {"b256": {"failed": failed}}}}}}

    def ref() -> dict:
        return timing.reference_times(run, 1)[f"{TORCH_CPU}/b256"]

    timing.update_reference(run, 1, session(30.0, ["narrow"]))  # an unsteady session: not recorded
    assert [h["median_ms"] for h in ref()["history"]] == [10.0]
    for ms in (12.0, 13.0):  # steady sessions, the last failing only the reference check: recorded
        timing.update_reference(run, 1, session(ms, [] if ms < 13 else ["reference"]))
    assert (ref()["median_ms"], ref()["source"]) == (12.0, "a run's session")
    assert ref()["ci_ms"] == reference_interval([10.0, 12.0, 13.0])  # the spread of the three sessions
    hi = ref()["ci_ms"][1]
    assert reference_agrees(hi - 0.1, ref())[0] and reference_agrees(6.0, ref())[0]  # inside, or faster
    assert not reference_agrees(hi + 0.1, ref())[0]
    for _ in range(timing.HISTORY):
        timing.update_reference(own, 1, clean)
    assert ref()["ci_ms"] == [10.0, 10.0] and len(ref()["history"]) == timing.HISTORY  # the oldest forgotten
    assert reference_agrees(11.4, ref())[0] and not reference_agrees(11.6, ref())[0]  # 15% of a steady one
    before = ref()["history"]
    beside = {**clean, "timing_quality": {"sessions": [{"batch": "b256", "cpu_ok": True, "others_busy": 0.7}]}}
    timing.update_reference(own, 1, {**beside, "baseline": {TORCH_CPU: {"b256": {**fig, "median_ms": 20.0}}}})
    slowed = session(20.0, ["reference"])
    slowed["timing_quality"]["figures"]["speedup"][TORCH_CPU]["b256"]["others_busy"] = 0.7
    timing.update_reference(run, 1, slowed)
    assert ref()["history"] == before  # other work kept the other cores busy beside them: not steady




def test_each_slice_of_a_short_timer_starts_warm():
    """The first call after another engine's finds cold caches (slower by an amount that depends on which engines
    share the session, so a baseline's in-round time moved with its partner): it is made untimed."""
    last = {"who": None}

    def timer(name: str):
        def call() -> float:
            cold = last["who"] != name
            last["who"] = name
            return 5.0 if cold else 1.0  # ms, as an engine's own clock would report it
        return call

    sess = time_rounds({"a": timer("a"), "b": timer("b")}, rounds=4, budget_s=0.0, min_calls=2)
    assert sess.figures["a"]["round_ms"] == [1.0] * 4 and sess.figures["b"]["median_ms"] == 1.0


STEADY_PROBE = """
import resource, torch
from torch import nn
from explorer.measure import latency
torch.set_num_threads(1)
m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
x = torch.randn(256, 1, 8, 8)

def faults_per_call():  # the median call's page faults
    counts = []
    with torch.inference_mode():
        for _ in range(3):
            m(x)
        for _ in range(21):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            m(x)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return sorted(counts)[10]

before = faults_per_call()
latency.time_rounds({"t": lambda: None}, rounds=2, budget_s=0.01, warmup=0)
print(before, faults_per_call(), latency.steady_allocator())
"""


def test_timing_keeps_freed_memory_so_a_call_does_not_fault_its_pages_in_again():
    """Before: glibc handed each call's large freed blocks back to the system, and the next call faulted them in
    again (1,600 page faults per batch-256 call of the digits CNN; 15 ms against 9 ms), by an amount that depended
    on what the process had allocated before, so the same model's quiet time moved 40% between sessions. Counted
    in page faults (the operating system's count, not a clock), in a fresh process whose glibc starts where it
    starts by default (blocks from 128 KiB handed back), held there: by default it moves with what the process
    allocated before, which is the trouble, and would make this test pass or fail by chance."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    out = subprocess.run([sys.executable, "-c", STEADY_PROBE], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    before, after = float(out[0]), float(out[1])
    assert before > 100 and after < before / 5, (before, after)
    assert " ".join(out[2:]) == "freed blocks kept for reuse"


def test_the_first_round_after_the_warm_up_calls_is_not_kept():
    """The first round's ratios were off by 15-25% in six of ten sessions of one run (later rounds in about one in
    ten): it is played and not kept. Planted: a timer slow through its first round's calls only."""
    calls = {"b": 0}

    def fast() -> float:
        return 10.0

    def slow_at_first() -> float:
        calls["b"] += 1
        return 30.0 if 3 < calls["b"] <= 7 else 10.0  # after its 3 warm-up calls, the first round's 4 calls

    sess = time_rounds({"a": fast, "b": slow_at_first}, rounds=4, budget_s=1e-6, warmup=3)
    assert WARM_ROUNDS == 1 and calls["b"] > 7
    assert sess.figures["b"]["round_ms"] == [10.0] * 4 and sess.kept == 4


def test_a_re_time_adds_its_rounds_to_the_earlier_sessions_that_had_the_cpu():
    """Ten rounds with two slow ones on one side give an interval too wide to show; the re-time's ten more rounds are
    judged with them (pairs stay pairs), and a session without the CPU pools nothing."""
    from explorer.measure.latency import Session
    from explorer.measure.speedup import pool_rounds
    from explorer.measure.timing_checks import check_speedup

    def session(base, run, cpu_ok=True):
        figs = {"base": {"round_ms": base, "rounds": len(base)}, "run": {"round_ms": run, "rounds": len(run)}}
        return Session(figs, 10, 10 if cpu_ok else 3)

    base1 = [10.0] * 7 + [13.5, 14.0, 14.0]  # three rounds slowed on the baseline's side
    run = [5.0] * 10
    pooled: dict = {}
    first = pool_rounds(session(base1, run), pooled)
    assert "narrow" in check_speedup(first.figures["base"]["round_ms"], first.figures["run"]["round_ms"],
                                     batch=256)["failed"]
    busy = pool_rounds(session([30.0] * 10, run, cpu_ok=False), pooled)
    assert busy.figures["base"]["round_ms"] == [30.0] * 10 and sum(map(len, pooled["base"])) == 10  # judged alone
    second = pool_rounds(session([10.0] * 10, [5.0] * 10), pooled)
    assert second.figures["base"]["rounds"] == 20 and second.figures["base"]["round_ms"][:10] == base1
    assert second.figures["base"]["round_sessions"] == [10, 10]  # its ratio of medians is taken in each
    c = check_speedup(second.figures["base"]["round_ms"], second.figures["run"]["round_ms"], batch=256)
    assert c["accepted"] and c["ratio"] == pytest.approx(2.0)


def test_the_other_cores_busy_share_is_the_machines_count_less_the_timings_own():
    """latency.machine_busy and stolen_share from /proc/stat's counts (planted), and a real session with a busy
    process beside it."""
    import time

    import torch

    from explorer.measure.latency import Jiffies, cpu_jiffies, machine_busy, stolen_share

    tick = 1 / os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    if cores < 2 or cpu_jiffies() is None:
        pytest.skip("needs Linux's /proc/stat and two cores")
    # one second on every core; the timing used one core-second of it, the others as much as `busy` says
    total = round(cores / tick)
    zero = Jiffies(0, 0, 0)
    assert machine_busy(zero, Jiffies(round(1 / tick), 0, total), 1.0) == 0.0
    assert machine_busy(zero, Jiffies(round(cores / tick), 0, total), 1.0) == 1.0
    assert machine_busy(None, Jiffies(1, 0, 2), 0.0) is None
    # time the hypervisor gave other virtual machines is not this machine's work: it is counted apart
    assert machine_busy(zero, Jiffies(round(1 / tick), total // 4, total), 1.0) == 0.0
    assert stolen_share(zero, Jiffies(round(1 / tick), total // 4, total)) == pytest.approx(0.25, abs=0.01)
    model = torch.nn.Linear(256, 256).eval()
    call = torch_cpu_timer(model, torch.randn(64, 256), 1)  # one thread: the other cores are not ours
    quiet = time_rounds({"a": call, "b": call}, rounds=4, budget_s=0.4)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = time_rounds({"a": call, "b": call}, rounds=4, budget_s=0.4)
    finally:
        hog.kill()
        hog.wait()
    assert busy.others_busy is not None and busy.others_busy > 0.5
    assert quiet.others_busy is not None and quiet.others_busy < busy.others_busy



def test_a_profiled_session_is_the_timing_session_with_onnx_runtimes_per_operator_profile(onnx_pair, tmp_path):
    import json
    from pathlib import Path

    import numpy as np
    import onnx

    from explorer.measure.latency import ort_session

    _, paths = onnx_pair
    plain = ort_session(paths["base"][0], 1)
    profiled = ort_session(paths["base"][0], 1, profile_prefix=str(tmp_path / "prof"))
    shape = [2, *plain.get_inputs()[0].shape[1:]]
    feed = {plain.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    np.testing.assert_array_equal(plain.run(None, feed)[0], profiled.run(None, feed)[0])
    written = Path(profiled.end_profiling())
    assert written.parent == tmp_path and written.name.startswith("prof")
    ops = {e["args"]["op_name"] for e in json.loads(written.read_text())
           if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}
    convs = sum(n.op_type == "Conv" for n in onnx.load(paths["base"][0]).graph.node)
    assert convs and "Conv" in ops  # the optimised graph ONNX Runtime ran (fused Gemm and ReLU), operator by operator
