"""Pages being opened right now, for the server's own start-up run to give way to (explorer.run.jobs.STARTUP).

The server queues its default configuration before any visitor (explorer.app.serve). When the first visitor
opens the page, that run takes cores the browser and the page's first drawing need (on two cores with four other
busy processes the shell painted after 3.2 s instead of 1.7 s). So the page's script marks itself as opening while
it draws its shell (`page_opening`, in app.py, with nothing heavy imported), and a run that no page has taken over
yet waits at its next progress report (`wait_while_opening`) until no page is opening or `MAX_WAIT_S` has passed.
Only the shell: held until the page asked for its runs, the wait cost the first figures 1.6 s (8.0 s against 6.4 s
after opening) for no shell measurably faster. Standard library only: app.py uses it before its heavy imports.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

MAX_WAIT_S = 5.0  # the longest a start-up run waits for pages being opened, at one report
_cond = threading.Condition()
_opening = 0


@contextlib.contextmanager
def page_opening() -> Iterator[None]:
    """A page's script drawing its shell."""
    global _opening
    with _cond:
        _opening += 1
    try:
        yield
    finally:
        with _cond:
            _opening -= 1
            _cond.notify_all()


def wait_while_opening(max_s: float = MAX_WAIT_S) -> bool:
    """Wait until no page is being opened, at most `max_s` seconds; whether none is (False: it timed out)."""
    with _cond:
        return _cond.wait_for(lambda: _opening == 0, timeout=max_s)
