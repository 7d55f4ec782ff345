"""Safe points: places inside long loops (between scoring batches, between fine-tuning steps) where a piece of
work may pause so that a latency timing runs alone on the machine.

The code down here cannot know about the scheduler (explorer.run.scheduler is a layer above), so the
scheduler installs what pausing means when it is imported; until then, and in a thread that is not
scheduled work, a safe point does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[], None] | None = None


def install(hook: Callable[[], None] | None) -> None:
    global _hook
    _hook = hook


def safe_point() -> None:
    if _hook is not None:
        _hook()
