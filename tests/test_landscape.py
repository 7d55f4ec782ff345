"""The background landscape and the run board: queue order, one landscape per model, the foreground first,
cancelling leaves nothing behind."""

import threading
import time
from unittest import mock

import pytest

from explorer.compress.prune_config import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.run import landscape as L
from explorer.run import runner
from explorer.run import scheduler as S
from explorer.run.cache import RunCache
from explorer.run.controls import DEFAULTS
from explorer.run.controls import build as controls_build
from explorer.run.jobs import COMPARISON, FOREGROUND, Board
from explorer.run.runner import run_key
from explorer.run.scheduler import Priority

DIGITS = {"architecture": "digits_cnn", "dataset": "digits", "name": "digits_cnn-digits", "path": None,
          "batchnorm": False}


def test_queue_goes_nearest_first_and_neighbours_of_a_move_first_of_all():
    points = [("a", (0.0, 9.0, 0.0)), ("b", (10.0, 9.0, 0.0)), ("c", (18.0, 6.0, 0.0)), ("d", (19.0, 6.0, 4.0)),
              ("e", (10.0, 6.0, 0.0))]
    assert L.order(points, (10.0, 9.0, 0.0)) == ["b", "e", "a", "c", "d"]
    assert L.order(points, (19.0, 6.0, 4.0)) == ["d", "c", "e", "b", "a"]
    assert L.order(points, (10.0, 9.0, 0.0), first=["d", "x", "d"]) == ["d", "x", "b", "e", "a", "c"]


def test_neighbours_are_one_notch_either_way_on_each_slider():
    c = {**DEFAULTS, "sparsity": 0.5, "bits": "8", "clusters": "16"}
    got = {(n["sparsity"], n["bits"], n["clusters"]) for n in L.neighbours(c)}
    assert got == {(0.45, "8", "16"), (0.55, "8", "16"), (0.5, "7", "16"), (0.5, "fp16", "16"), (0.5, "8", "8"),
                   (0.5, "8", "32")}
    edge = {(n["sparsity"], n["bits"]) for n in L.neighbours({**DEFAULTS, "sparsity": 0.0, "bits": "fp32"})}
    assert (0.05, "fp32") in edge and all(s >= 0 for s, _ in edge) and ("bf16" not in {b for _, b in edge})


def test_two_pages_on_one_model_share_one_landscape(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=3600)  # no tick: nothing runs
    a = lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.5})
    b = lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.9, "bits": "4"})
    assert a is b and len(a.points) == 40 and len({k for k, _, _ in a.points}) == 40
    assert a.position == L.coords({**DEFAULTS, "sparsity": 0.9, "bits": "4"})
    first = a.next(lambda k: False)
    assert first.label() == "prune 90% unstructured -> W4 ptq"  # the point under the sliders comes first
    lands.after_run(DIGITS, {**DEFAULTS, "sparsity": 0.9, "bits": "4"})
    assert a.next(lambda k: False).label() == "prune 85% unstructured -> W4 ptq"  # then its neighbours


def test_the_landscape_leaves_a_pages_own_runs_to_the_page(tmp_path, monkeypatch):
    """The point under a page's sliders is the landscape's nearest; while the page's run board computes it (and
    its baseline), the landscape takes the next point instead: the page's run must not wait on the cache lock for
    the worker's run of the same configuration at background priority."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    controls = {**DEFAULTS, "sparsity": 0.5}
    page = {run_key(controls_build(controls, DIGITS)), run_key(Recipe(model="digits_cnn", dataset="digits"))}
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=3600, asked=lambda key: key in page)
    land = lands.touch(DIGITS, controls)
    assert land.next(lambda k: False).label() == "prune 50% unstructured"  # alone, the page's own point first
    recipe, _ = lands.next_step(land)
    assert run_key(recipe) not in page and recipe.label() != "baseline"
    page.clear()  # the page's runs are done (or left): the landscape may take them again
    assert lands.next_step(land)[0].label() == "prune 50% unstructured"
    lands.stop()


def test_a_pages_neighbours_are_measured_above_the_rest_of_the_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=3600)  # no tick: nothing runs
    land = lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.5})
    assert land.next_step(lambda k: False)[1] == Priority.LANDSCAPE
    lands.after_run(DIGITS, {**DEFAULTS, "sparsity": 0.5})
    recipe, priority = land.next_step(lambda k: False)
    assert priority == Priority.NEIGHBOURS and recipe.label() == "prune 45% unstructured"


def test_a_background_point_waits_while_a_page_run_is_going(tmp_path, monkeypatch):
    """A landscape point goes through the cache and the runner as the scheduler's work at its priority: it
    does not start while a page's own run (foreground work) is going."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    started = threading.Event()

    def prepare(*a, **k):
        started.set()
        raise ValueError("stopped here: the test needs only the start")

    monkeypatch.setattr(runner, "prepare", prepare)
    def measure():
        with S.priority(Priority.LANDSCAPE):  # as the landscape's worker sets it for the point
            L._measure(Recipe(model="digits_cnn").to_json(indent=None))

    point = threading.Thread(target=measure)
    with S.priority(Priority.FOREGROUND), S.work():
        point.start()
        assert not started.wait(1.0)  # held while the foreground runs
    assert started.wait(5)
    point.join(5)


