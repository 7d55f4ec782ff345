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
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from explorer.core import cachedir
from explorer.core.paths import cache_dir

OWNER = ".owner"
_BORN_S = 60.0  # a hidden folder is one being born: its owner may be between mkdtemp and locking
TRASH = "trash-"  # an entry being deleted: nobody's, removed by whoever sees it
NAME = cachedir.SCRATCH_NAME  # `clean` removes nothing else, whatever else the scratch folder holds


def root(cache: str | os.PathLike[str] | None = None) -> Path:
    """The scratch folder of the run cache `cache` (default: EXPLORER_CACHE_DIR or the repository's cache/).
    One that exists as anything but a real folder (a symbolic link, above all: `clean` would delete inside its
    target) is refused in one line."""
    path = Path(cache if cache is not None else cache_dir()) / ".scratch"
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise ValueError(f"the run cache's scratch folder {str(path)!r} cannot be read ({e.strerror})") from None
    if not stat.S_ISDIR(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        raise ValueError(f"the run cache's scratch folder {str(path)!r} is {what}: the explorer deletes old folders "
                         "in it, so it must be a real folder it made; remove it, or set EXPLORER_CACHE_DIR elsewhere")
    return path


@contextlib.contextmanager
def folder(prefix: str, cache: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A new empty folder under the scratch root, removed on exit; `prefix` says what it is for."""
    base = root(cachedir.claim(cache if cache is not None else cache_dir()))
    base.mkdir(parents=True, exist_ok=True)
    # born hidden and renamed once its owner lock is held, so `clean` never sees an unlocked live folder
    born = Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=base))
    owner = open(born / OWNER, "a+b")  # held open for the folder's whole life
    path = born.with_name(born.name[1:])
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX)
        os.rename(born, path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(born, ignore_errors=True)
        owner.close()


def clean(cache: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove the scratch folders of processes that are gone (at once: the kernel released their lock when
    they died); returns their names. A cache folder that is not the explorer's is refused, never cleaned."""
    top = Path(cache if cache is not None else cache_dir())
    if not top.is_dir():
        return []
    cachedir.claim(top)
    removed: list[str] = []
    with contextlib.suppress(OSError), os.scandir(root(top)) as it:
        for e in it:
            if not e.is_dir(follow_symlinks=False) or not NAME.fullmatch(e.name):
                continue
            try:
                young = time.time() - e.stat(follow_symlinks=False).st_mtime < _BORN_S
            except OSError:
                continue  # gone since the listing (renamed by its owner once locked, or removed)
            try:
                f = open(Path(e.path) / OWNER, "rb")
            except FileNotFoundError:
                # no owner: trash is nobody's; anything else may be a folder created this instant
                if e.name.startswith(TRASH) or not young:
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
                if e.name.startswith(".") and young:
                    continue  # still hidden: its owner may be about to lock it
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.name)
    return removed


def trash(path: Path, cache: str | os.PathLike[str]) -> None:
    """Delete the folder `path` of the run cache `cache`: renamed into the scratch folder in one step (a
    reader sees all of it or nothing), then removed; what a kill interrupts, the next `clean` removes."""
    base = root(cache)
    base.mkdir(exist_ok=True)
    dest = base / f"{TRASH}{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, dest)
        shutil.rmtree(dest, ignore_errors=True)


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
