"""Trusted plugins: the operator's own Python modules, which register architectures (`zoo.register_model`) and
data sets (`data.register_dataset`) the explorer does not ship.

A plugin is code, so it is trusted like the explorer itself and only ever named by whoever starts it:
- an installed package's entry point in the group `explorer.plugins` (in its pyproject.toml,
  `[project.entry-points."explorer.plugins"] my_models = "my_pkg.models"`), naming a module that registers as it is
  imported, or a function (`"my_pkg.models:register"`) that is called once;
- the command line's `--plugin my_pkg.models`, or the environment's EXPLORER_PLUGINS, module names separated by
  commas. The command line puts its names into EXPLORER_PLUGINS, so the processes the explorer starts (the check of
  an added model, sweep workers) import the same plugins.
The page never loads a plugin from an upload: it has no way to name one.

Each plugin is imported once per process, on the first look-up of a model or data set name. A plugin that cannot
be imported (an exception, or sys.exit()) is one line naming it and the reason, every time a name is looked up,
until it is fixed or unnamed. A plugin registers names of its own: one the zoo or the built-in data sets hold, or
one with a ':' (the libraries' 'timm:<name>', which it would otherwise replace in every card), makes it fail so.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
import threading
import types
from collections.abc import Callable
from importlib import metadata

from explorer.core.errors import first_line

GROUP = "explorer.plugins"
ENV = "EXPLORER_PLUGINS"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

_lock = threading.RLock()
_done: dict[str, str | None] = {}  # what was loaded ("entry point x" or "module y") -> None, or its error line
_seen: tuple[str, tuple[str, ...]] | None = None  # the environment and sys.path the last look-up saw
_named: list[str] = []  # the plugins named then
_busy = False  # a plugin that looks up names while it is imported finds the ones registered so far


def module_names(raw: str | None = None, source: str = ENV) -> tuple[str, ...]:
    """The module names in `raw` (default: EXPLORER_PLUGINS), separated by commas; a ValueError repeating the value
    (and naming `source`, where it came from) where one is not a dotted Python module name."""
    raw = os.environ.get(ENV, "") if raw is None else raw
    names = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not _MODULE.fullmatch(part):
            raise ValueError(f"{source}={raw!r}: {part!r} is not a Python module name; name plugin modules such as "
                             "'my_pkg.models', separated by commas")
        names.append(part)
    return tuple(dict.fromkeys(names))


def add_to_environment(names: list[str] | tuple[str, ...]) -> None:
    """The command line's --plugin names, checked and appended to EXPLORER_PLUGINS for this process and the ones it
    starts."""
    for n in names:
        module_names(n, "--plugin")
    have = module_names()
    os.environ[ENV] = ",".join(dict.fromkeys([*have, *names]))


def entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def load() -> None:
    """Import every plugin not imported yet (entry points, then EXPLORER_PLUGINS); a ValueError, one line, for the
    first that fails. Cheap when nothing changed: it looks again only when the environment or sys.path did."""
    global _seen, _busy, _named
    key = (os.environ.get(ENV, ""), tuple(sys.path))
    with _lock:
        if _busy:
            return
        if key != _seen:
            _busy = True
            try:
                named: dict[str, Callable[[], object]] = {
                    f"entry point {ep.name!r} ({ep.value})": functools.partial(_load, ep) for ep in entry_points()}
                named.update({f"module {n!r}": functools.partial(importlib.import_module, n)
                              for n in module_names(key[0])})
                for what, fn in named.items():
                    _once(what, fn)
            finally:
                _busy = False
            _seen, _named = key, list(named)
        failed = next(((what, _done[what]) for what in _named if _done.get(what) is not None), None)
    if failed is not None:
        raise ValueError(f"plugin {failed[0]} could not be loaded: {failed[1]} (plugins come from the "
                         f"{GROUP!r} entry points, --plugin and {ENV})")


def loaded() -> dict[str, str | None]:
    """What was loaded, each with None or the line that says why it failed."""
    with _lock:
        return dict(_done)


def _once(what: str, fn: Callable[[], object]) -> None:
    if what in _done and _done[what] is None:
        return
    try:
        fn()
        _done[what] = None
    except KeyboardInterrupt:  # the person at the keyboard stopping us, not the plugin failing: tried again next time
        raise
    except BaseException as e:  # the operator's code: any failure, sys.exit() included, is one line naming it
        _done[what] = _why(e)


def _why(e: BaseException) -> str:
    if isinstance(e, SystemExit):  # its text is only the status: without this the process ended with it, silently
        return f"SystemExit: it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {first_line(e, 300)}"


def _load(ep: metadata.EntryPoint) -> None:
    _call(ep.load())


def _call(obj: object) -> None:
    """An entry point names a module (it registered as it was imported) or a function to call once."""
    if callable(obj) and not isinstance(obj, types.ModuleType):
        obj()
