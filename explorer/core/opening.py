"""Pages being opened right now, for the server's own start-up run to give way to (explorer.run.jobs.STARTUP).

The server queues its default configuration before any visitor (explorer.app.serve). When the first visitor
opens the page, that run would take the cores the browser and the page's first drawing need: on two cores with
four other busy processes the page's shell painted after 3.2 s instead of 1.7 s. So the page's script marks
itself as opening (`page_opening`, from app.py before the shell is drawn, with nothing heavy imported), and a run
that no page has taken over yet waits at its next progress report (`wait_while_opening`) until no page is opening,
a page takes it over, or `MAX_WAIT_S` has passed. Standard library only: app.py uses it before its heavy imports.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

MAX_WAIT_S = 5.0  # the longest a start-up run waits for pages being opened, at one report
_cond = threading.Condition()
_opening = 0


@contextlib.contextmanager
def page_opening() -> Iterator[None]:
    """A page's script drawing the page until it has asked for its runs."""
    global _opening
    with _cond:
        _opening += 1
    try:
        yield
    finally:
        with _cond:
            _opening -= 1
            _cond.notify_all()


def opening_now() -> int:
    with _cond:
        return _opening


def wait_while_opening(max_s: float = MAX_WAIT_S, done: Callable[[], bool] = lambda: False) -> bool:
    """Wait until no page is being opened or `done()` holds (checked again at each `nudge`), at most `max_s`
    seconds; whether the wait ended before that."""
    with _cond:
        return _cond.wait_for(lambda: _opening == 0 or done(), timeout=max_s)


def nudge() -> None:
    """Something a waiting run's `done` reads has changed (a page took the run over): look again."""
    with _cond:
        _cond.notify_all()
