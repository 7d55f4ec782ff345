"""Where the repository keeps its data: the committed baselines, the run cache and data sets fetched on
request. Every path is relative to the repository root (or set by an environment variable), so the
explorer runs from any working directory. And the one check of a file the user names (a recipe, a results CSV, a
checkpoint): a named pipe, a device or a folder is said to be one, and never opened to wait or read for ever."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # explorer/core/paths.py -> the repository
MODELS_DIR = ROOT / "models"  # trained baselines: <architecture>-<dataset>.safetensors and a JSON card each
REPO_DATA = ROOT / "data"  # data sets fetched with `python -m explorer data fetch`


def cache_dir() -> Path:
    """The run cache: EXPLORER_CACHE_DIR, else cache/ in the repository (explorer.core.cachedir checks it)."""
    return env_folder("EXPLORER_CACHE_DIR", ROOT / "cache")


def env_folder(name: str, default: Path) -> Path:
    """The folder environment variable `name` names, else `default`. Empty or blank counts as unset, as for
    every setting: Path("") is the current folder, where nothing of the explorer's belongs."""
    env = os.environ.get(name, "")
    return Path(env) if env.strip() else default


def baseline_path(model: str, dataset: str, models_dir: str | os.PathLike[str] = MODELS_DIR) -> Path:
    """The committed weights of `model` trained on `dataset`. A name from a library (`timm:resnet18`) gives a file
    name every file system takes (`timm-resnet18-digits.safetensors`: ':' is a drive separator on Windows and
    odd in URLs); the card inside keeps the real name."""
    return Path(models_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', model)}-{dataset}.safetensors"


# what a path the user named as a file may be instead: opening a named pipe waits for a writer, and a device such as
# /dev/zero never ends, so each is one line saying what it is rather than "does not exist", a hang or a flood
_NOT_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
              (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def user_file(path: str | os.PathLike[str], what: str, shown: str | None = None, hint: str = "") -> int:
    """The size of the regular file the user named as `what` ("recipe file"), following links; otherwise a ValueError
    of one line that says what the path is (missing, a folder, a named pipe, a device, a socket), `hint` after it.
    `shown` is the name the user knows the file by."""
    shown = str(path) if shown is None else shown
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ValueError(f"{what} {shown!r} does not exist{hint}") from None
    except OSError as e:
        raise ValueError(f"{what} {shown!r} cannot be read: {e.strerror or e}{hint}") from None
    return _regular(st, what, shown, hint)


def read_user_file(path: str | os.PathLike[str], what: str, max_bytes: int, hint: str = "") -> bytes:
    """The bytes of the regular file the user named, at most `max_bytes` + 1 of them (the caller refuses more:
    a file of /proc says it is empty and may hold more), refused as `user_file` refuses. The file is opened without
    waiting, so a named pipe put in its place after a check cannot hold the command."""
    user_file(path, what, hint=hint)
    shown = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ValueError(f"{what} {shown!r} cannot be read: {e.strerror or e}{hint}") from None
    with open(fd, "rb") as f:
        _regular(os.fstat(fd), what, shown, hint)
        return f.read(max_bytes + 1)


def _regular(st: os.stat_result, what: str, shown: str, hint: str) -> int:
    kind = next((name for test, name in _NOT_FILES if test(st.st_mode)), None)
    if kind is not None or not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{shown!r} is {kind or 'not a plain file'}, not a {what}{hint}")
    return st.st_size
