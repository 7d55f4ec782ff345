"""The scheduler that owns the cores: its decisions as pure functions (on a fake clock), the quiet slot and the
priorities between threads and between processes, and workers that die with their parent."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from explorer.run import scheduler as S
from explorer.run.scheduler import Priority

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_line_goes_by_priority_then_first_come():
    clock = Clock()
    line = S.Line(clock)
    for key, p in (("sweep", Priority.SWEEP), ("grid", Priority.LANDSCAPE), ("base", Priority.COMPARISON),
                   ("page", Priority.FOREGROUND), ("near", Priority.NEIGHBOURS), ("page2", Priority.FOREGROUND)):
        line.add(key, p)
        clock.t += 1
    assert line.waited("sweep") == 6 and line.waited("page2") == 1
    line.add("grid", Priority.FOREGROUND)  # a page asks for a point the landscape had queued: it moves up
    line.add("page", Priority.SWEEP)  # asked again at a lower priority: keeps its higher one and its place
    line.discard("near")
    assert "near" not in line and len(line) == 5
    assert [line.pop() for _ in range(6)] == ["grid", "page", "page2", "base", "sweep", None]  # grid came first


def test_at_a_safe_point_timing_comes_first_then_higher_priority_work():
    assert S.decide(Priority.LANDSCAPE, [], timing_waits=False) == S.GO
    assert S.decide(Priority.LANDSCAPE, [Priority.SWEEP], timing_waits=False) == S.GO  # lower work never stops it
    assert S.decide(Priority.LANDSCAPE, [Priority.LANDSCAPE], timing_waits=False) == S.GO
    assert S.decide(Priority.LANDSCAPE, [Priority.FOREGROUND], timing_waits=False) == S.YIELD
    assert S.decide(Priority.FOREGROUND, [Priority.SWEEP], timing_waits=True) == S.QUIET  # even the page's run
    assert S.may_time(Priority.FOREGROUND, [Priority.COMPARISON, Priority.SWEEP])
    assert not S.may_time(Priority.SWEEP, [Priority.NEIGHBOURS])
    assert S.may_time(Priority.SWEEP, [Priority.SWEEP])


def _worker(priority, ticks: list, stop: threading.Event, started: threading.Event):
    with S.priority(priority), S.work():
        started.set()
        while not stop.is_set():
            S.safe_point()
            ticks.append(time.monotonic())
            time.sleep(0.002)


def _steps_during(ticks: list, seconds: float) -> int:
    n = len(ticks)
    time.sleep(seconds)
    return len(ticks) - n


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / ".locks"


def test_no_work_runs_while_a_thread_holds_the_quiet_slot(locks):
    ticks, stop, started = [], threading.Event(), threading.Event()
    t = threading.Thread(target=_worker, args=(Priority.FOREGROUND, ticks, stop, started))
    t.start()
    try:
        assert started.wait(5)
        assert _steps_during(ticks, 0.2) > 5  # working
        with S.quiet_slot():  # taken once the worker reached a safe point
            time.sleep(0.05)
            assert _steps_during(ticks, 0.3) == 0  # paused, even though it is the page's own work
        assert _steps_during(ticks, 0.3) > 5  # going on
    finally:
        stop.set()
        t.join(5)


def test_lower_priority_work_pauses_while_higher_priority_work_goes(locks):
    ticks, stop, started = [], threading.Event(), threading.Event()
    t = threading.Thread(target=_worker, args=(Priority.SWEEP, ticks, stop, started))
    t.start()
    try:
        assert started.wait(5)
        with S.priority(Priority.NEIGHBOURS), S.work():
            time.sleep(0.1)
            assert _steps_during(ticks, 0.3) == 0
        assert _steps_during(ticks, 0.3) > 5
        with S.priority(Priority.SWEEP), S.work():  # the same priority: side by side
            assert _steps_during(ticks, 0.3) > 5
    finally:
        stop.set()
        t.join(5)


def test_a_task_started_inside_work_keeps_its_priority_and_a_waiting_thread_does_not_block_the_timing(locks):
    """A run waits for its baseline-scoring task; a timing elsewhere must still get the slot (the run lets its
    share go while it waits) and the task pauses at its safe points meanwhile."""
    gate = threading.Event()

    def score():
        while not gate.is_set():
            S.safe_point()
            time.sleep(0.002)
        return S.current_priority()

    with S.priority(Priority.COMPARISON), S.work():
        fut = S.start_task(score, name="explorer-test-task")
        took = []

        def timing():
            with S.quiet_slot():
                took.append(1)

        timer = threading.Thread(target=timing)
        with S.waiting():
            timer.start()
            timer.join(5)
            assert took == [1]  # the timing got the slot while this thread waited
        gate.set()
        with S.waiting():
            assert fut.result(timeout=10) == Priority.COMPARISON


def test_a_low_priority_timing_lets_a_page_run_go_between_its_rounds(locks):
    """A sweep's timing holds the slot; a page's run that arrives waits only until the timing's next round,
    and the timing takes the slot back once the page's work is done."""
    order = []
    ran = threading.Event()

    def page():
        with S.priority(Priority.FOREGROUND), S.work():
            order.append("page starts")
            time.sleep(0.3)
            order.append("page ends")
        ran.set()

    with S.priority(Priority.SWEEP), S.quiet_slot():
        t = threading.Thread(target=page)
        t.start()
        assert not ran.wait(0.3)  # a round is going: the page's run waits at the gate
        assert order == []
        S.between_rounds()  # the next round starts only after the page's work
        order.append("next round")
    t.join(5)
    assert order == ["page starts", "page ends", "next round"]


