"""The page's run board (explorer.run.jobs): visitors take turns, each visitor's share is bounded, and a closed tab
leaves no work behind. The runs here are stand-ins that wait until the test lets them finish, so the order the
board starts them in is seen exactly, without computing anything."""

from __future__ import annotations

import threading
import time

import pytest

from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.run import jobs
from explorer.run.jobs import COMPARISON, FOREGROUND, Board


class Runs:
    """A cache whose every run waits for `release(key)`, reporting progress meanwhile, and records its start."""

    def __init__(self):
        self.started: list[str] = []
        self.go: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def __call__(self):  # the board's cache factory
        return self

    def peek(self, key):
        return None

    def get(self, key):
        return None

    def release(self, key: str) -> None:
        with self.lock:
            self.go.setdefault(key, threading.Event()).set()

    def get_or_run(self, recipe, progress=None, partial=None):
        key = key_of(recipe)
        with self.lock:
            self.started.append(key)
            go = self.go.setdefault(key, threading.Event())
        try:
            while not go.wait(0.02):
                progress(0.5, "fine-tuning")
        except jobs.Cancelled as e:  # as the real cache does: a cancelled run stores nothing and says so
            return {"status": "failed", "error": str(e)}
        return {"status": "ok", "recipe": recipe.to_dict()}


def key_of(recipe: Recipe) -> str:
    return f"{recipe.model}-{recipe.seed}"


def expensive(seed: int) -> Recipe:  # fifty epochs of gradual pruning on the biggest zoo model
    return Recipe(model="vgg13", seed=seed, steps=(PruneConfig(sparsity=0.5, schedule="gradual", finetune_epochs=50),))


def cheap(seed: int = 0) -> Recipe:
    return Recipe(model="digits_cnn", seed=seed)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def runs():
    return Runs()


def test_another_visitors_cheap_run_starts_before_one_visitors_six_expensive_ones(runs):
    board = Board(runs, key_of)
    try:
        mine = [board.submit(expensive(i), "greedy") for i in range(6)]
        wait_for(lambda: runs.started == ["vgg13-0"])  # the first of the six is going
        other = board.submit(cheap(), "other")
        runs.release("vgg13-0")
        wait_for(lambda: len(runs.started) == 2)
        assert runs.started[1] == "digits_cnn-0"  # next, not after the other five
        runs.release("digits_cnn-0")
        for i in range(1, 6):
            runs.release(f"vgg13-{i}")
        wait_for(lambda: all(j.finished for j in (*mine, other)))
        assert runs.started[2:] == [f"vgg13-{i}" for i in range(1, 6)]  # the greedy visitor's own order kept
        assert all(j.state == "done" for j in (*mine, other))
    finally:
        for key in list(runs.go) + [f"vgg13-{i}" for i in range(6)]:
            runs.release(key)
        board.stop()


def test_a_page_queues_its_same_budget_control_beside_its_baseline_and_leaving_cancels_it(runs):
    from explorer.compress.finetune import FinetuneConfig

    board = Board(runs, key_of)
    run, base = expensive(0), Recipe(model="vgg13", seed=1)
    control = Recipe(model="vgg13", seed=2, steps=(FinetuneConfig(epochs=50),))
    try:
        job, b, fair = board.show("page", run, base, control=control)
        assert fair is not None and (job.priority, b.priority, fair.priority) == (FOREGROUND, COMPARISON, COMPARISON)
        assert board.watched("page") == {"vgg13-0", "vgg13-1", "vgg13-2"}
        wait_for(lambda: runs.started == ["vgg13-0"])
        runs.release("vgg13-0")
        wait_for(lambda: runs.started == ["vgg13-0", "vgg13-1"])  # the page's run first, then what it is compared with
        assert board.show("page", run, base, control=control)[2] is fair  # a render joins it, never a second one
        board.show("page", cheap(5), None)  # the page moved on to a configuration with no control
        runs.release("vgg13-1")
        wait_for(lambda: fair.finished)
        assert fair.state == "cancelled" and "vgg13-2" not in runs.started
        assert board.show("page", cheap(5), None)[2] is None
    finally:
        for key in ("vgg13-0", "vgg13-1", "vgg13-2", "digits_cnn-5"):
            runs.release(key)
        board.stop()


def test_the_line_takes_turns_between_owners_at_one_priority_and_keeps_priorities_first():
    from explorer.run.scheduler import Line

    line = Line()
    for i in range(3):
        line.add(f"a{i}", FOREGROUND, owner="a")
    line.add("b0", FOREGROUND, owner="b")
    line.add("b1", FOREGROUND, owner="b")
    line.add("c-base", COMPARISON, owner="c")
    line.add("c0", FOREGROUND, owner="c")
    order = [line.pop() for _ in range(8)]
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "c-base", None]


