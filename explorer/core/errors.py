"""One way to word a bad-input error: the field, the bad value, and what is allowed."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator


def bad_value(field: str, value: object, allowed: str | Iterable[object]) -> ValueError:
    """ValueError that repeats the bad value and says what is allowed.

    `allowed` is either a phrase ("in [0, 0.99]") or a collection of valid choices.
    """
    if not isinstance(allowed, str):
        choices = ", ".join(str(a) for a in allowed)
        allowed = f"one of: {choices}"
    return ValueError(f"{field}={value!r} must be {allowed}")


def check_range(field: str, value: float, lo: float, hi: float, *, integer: bool = False) -> None:
    """Raise bad_value unless lo <= value <= hi (and an int when `integer`)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad_value(field, value, f"an integer in [{lo}, {hi}]")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise bad_value(field, value, f"a number in [{lo}, {hi}]")
    if not (lo <= value <= hi):  # also rejects NaN
        kind = "an integer" if integer else "a number"
        raise bad_value(field, value, f"{kind} in [{lo}, {hi}]")


def check_choice(field: str, value: object, choices: Iterable[object]) -> None:
    choices = list(choices)
    if value not in choices:
        raise bad_value(field, value, choices)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type where it has none), for one-line errors; terminal
    colour codes some libraries put in their messages are dropped."""
    text = _ANSI.sub("", str(e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence other libraries' loggers, warnings and prints, Python's and C++'s alike, while a call that may
    fail noisily runs (torch's exporters log whole tracebacks and graphs), so the user sees the explorer's
    one line instead. Only for the command line's trusted-program paths: it swaps the process's own
    output streams, which a server's other threads share."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as null:
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        logging.disable(previous)