def test_the_landscape_measures_in_a_worker_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=0.2)
    land = lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.0})
    deadline = time.monotonic() + 180
    while land.status(lands.cached)["measured"] < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.0})
    s = land.status(lands.cached)
    assert s["measured"] >= 2 and s["total"] == 40, s
    stored = {k for k in RunCache(tmp_path / "cache").keys()}
    assert {k for k, _, _ in land.points} >= stored  # everything it stored is a grid point
    lands.pause(DIGITS["name"], True)
    assert land.status(lands.cached)["paused"]


def test_cancelling_a_run_leaves_no_partial_cache_entry(tmp_path, monkeypatch):
    from explorer.compress.prune import PruneConfig

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    board = Board(RunCache, run_key)
    slow = Recipe(model="vgg13", steps=(PruneConfig(sparsity=0.5, schedule="gradual", finetune_epochs=20),))
    job = board.submit(slow, "page-1", FOREGROUND)
    deadline = time.monotonic() + 120
    while job.state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into its fine-tuning
    board.watch("page-1", set())  # the page moved on
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.state == "cancelled" and job.result is None
    cache = RunCache(tmp_path / "cache")
    assert cache.keys() == [] and cache.get(job.key) is None
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith((".work-", ".tmp-"))]
    board.stop()


def test_the_board_serves_the_page_before_the_comparison_and_joins_repeated_asks(tmp_path, monkeypatch):
    from explorer.compress.prune import PruneConfig

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    board = Board(RunCache, run_key)
    blocker = board.submit(Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.3),)), "p", FOREGROUND)
    base = board.submit(Recipe(model="digits_cnn"), "p", COMPARISON)
    page = board.submit(Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.6),)), "p", FOREGROUND)
    assert board.submit(Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.6),)), "q") is page
    deadline = time.monotonic() + 120
    while not all(j.finished for j in (blocker, base, page)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(j.state == "done" for j in (blocker, base, page))
    assert page.started < base.started  # the page's own run went before the comparison queued before it
    assert page.first_figures_s is not None and page.first_figures_s < page.total_s
    board.stop()
    with pytest.raises(ValueError, match="does not exist"):
        board.submit(Recipe(model="digits_cnn", checkpoint=str(tmp_path / "nope.safetensors")), "p")


def test_no_background_point_starts_while_a_page_waits_for_its_own_run(tmp_path, monkeypatch):
    """A page's first figures come before the landscape's first point (and its worker process, importing
    PyTorch beside the page's run): no point is submitted while the board holds a page's own run."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    waiting = [True]
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=3600, page_waiting=lambda: waiting[0])
    submitted: list[str] = []
    monkeypatch.setattr(lands, "_submit", lambda recipe, priority, is_retime=False, untimed_point=False:
                        submitted.append(recipe.label()) or mock.Mock(done=lambda: False))
    lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.5})
    lands._tick()
    assert submitted == []
    waiting[0] = False
    lands._tick()
    assert submitted == ["prune 50% unstructured"]
    lands.stop()


def test_the_board_says_whether_a_page_waits_for_its_own_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    board = Board(RunCache, run_key)
    try:
        assert not board.page_waiting()
        job = board.submit(Recipe(model="digits_cnn", dataset="digits"), "s1", COMPARISON)
        assert not board.page_waiting()  # a comparison is not a page's own run
        board.submit(Recipe(model="digits_cnn", dataset="digits", steps=(PruneConfig(sparsity=0.3),)), "s1")
        assert board.page_waiting()
        board.watch("s1", set())  # the page left: its runs are cancelled
        deadline = time.monotonic() + 60
        while board.page_waiting() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not board.page_waiting() and job.cancel.is_set()
    finally:
        board.stop()


def test_landscape_points_are_measured_untimed_first(tmp_path, monkeypatch):
    """The curves fill at the pace of fine-tuning: a point, of the grid or a neighbour of a page's run, is measured
    for its accuracy and sizes; its timing follows once the grid is measured, or when a page asks for it."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=3600)
    submitted: list[tuple] = []

    def submit(recipe, priority, is_retime=False, untimed_point=False):
        submitted.append((priority, untimed_point))
        return mock.Mock(done=lambda: False)

    monkeypatch.setattr(lands, "_submit", submit)
    lands.touch(DIGITS, {**DEFAULTS, "sparsity": 0.5})
    lands._tick()
    assert submitted == [(L.scheduler.Priority.LANDSCAPE, True)]
    lands._future = None
    lands.after_run(DIGITS, {**DEFAULTS, "sparsity": 0.5})
    lands._tick()
    assert submitted[-1] == (L.scheduler.Priority.NEIGHBOURS, True)
    lands.stop()


def test_the_board_times_a_run_stored_untimed_instead_of_serving_it_as_done(tmp_path, monkeypatch):
    """A slider moved onto a landscape point stored untimed: the page's job is not finished from the cache without
    its speed figures; it shows the accuracy and sizes at once (a partial) and times the stored files."""
    from explorer.compress.prune import PruneConfig
    from explorer.run.result import untimed

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.4, finetune_epochs=0),))
    assert untimed(RunCache().get_or_run(recipe, latency=False))
    board = Board(RunCache, run_key)
    try:
        job = board.submit(recipe, "p", FOREGROUND)
        assert job.state != "done" or not untimed(job.result)
        deadline = time.monotonic() + 120
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.state == "done" and not untimed(job.result) and job.result.get("speedup")
        assert not untimed(RunCache().get(job.key))
    finally:
        board.stop()
