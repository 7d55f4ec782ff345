"""The run cache's folder, and the proof that it is the explorer's.

EXPLORER_CACHE_DIR may point anywhere: ~/.cache, a typo, /dev/null. The cache deletes folders (clear,
verify --fix, the size cap, a killed run's leftovers), so it first needs to know the folder is its own: a
marker file (MARKER) that the explorer writes when it makes or adopts the folder. A folder without the
marker is adopted only if everything in it is something the explorer writes: nothing at all, the
repository's own cache/ (git makes it with only README.md), or a cache an earlier version wrote, which had
no marker (run entries with their manifest, .locks, .scratch). Any other folder is refused in one line and
nothing in it is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

from explorer.core.paths import ROOT, cache_dir

MARKER = ".explorer-cache"
KEY_LEN = 20  # explorer.run.runner.run_key: the first 20 hex digits of a sha256
_KEY = re.compile(f"[0-9a-f]{{{KEY_LEN}}}")
# what a folder git made holds (the repository's cache/ has its README.md committed)
PLACEHOLDERS = frozenset({"README.md", ".gitkeep"})
# hidden folders of ours in a cache root: per-key locks, scratch space, an earlier version's sensitivity store
OWN_HIDDEN = frozenset({".locks", ".scratch", ".sensitivity"})
# scratch folders earlier versions (and sweeps) made in the root itself: .work-<key>-<pid>-<random>
LEGACY_SCRATCH = re.compile(rf"\.(tmp|work|trash)-({_KEY.pattern})-\d+-[A-Za-z0-9_]+")
# what explorer.core.scratch names the folders it makes in .scratch: <prefix>-<pid>-<random> (hidden while being
# born; trash-<name>-<pid>-<hex> while being deleted)
SCRATCH_NAME = re.compile(r"\.?[A-Za-z0-9_.-]+-\d+-[A-Za-z0-9_]+")
# the benchmarks' own store beside the entries (bench/common.py memo)
BENCH = "_bench"
ALLOWED = "empty, missing, or made by the explorer, which deletes only what it wrote"


def is_key(name: object) -> bool:
    """Whether `name` is a run key exactly as runner.run_key makes it: entry folders are named by it, and
    nothing else in the cache folder may be mistaken for one."""
    return isinstance(name, str) and _KEY.fullmatch(name) is not None


def label(root: Path) -> str:
    """How to name the folder in a message: the variable the user set, or the folder given in code."""
    env = os.environ.get("EXPLORER_CACHE_DIR", "").strip()
    if env and Path(env) == Path(root):
        return f"EXPLORER_CACHE_DIR={env!r}"
    return f"the run cache folder {str(root)!r}"


def _refuse(root: Path, why: str) -> ValueError:
    return ValueError(f"{label(root)} must be a folder the explorer can write ({ALLOWED}): {why}")


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def marked(root: Path) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG((Path(root) / MARKER).lstat().st_mode)  # a regular file, not a link to one
    return False


def is_entry(path: Path, own_files: frozenset[str] = frozenset()) -> bool:
    """Whether `path` is a run entry the explorer wrote, the only kind of folder the cache ever deletes: named
    exactly like a run key, a real folder (not a link), holding manifest.json, or, for one that lost it, only
    files named in `own_files` (what the cache's commit writes), result.json among them."""
    if not is_key(path.name):
        return False
    try:
        if not stat.S_ISDIR(path.lstat().st_mode):
            return False
        if stat.S_ISREG((path / "manifest.json").lstat().st_mode):
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "result.json" in names and all(n in own_files or (n.startswith(".") and n.endswith(".tmp")) for n in names)


def _not_scratch(path: Path) -> list[str]:
    """What in a scratch folder is not a folder named the way the explorer names its scratch folders (the
    explorer deletes old ones as leftovers of killed processes)."""
    try:
        with os.scandir(path) as it:
            return [f"{path.name}/{e.name}" for e in it
                    if not (e.is_dir(follow_symlinks=False) and SCRATCH_NAME.fullmatch(e.name))]
    except OSError as e:
        return [f"{path.name}/ ({_reason(e)})"]


def _foreign(root: Path) -> list[str]:
    """What in an unmarked folder the explorer did not write (empty: the folder may be adopted)."""
    if Path(root).resolve() == (ROOT / "cache").resolve():
        return []  # the repository's own cache/: git-ignored and the explorer's by construction
    out = []
    with os.scandir(root) as it:
        for e in it:
            n = e.name
            if (n in PLACEHOLDERS or n == MARKER) and e.is_file(follow_symlinks=False):
                continue  # the marker too: another thread or process may have written it since `marked` looked
            if e.is_dir(follow_symlinks=False) and (n in OWN_HIDDEN or n == BENCH or LEGACY_SCRATCH.fullmatch(n)
                                                     or is_entry(Path(e.path))):
                if n == ".scratch":
                    out += _not_scratch(Path(e.path))
                continue
            out.append(n)
    return sorted(out)


def problem(root: str | os.PathLike[str]) -> str | None:
    """Why `root` cannot be the run cache, or None; looks only, creates nothing."""
    root = Path(root)
    try:
        if root.exists():
            if not root.is_dir():
                return "it is not a folder"
            if not os.access(root, os.W_OK | os.X_OK):
                return "cannot write in it (permission denied)"
            if marked(root):
                return None
            foreign = _foreign(root)
            if foreign:
                names = [repr(n) for n in foreign[:3]] + ([f"{len(foreign) - 3} more"] if len(foreign) > 3 else [])
                listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
                return f"it holds {listed}, which the explorer did not write"
            return None
        parent = next((p for p in root.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"{str(parent)!r} is not a folder"
    except OSError as e:
        return f"cannot read it ({_reason(e)})"
    return None


def check(root: str | os.PathLike[str]) -> None:
    """A one-line ValueError if `root` cannot be the run cache; touches nothing."""
    why = problem(root)
    if why is not None:
        raise _refuse(Path(root), why)


def check_env() -> None:
    """The start-up check of EXPLORER_CACHE_DIR (or the default cache/), before any work."""
    check(cache_dir())


def claim(root: str | os.PathLike[str]) -> Path:
    """`root`, made if missing and marked as the explorer's; a ValueError (one line) for a folder that is not
    a folder, cannot be written, or holds what the explorer did not write."""
    root = Path(root)
    if marked(root):
        return root
    check(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _refuse(root, f"cannot create it ({_reason(e)})") from None
    try:
        # O_EXCL: of two processes adopting the folder at once, one writes the marker and the other sees it
        fd = os.open(root / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return root
    except OSError as e:
        raise _refuse(root, f"cannot write {MARKER} in it ({_reason(e)})") from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"what": "explorer run cache: the explorer removes only run entries it wrote here",
                            "created": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
    return root