def test_a_task_that_higher_priority_work_waits_for_goes_on_at_that_priority(locks):
    """Scoring started by a sweep-priority run, then waited for by a page's run: it must not yield to the very
    run that waits for it."""
    def score():
        for _ in range(20):
            S.safe_point()
            time.sleep(0.005)
        return "scored"

    with S.priority(Priority.SWEEP):
        fut = S.start_task(score, name="explorer-test-task")
    out = []

    def page():
        with S.priority(Priority.FOREGROUND), S.work():
            out.append(S.result(fut))

    t = threading.Thread(target=page, daemon=True)
    t.start()
    t.join(10)
    assert out == ["scored"]


def test_a_runs_timing_holds_the_quiet_slot_against_the_pages_own_scoring(locks, tmp_path, monkeypatch):
    """The first screen's 43.85x of issue 22: the baseline was timed while the page's own scoring thread ran.
    runner.time_run now times inside the quiet slot: work of the same priority stands still meanwhile."""
    from explorer.compress.recipe import Recipe
    from explorer.run import runner

    result = runner.prepare(Recipe(model="digits_cnn"), tmp_path / "run")
    ticks, stop, started = [], threading.Event(), threading.Event()
    t = threading.Thread(target=_worker, args=(Priority.FOREGROUND, ticks, stop, started))
    t.start()
    during = []

    def measure_latency(*a, between_rounds=None, **k):
        n = len(ticks)
        for r in range(3):
            between_rounds(r / 3)
            time.sleep(0.1)
        during.append(len(ticks) - n)
        return {"engines": {}, "speedup": {}, "reference": "", "deployment_gain": {}, "deployment_reference": "",
                "baseline": {}, "threads": 1, "hardware": {}, "timing_quality": {"load_average": {}}}

    monkeypatch.setattr(runner, "measure_latency", measure_latency)
    try:
        assert started.wait(5) and _steps_during(ticks, 0.2) > 5
        runner.time_run(result, tmp_path / "run", gpu=False)
        assert during == [0]
        assert _steps_during(ticks, 0.2) > 5
    finally:
        stop.set()
        t.join(5)


HOLD = """
import sys, time
from explorer.run import scheduler as S
with S.priority(S.Priority.SWEEP), S.work():
    print("started", flush=True)
"""


def test_a_second_process_waits_while_the_quiet_slot_is_held(locks):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with S.quiet_slot():
        proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        time.sleep(2.0)  # ample for the child to start and reach its work
        assert proc.poll() is None  # still waiting at the gate
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "started" and proc.returncode == 0
    assert {p.name for p in locks.iterdir()} >= {"gate.lock", "slot.lock"}


def test_a_timing_waits_until_another_processs_work_reaches_a_safe_point(locks):
    script = textwrap.dedent("""
        import time
        from explorer.run import scheduler as S
        with S.work():
            print("working", flush=True)
            time.sleep(1.5)  # a stretch with no safe point (an ONNX export)
            print("safe point", flush=True)
            S.safe_point()
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout.readline().strip() == "working"
    t0 = time.monotonic()
    with S.quiet_slot():
        waited = time.monotonic() - t0
    assert 0.8 < waited < 20
    proc.communicate(timeout=30)


PARENT = """
import sys, time
sys.path.insert(0, {helper!r})
from explorer.run import workers
import helper
pool = workers.LocalPool(2, helper.pid)
done, _ = pool.run([("a", ""), ("b", "")])
print(" ".join(str(d["pid"]) for d in done), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sweep_workers_exit_when_their_parent_is_killed(tmp_path):
    (tmp_path / "helper.py").write_text("import os\n\ndef pid(job):\n    return {'key': job[0], 'pid': os.getpid()}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(helper=str(tmp_path))], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) >= 1 and all(_alive(p) for p in pids)  # idle workers, blocked on their pipe
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        parent.kill()


def test_cores_is_what_the_setting_allows(monkeypatch):
    have = len(os.sched_getaffinity(0))
    monkeypatch.setenv("EXPLORER_CORES", "0")
    assert S.cores() == have
    monkeypatch.setenv("EXPLORER_CORES", "1")
    assert S.cores() == 1
    monkeypatch.setenv("EXPLORER_CORES", "-2")
    with pytest.raises(ValueError, match="EXPLORER_CORES='-2'"):
        S.cores()


def test_work_stops_at_its_next_safe_point_when_the_process_exits(tmp_path):
    """A page's run in a daemon thread, frozen inside torch's C++ as the interpreter tore down, aborted the process
    ("terminate called without an active exception", status 134): at exit, work now stops at its next safe point
    and the exit waits for it."""
    script = textwrap.dedent(f"""
        import threading, time, torch
        from explorer.run import scheduler as S
        started = threading.Event()
        def run():
            try:
                with S.work():
                    started.set()
                    while True:
                        S.safe_point()
                        torch.randn(64, 64) @ torch.randn(64, 64)
            except S.Exiting:
                open({str(tmp_path / "stopped")!r}, "w").write("at a safe point")
        threading.Thread(target=run, daemon=True).start()
        started.wait(30)
        time.sleep(0.2)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPLORER_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, timeout=120, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "stopped").read_text() == "at a safe point"
