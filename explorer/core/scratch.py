"""Scratch space the explorer owns: every temporary folder it makes lives under one folder, `.scratch/`
inside the run cache (EXPLORER_CACHE_DIR moves both), never loose in the system's temp directory.

A scratch folder's owner holds an exclusive lock on a file inside it for as long as the folder lives. The
kernel drops that lock when the owner dies, however it dies (kill -9 included), so `clean`, which the CLI
and the page run at start-up, removes exactly the folders whose owner is gone, and never a live one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from explorer.core.paths import cache_dir

OWNER = ".owner"
_BORN_S = 60.0  # a folder with no lock file yet may be one being created this instant


def root() -> Path:
    return cache_dir() / ".scratch"


@contextlib.contextmanager
def folder(prefix: str) -> Iterator[Path]:
    """A new empty folder under the scratch root, removed on exit; `prefix` says what it is for."""
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=base))
    owner = open(path / OWNER, "a+b")  # noqa: SIM115 - held open for the folder's whole life
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        owner.close()


def clean() -> list[str]:
    """Remove the scratch folders of processes that are gone; returns their names."""
    removed: list[str] = []
    with contextlib.suppress(OSError), os.scandir(root()) as it:
        for e in it:
            if not e.is_dir(follow_symlinks=False):
                continue
            try:
                f = open(Path(e.path) / OWNER, "rb")  # noqa: SIM115
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    if time.time() - e.stat(follow_symlinks=False).st_mtime > _BORN_S:
                        shutil.rmtree(e.path, ignore_errors=True)
                        removed.append(e.name)
                continue
            except OSError:
                continue
            with f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.name)
    return removed


def move_into_place(src: Path, dest: Path, *, overwrite: bool = False) -> None:
    """Rename `src` (a file or folder) to `dest` in one step where both are on one file system; across file
    systems it is copied beside `dest` first and renamed from there, so `dest` appears complete or not at
    all. `dest` must not exist unless `overwrite` (files only)."""
    if dest.exists() and not (overwrite and dest.is_file()):
        raise FileExistsError(errno.EEXIST, "already exists", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest) if overwrite else os.rename(src, dest)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    part = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    try:
        if src.is_dir():
            shutil.copytree(src, part, symlinks=True)
        else:
            shutil.copy2(src, part)
        os.replace(part, dest)
    finally:
        if part.is_dir():
            shutil.rmtree(part, ignore_errors=True)
        else:
            part.unlink(missing_ok=True)
