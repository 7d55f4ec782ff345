"""At most n holders of a set of slots at once, across threads and processes, served in the order they asked."""

import subprocess
import sys
import threading
import time

import pytest

from explorer.core import slots
from tests.conftest import ROOT


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_threads_never_hold_more_slots_than_there_are_and_go_in_the_order_they_asked(cache):
    running, most, order, told = [], [0], [], {}
    lock = threading.Lock()

    def work(i: int) -> None:
        with slots.slot("t", 2, on_wait=lambda n: told.setdefault(i, []).append(n)):
            with lock:
                running.append(i)
                order.append(i)
                most[0] = max(most[0], len(running))
            time.sleep(0.6)
            with lock:
                running.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.1)  # each asks after the one before, so the order they are served in is known
    for t in threads:
        t.join(30)
    assert most[0] == 2 and sorted(order) == list(range(5))
    assert order[2:] == [2, 3, 4]  # the waiters in the order they asked
    assert told[2][0] == 2 and told[3][0] == 3 and told[4][0] == 4  # the running two, and the waiters before it
    assert 0 not in told and 1 not in told  # a free slot: no wait, no word
    assert not list((cache / ".locks" / "t").glob("wait-*"))  # every ticket gone once served


def other_process() -> subprocess.Popen:
    """Another process holding the only slot of "checks" until a line is written to it."""
    p = subprocess.Popen([sys.executable, "-c", "from tests.checkjobs import hold; hold()"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def _try(told: list) -> threading.Thread:
    def take():
        with slots.slot("checks", 1, on_wait=told.append):
            told.append("in")

    t = threading.Thread(target=take)
    t.start()
    return t


def test_the_slots_hold_across_processes_and_a_killed_holder_frees_its_own(cache):
    """The command line's add-model beside the page: a slot another process holds is waited for, and one whose
    holder was killed (no clean exit) is free at once: the kernel drops a dead process's locks."""
    holder = other_process()
    told: list = []
    t = _try(told)
    time.sleep(1.0)
    assert told == [1]  # waiting for the other process's check
    holder.communicate("\n", timeout=30)
    t.join(30)
    assert told == [1, "in"]
    holder = other_process()
    told = []
    t = _try(told)
    time.sleep(0.5)
    holder.kill()
    holder.wait(30)
    t.join(30)
    assert told == [1, "in"]


def test_a_waiter_that_gives_up_leaves_the_queue(cache):
    """An exception from on_wait (the page's script stopped by a rerun) gives up the place: the ticket is
    removed, so nobody behind it waits for it."""
    holder = other_process()

    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), slots.slot("checks", 1, on_wait=stop):
        pass
    assert not list((cache / ".locks" / "checks").glob("wait-*"))
    holder.communicate("\n", timeout=30)
    with slots.slot("checks", 1):
        pass