def test_one_visitors_tabs_together_have_at_most_their_share_of_runs(runs, monkeypatch):
    monkeypatch.setenv("EXPLORER_RUNS_PER_VISITOR", "4")
    board = Board(runs, key_of)
    try:
        for tab, seeds in (("tab1", (0, 1)), ("tab2", (2, 3))):
            for s in seeds:
                board.submit(expensive(s), tab, visitor="browser x")
        with pytest.raises(ValueError, match=r"other tabs already have 4 runs waiting or going \(at most 4"):
            board.submit(expensive(4), "tab3", visitor="browser x")
        assert board.job("vgg13-4") is None  # refused before it took a place
        board.submit(expensive(5), "tab4", visitor="browser y")  # another visitor is not held up by it
        board.submit(expensive(0), "tab3", visitor="browser x")  # joining a run already asked for is no new work
        board.watch("tab1", set())  # tab1 moved on: its runs are cancelled, and the share is free again
        board.submit(expensive(4), "tab3", visitor="browser x")
    finally:
        for key in [f"vgg13-{i}" for i in range(6)]:
            runs.release(key)
        board.stop()


def test_a_closed_tabs_runs_are_cancelled_queued_ones_never_start(runs, monkeypatch):
    monkeypatch.setattr(jobs, "GONE_S", 0.3)
    monkeypatch.setattr(jobs, "REAP_S", 0.05)
    open_tabs = {"busy", "closing", "never-seen"}
    board = Board(runs, key_of, alive=lambda s: s in open_tabs and s != "never-seen")
    try:
        going = board.submit(expensive(0), "busy")
        wait_for(lambda: runs.started == ["vgg13-0"])
        queued = board.submit(expensive(1), "closing")
        kept = board.submit(expensive(2), "never-seen")  # a page never seen connected (a test's) is never reaped
        time.sleep(0.2)  # seen open at least once
        open_tabs.discard("closing")
        wait_for(lambda: queued.state == "cancelled")
        assert going.state == "running" and kept.state == "queued"
        open_tabs.discard("busy")  # the tab whose run is going closes too: the run ends at its next report
        wait_for(lambda: going.finished)
        assert going.state == "cancelled"
        wait_for(lambda: kept.state == "running")
        assert "vgg13-1" not in runs.started
    finally:
        for key in ("vgg13-0", "vgg13-1", "vgg13-2"):
            runs.release(key)
        board.stop()


def test_a_tab_that_reconnects_within_the_grace_keeps_its_run(runs, monkeypatch):
    monkeypatch.setattr(jobs, "GONE_S", 0.5)
    monkeypatch.setattr(jobs, "REAP_S", 0.05)
    connected = [True]
    board = Board(runs, key_of, alive=lambda s: connected[0])
    try:
        going = board.submit(expensive(0), "flaky")
        wait_for(lambda: runs.started == ["vgg13-0"])
        time.sleep(0.1)
        connected[0] = False
        time.sleep(0.2)  # a moment without its connection, as a reload or a network blip gives
        connected[0] = True
        time.sleep(0.6)
        assert going.state == "running"
    finally:
        runs.release("vgg13-0")
        board.stop()


def test_a_visitor_is_a_browser_not_a_tab():
    from explorer.app.ui.state import visitor_of

    token = bytes(range(16))

    def cookie(mask: bytes) -> str:
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
        return f"2|{mask.hex()}|{masked.hex()}|1700000000"

    one, two = cookie(b"\x01\x02\x03\x04"), cookie(b"\xff\x00\xaa\x55")
    assert one != two  # the cookie's mask changes from page to page, the token it masks does not
    assert visitor_of(None, one, "tab1") == visitor_of(None, two, "tab2")
    assert visitor_of(None, cookie(b"\x01\x02\x03\x04").replace("1700000000", "1"), "t") == visitor_of(None, one, "t")
    assert token.hex() not in visitor_of(None, one, "tab1")  # the browser's secret is not kept in clear
    assert visitor_of("203.0.113.9", one, "tab1") == visitor_of("203.0.113.9", None, "tab2")  # by address first
    assert visitor_of(None, None, "tab1") != visitor_of(None, None, "tab2")  # nothing to go by: each page alone
    assert visitor_of(None, "2|zz|00|1", "tab1") == visitor_of(None, None, "tab1")  # a malformed cookie is ignored
