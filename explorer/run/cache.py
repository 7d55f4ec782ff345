"""Run cache: one folder per run key under cache/ holding the RunResult JSON and the run's artifacts.

A slider move in the UI, a CLI sweep and a benchmark all come through `RunCache.get_or_run`, so the
cache must never serve something half-written or wrong:
- an entry is built in a scratch folder and renamed into place in one step, `manifest.json` (size and
  sha256 of every file) written last; an entry whose files do not match its manifest is discarded;
- the cache folder may be shared with other things (EXPLORER_CACHE_DIR=~/.cache), so it deletes only what
  it can prove it wrote: a folder named exactly like a run key that holds our manifest.json, in a folder
  marked as the explorer's (explorer.core.cachedir), and scratch folders whose owner process is gone;
- a per-key file lock makes concurrent identical requests (Streamlit sessions are threads, sweeps may
  be processes) compute once; the kernel releases the lock of a killed process;
- only successful runs are stored: a failure comes back as a failed RunResult and is recomputed next time;
- a size cap evicts the least recently used entries (mtime of a `last_used` marker).
Nothing here prints; the CLI and UI report.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from explorer.core import cachedir, scratch, settings
from explorer.core.cachedir import is_key
from explorer.core.paths import cache_dir
from explorer.core.version import SCHEMA_VERSION
from explorer.run.result import (
    ARTIFACT_KINDS,
    FILES,
    UNTIMED,
    RunResult,
    failed,
    first_timing,
    malformed,
    to_json,
    untimed,
)

if TYPE_CHECKING:  # (runner imports torch: listing or clearing the cache needs none)
    from explorer.compress.recipe import Recipe
    from explorer.core.train import Progress
    from explorer.run.runner import Partial

MANIFEST, RESULT, LAST_USED = "manifest.json", "result.json", "last_used"
# result.FILES kept; the checkpoint, gzip and zstd copies only give sizes
LEGACY_SENSITIVITY = ".sensitivity"
# an entry that lost its manifest is still recognisably ours if it holds only what commit writes
OWN_FILES = frozenset({*FILES.values(), RESULT, LAST_USED})
_held = threading.local()  # locks this thread holds: commit/get inside get_or_run's lock must not deadlock


def max_bytes(value: str | float | None = None) -> int:
    """The size cap in bytes: `value` megabytes, else EXPLORER_CACHE_MAX_MB, else 2048."""
    if value is None:
        return int(settings.get("EXPLORER_CACHE_MAX_MB") * 2**20)
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = math.nan
    if not 0 <= mb < math.inf:
        raise ValueError(f"max_mb={value!r} must be a number of megabytes >= 0 (default 2048)")
    return int(mb * 2**20)


def check_key(key: str) -> str:
    # keys become folder names: nothing that could point outside the cache or name a folder not ours
    if not is_key(key):
        raise ValueError(f"cache key {key!r} must be a run key ({cachedir.KEY_LEN} lowercase hex digits, as "
                         "runner.run_key gives)")
    return key


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_digests: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime, ctime, inode) -> its checksum
_digests_lock = threading.Lock()
RACY_NS = 1_000_000_000  # a file changed this recently is hashed again next time: one clock tick could hold two writes


def _stamp(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _hash(path: Path, data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)


def digest(path: Path, data: bytes | None = None) -> str:
    """The sha256 of the file at `path` (of `data`, its bytes as just read), hashed once per version of the file:
    a render that lists forty stored runs hashes nothing when nothing changed. A version is its size, times and
    inode; any write changes its ctime, which no program can set back, so a file changed in place is hashed
    again. A file changed within the last second is not remembered (the same clock tick could hold a second
    write: git's "racy clean" problem), nor one that changed while it was read."""
    before = _stamp(path)
    with _digests_lock:
        known = _digests.get(before)
    if known is not None and data is None:
        return known
    if known is not None and _stamp(path) == before:
        return known
    value = _hash(path, data)
    if _stamp(path) == before and max(before[2], before[3]) < time.time_ns() - RACY_NS:
        with _digests_lock:
            if len(_digests) > 16_384:
                _digests.clear()
            _digests[before] = value
    return value


def folder_bytes(path: Path) -> int:
    with contextlib.suppress(OSError), os.scandir(path) as it:
        return sum(e.stat().st_size for e in it if e.is_file(follow_symlinks=False))
    return 0


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _tag(result: RunResult, hit: bool, key: str, **extra: Any) -> RunResult:
    return {**result, "cache": {"hit": hit, "key": key, **extra}}


def _default_compute(recipe: Recipe, workdir: Path, progress: Progress | None,
                     partial: Partial | None = None, latency: bool = True) -> RunResult:
    from explorer.run import runner  # imported late: listing or clearing the cache needs no torch

    return runner.run_recipe(recipe, workdir=workdir, progress=progress, partial=partial, latency=latency)


class RunCache:
    def __init__(self, root: str | os.PathLike[str] | None = None, max_mb: float | None = None):
        self.max_bytes = max_bytes(max_mb)
        self.root = cachedir.claim(Path(root) if root is not None else cache_dir())  # a folder not ours: refused
        self._listed: tuple[tuple[int, int, int], frozenset[str]] | None = None  # (folder's stamp, its entries)
        self._clean_scratch()

    def _open_lock(self, key: str, wait: bool, on_wait: Callable[[], None] | None = None) -> IO[bytes] | None:
        path = self.root / ".locks" / f"{check_key(key)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        # a new open file per call: flock on separate open files excludes threads of one process too.
        # Lock files are never deleted: a waiter would hold the lock of an unlinked file while a newcomer
        # locked a fresh one, and both would compute.
        f = open(path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                if not wait:
                    f.close()
                    return None
                if on_wait:
                    on_wait()
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except BaseException:
                f.close()
                raise
        return f

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Exclusive per-key lock across processes and threads; re-entrant within one thread."""
        held = _held.__dict__.setdefault("keys", set())
        ident = (str(self.root), key)
        if ident in held:
            yield
            return
        f = self._open_lock(key, True, on_wait)
        assert f is not None  # a lock waited for is always taken
        held.add(ident)
        try:
            yield
        finally:
            held.discard(ident)
            f.close()  # closing releases the flock

    def _check(self, key: str, deep: bool = True, fresh: bool = False) -> tuple[RunResult | None, str | None]:
        """(stored result, None) if the entry is complete and intact, else (None, the problem).

        deep=False checks presence and sizes only (and result.json's checksum); fresh=True hashes every file again.
        Otherwise each version of a file is hashed once (`digest`).
        """
        entry = self.root / key
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            files = manifest["files"]
            if manifest.get("key") != key or not isinstance(files, dict) or RESULT not in files:
                return None, "manifest.json does not describe this entry"
        except FileNotFoundError:
            return None, "no manifest.json (incomplete write)"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"manifest.json unreadable: {e}"
        for name, meta in sorted(files.items()):
            if not isinstance(meta, dict) or not name or "/" in name or name.startswith("."):
                return None, f"manifest.json lists a bad file entry {name!r}"
            try:
                st = (entry / name).stat()
            except OSError:
                return None, f"{name} is missing"
            if not stat.S_ISREG(st.st_mode) or st.st_size != meta.get("bytes"):
                return None, f"{name} has {st.st_size} bytes, the manifest says {meta.get('bytes')}"
        if deep:
            for name, meta in files.items():
                try:
                    if (sha256_file(entry / name) if fresh else digest(entry / name)) != meta.get("sha256"):
                        return None, f"{name} checksum mismatch"
                except OSError as e:
                    return None, f"{name} unreadable: {e}"
        try:
            raw = (entry / RESULT).read_bytes()
            # the bytes handed out are checked every time: against the checksum of this version of the file
            if digest(entry / RESULT, raw) != files[RESULT].get("sha256"):
                return None, f"{RESULT} checksum mismatch"
            result = json.loads(raw)
        except (OSError, ValueError) as e:
            return None, f"result.json unreadable: {e}"
        if not isinstance(result, dict) or result.get("key") != key or result.get("status") != "ok":
            return None, "result.json is not a successful run with this key"
        shape = malformed(result)  # checksums that match can still guard a field every view would fail on
        if shape is not None:
            return None, f"result.json: {shape}"
        return cast(RunResult, result), None  # a stored run's JSON, written by `commit` from a RunResult

    def _is_entry(self, key: str) -> bool:
        return cachedir.is_entry(self.root / key, OWN_FILES)  # anything else in the folder is left alone

    def _discard(self, key: str) -> None:
        """Delete entry `key` if it is one this cache wrote: moved aside in one rename, so a reader sees all of
        it or nothing, then removed."""
        if self._is_entry(key):
            scratch.trash(self.root / key, self.root)

    @contextlib.contextmanager
    def workspace(self, what: str, key: str) -> Iterator[Path]:
        """An empty folder for building run `key`, in the cache's scratch space: removed on exit, and by the
        next start (or verify --fix) as soon as its process is gone, however it died (scratch.clean)."""
        with scratch.folder(f"{what}-{check_key(key)}", self.root) as space:
            path = space / what
            path.mkdir()
            yield path

    def _clean_scratch(self) -> list[str]:
        """Remove what processes that are gone left: their scratch folders (at once: the kernel released their
        locks when they died), and the folders earlier versions (and sweeps) made in the cache root itself,
        once nobody holds their key."""
        removed = scratch.clean(self.root)
        legacy = self.root / LEGACY_SENSITIVITY  # earlier versions kept sensitivity outside the entries
        with contextlib.suppress(OSError):
            for p in legacy.iterdir():
                if p.suffix == ".json" and is_key(p.stem) and p.is_file() and not p.is_symlink():
                    p.unlink()
            legacy.rmdir()  # only once empty: what else is there is not ours
        with contextlib.suppress(OSError), os.scandir(self.root) as it:
            for e in it:
                m = cachedir.LEGACY_SCRATCH.fullmatch(e.name)
                if m is None or not e.is_dir(follow_symlinks=False):
                    continue
                f = None
                if m.group(1) != "trash":  # trash belongs to nobody; tmp and work folders to their key's lock
                    f = self._open_lock(m.group(2), wait=False)
                    if f is None:
                        continue
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.name)
                if f:
                    f.close()
        return removed

    def get(self, key: str) -> RunResult | None:
        """The stored RunResult if its entry is complete and intact; a bad entry is discarded."""
        if not (self.root / check_key(key)).is_dir():
            return None
        result, problem = self._check(key)
        if problem is not None:
            with self.lock(key):  # another session may be replacing it: look again before deleting
                result, problem = self._check(key)
                if problem is not None:
                    self._discard(key)
                    return None
        with contextlib.suppress(OSError):
            (self.root / key / LAST_USED).touch()
        return result

    def peek(self, key: str) -> RunResult | None:
        """The stored RunResult for listing (charts, tables): its bytes checked against the manifest, the
        other files by size only; nothing is discarded or marked used. `get` is the full check."""
        result, problem = self._check(key, deep=False)
        return result if problem is None else None

    def commit(self, key: str, workdir: str | os.PathLike[str], result: RunResult) -> RunResult:
        """Store a successful run: its artifacts (moved out of `workdir`) and `result`; returns what is stored."""
        check_key(key)
        if result.get("status") != "ok" or result.get("key") != key:
            raise ValueError(f"only a successful run with key {key!r} can be stored, not status "
                             f"{result.get('status')!r} with key {result.get('key')!r}")
        text = to_json(result)
        entry = self.root / key
        with self.lock(key):
            with self.workspace("commit", key) as tmp:
                for kind in ARTIFACT_KINDS:
                    if (Path(workdir) / FILES[kind]).is_file():
                        shutil.move(Path(workdir) / FILES[kind], tmp / FILES[kind])
                (tmp / RESULT).write_text(text)
                files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
                manifest = {"key": key, "schema": SCHEMA_VERSION, "files": files,
                            "created": datetime.now(UTC).isoformat(timespec="seconds")}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
                (tmp / LAST_USED).touch()
                if entry.exists() or entry.is_symlink():
                    stored = self.get(key)  # discards it unless intact
                    if stored is not None:
                        return stored
                    if entry.exists() or entry.is_symlink():
                        raise RuntimeError(f"{str(entry)!r} is in the way: the explorer did not write it (no "
                                           f"{MANIFEST}), so it leaves it alone; move it elsewhere")
                os.rename(tmp, entry)  # atomic on one filesystem: the entry appears complete or not at all
            self.evict(keep=key)
        committed: RunResult = json.loads(text)
        return committed

    def get_or_run(self, recipe: Recipe, *, progress: Progress | None = None,
                   compute: Callable[..., RunResult] | None = None, partial: Partial | None = None,
                   latency: bool = True) -> RunResult:
        """The RunResult of `recipe`: from the cache, or computed once (also across sessions) and stored.

        Bad input raises ValueError; any other failure returns a failed RunResult, which is never stored.
        `compute(recipe, workdir, progress)` defaults to runner.run_recipe; `partial` receives the result as
        far as it goes while it is computed (runner.Partial); the stored entry is written once complete.
        `latency=False` stores the run untimed (result.untimed: a landscape point, its accuracy and sizes first);
        asked for with its latency, a run stored untimed is timed from its stored files first (`timed_again`),
        `partial` receiving it meanwhile.
        """
        from explorer.run import runner  # imported late: listing or clearing the cache needs no torch

        key = runner.run_key(recipe)
        hit = self.get(key)
        if hit is not None and not (latency and untimed(hit)):
            return _tag(hit, True, key)

        def on_wait() -> None:
            if progress:
                progress(0.0, "waiting for another session running the same configuration")

        with self.lock(key, on_wait=on_wait):
            hit = self.get(key)  # the session we waited for has stored it
            if hit is not None and latency and untimed(hit):
                try:
                    return _tag(self._time_stored(key, hit, progress, partial), True, key)
                except Exception as e:  # the stored entry stays as it was (untimed)
                    err = RuntimeError(f"timing the stored run failed: {e}")
                    return _tag(failed(recipe, err), False, key, stored=False)
            if hit is not None:
                return _tag(hit, True, key)
            with self.workspace("work", key) as work:
                try:
                    extra: dict[str, Any] = {} if partial is None else {"partial": partial}
                    if not latency:
                        extra["latency"] = False
                    result = (compute or _default_compute)(recipe, work, progress, **extra)
                except ValueError:
                    raise
                except Exception as e:
                    return _tag(failed(recipe, e), False, key, stored=False)
                if result.get("status") != "ok":
                    return _tag(result, False, key, stored=False)
                if result.get("key") != key:
                    err = RuntimeError(f"the run has key {result.get('key')!r}, not {key!r}: the checkpoint "
                                       "changed while it ran")
                    return _tag(failed(recipe, err), False, key, stored=False)
                try:
                    return _tag(self.commit(key, work, result), False, key, stored=True)
                except Exception as e:
                    err = RuntimeError(f"the run finished but could not be stored in {self.root}: {e}")
                    return _tag(failed(recipe, err), False, key, stored=False)

    def _time_stored(self, key: str, hit: RunResult, progress: Progress | None,
                     partial: Partial | None) -> RunResult:
        """Time run `key`, stored untimed, from its stored files (under its lock) and store the timing."""
        import functools

        from explorer.run import runner, scheduler

        if partial is not None:
            partial(RunResult(**{**hit, "status": "partial", "pending": [UNTIMED]}))
        with scheduler.work():
            timed = self.timed_again(key, hit, functools.partial(runner.time_run, progress=progress))
        return self.replace_result(key, first_timing(timed))  # a first timing: no re-time

    def timed_again(self, key: str, stored: RunResult, time_run: Callable[[RunResult, Path], RunResult]) -> RunResult:
        """Stored run `key` timed from its stored files: `time_run(result, workdir)` on a workspace holding them,
        each checked against the manifest as it is read; not written back (replace_result does that)."""
        with self.workspace("retime", key) as work:
            for kind in ARTIFACT_KINDS:
                data = self.artifact(key, FILES[kind])
                if data is not None:
                    (work / FILES[kind]).write_bytes(data)
            return time_run(stored, work)

    def _files(self, key: str) -> dict[str, Any]:
        try:
            files = json.loads((self.root / check_key(key) / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return files if isinstance(files, dict) else {}

    def _served(self, key: str, name: str, data: bytes | None) -> bool:
        """Whether bytes about to be handed out are the ones the manifest recorded; if not, the entry is
        discarded (and computed again when next asked for)."""
        meta = self._files(key).get(name)
        with contextlib.suppress(OSError):
            if data is not None and isinstance(meta, dict) and \
                    digest(self.root / key / name, data) == meta.get("sha256"):
                return True
        if meta is not None:
            with self.lock(key):
                self._discard(key)
        return False

    def artifact(self, key: str, name: str) -> bytes | None:
        """The bytes of a stored artifact (e.g. "model.xpk") for a download or a rebuild, checked against the
        manifest's checksum at the moment they are served; None if absent or changed since it was stored."""
        if "/" in name or name.startswith(".") or name not in self._files(key):
            return None
        try:
            data = (self.root / key / name).read_bytes()
        except OSError:
            data = None
        return data if self._served(key, name, data) else None

    def attach(self, key: str, name: str, data: bytes) -> None:
        """Add a file to a stored run, for figures computed later from its artifacts (per-layer sensitivity):
        the manifest takes its size and checksum, so `artifact` checks it like every other file, and it goes
        with its entry when the entry is evicted, cleared or found damaged."""
        if "/" in name or name.startswith(".") or name in (MANIFEST, RESULT, LAST_USED) or not name:
            raise ValueError(f"cannot attach {name!r}: a plain file name other than {MANIFEST}, {RESULT} and "
                             f"{LAST_USED} is needed")
        self._put(key, name, data)

    def _put(self, key: str, name: str, data: bytes) -> None:
        """Write file `name` into stored entry `key`, then the manifest with its size and checksum, each in one
        step, under the key's lock: readers see the old manifest or the new one, each complete, and `get` looks
        again under the lock before it takes an entry for damaged."""
        entry = self.root / check_key(key)
        with self.lock(key):
            if self._check(key)[1] is not None:
                raise ValueError(f"run {key} is not stored intact in {self.root}; run it again")
            manifest = json.loads((entry / MANIFEST).read_text())
            tmp = entry / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, entry / name)
            manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            tmp = entry / f".{MANIFEST}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, entry / MANIFEST)

    def replace_result(self, key: str, result: RunResult) -> RunResult:
        """Write a new RunResult into stored entry `key` (a later re-timing of its artifacts), as `_put` writes
        a file: a listing (`peek`) between its two steps misses the entry for that moment, nothing more."""
        if result.get("status") != "ok" or result.get("key") != key:
            raise ValueError(f"only a successful run with key {key!r} can replace the stored one, not status "
                             f"{result.get('status')!r} with key {result.get('key')!r}")
        text = to_json(result)
        self._put(key, RESULT, text.encode())
        stored: RunResult = json.loads(text)
        return stored

    def artifact_path(self, key: str, name: str) -> Path | None:
        """The path of a stored artifact whose bytes match the manifest now, for tools that need a file
        (an ONNX Runtime session). Prefer `artifact`, which checks the very bytes it returns."""
        data = self.artifact(key, name)
        return None if data is None else self.root / key / name

    def stored_at(self, key: str) -> float | None:
        """When entry `key`'s result was last written (seconds since the epoch), or None where there is none."""
        return _mtime(self.root / check_key(key) / RESULT)

    def stored(self) -> frozenset[str]:
        """The keys of the entries in the folder, listed again only when the folder changed (an entry is renamed
        in or out of it as a whole): what a page's status line counts, every few seconds, without reading them.
        `peek` and `get` are what check an entry."""
        try:
            st = self.root.stat()
        except OSError:
            return frozenset()
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if self._listed is None or self._listed[0] != stamp:
            self._listed = (stamp, frozenset(self.keys()))
        return self._listed[1]

    def keys(self) -> list[str]:
        """Entry folders; anything else in the folder (README, another tool's files) is not ours to touch."""
        with contextlib.suppress(OSError), os.scandir(self.root) as it:
            return sorted(e.name for e in it if self._is_entry(e.name))
        return []

    def _last_used(self, key: str) -> float:
        return _mtime(self.root / key / LAST_USED) or _mtime(self.root / key) or 0.0

    def entries(self) -> list[dict[str, Any]]:
        """One row per entry, most recently used first; `complete` checks files and sizes, not checksums."""
        rows = []
        result: Mapping[str, Any] | None  # the stored run, or what its result.json holds, or nothing
        for key in sorted(self.keys(), key=self._last_used, reverse=True):
            result, problem = self._check(key, deep=False)
            if result is None:
                with contextlib.suppress(OSError, ValueError):
                    result = json.loads((self.root / key / RESULT).read_text())
            result = result if isinstance(result, dict) else {}
            used = datetime.fromtimestamp(self._last_used(key), UTC).isoformat(timespec="seconds")
            rows.append({"key": key, "label": result.get("label", ""), "status": result.get("status", "?"),
                         "bytes": folder_bytes(self.root / key), "last_used": used, "complete": problem is None,
                         "problem": problem})
        return rows

    def verify(self, fix: bool = False) -> list[dict[str, Any]]:
        """Check every entry like `get` does, re-hashing every file; returns the bad ones with their problem.

        fix=True removes them, and the scratch folders of processes that are gone (killed mid-run).
        """
        bad = []
        for key in self.keys():
            problem = self._check(key, fresh=True)[1]
            if problem is None:
                continue
            if fix:
                with self.lock(key):
                    self._discard(key)
            bad.append({"key": key, "problem": problem, "removed": fix})
        if fix:
            bad += [{"key": n, "problem": "scratch folder of a process that is gone", "removed": True}
                    for n in self._clean_scratch()]
        return bad

    def total_bytes(self) -> int:
        return sum(folder_bytes(self.root / k) for k in self.keys())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the total fits the cap; never `keep` or a key in use."""
        sizes = {k: folder_bytes(self.root / k) for k in self.keys()}
        total = sum(sizes.values())
        removed = []
        for key in sorted(sizes, key=self._last_used):
            if total <= self.max_bytes:
                break
            # never waits: two sessions evicting each other's keys must not deadlock
            f = self._open_lock(key, wait=False) if key != keep else None
            if f is None:
                continue
            with f:
                self._discard(key)
            total -= sizes[key]
            removed.append(key)
        return removed

    def clear(self) -> int:
        """Remove every entry (waiting for a run in progress on the same key); returns how many."""
        keys = self.keys()
        for key in keys:
            with self.lock(key):
                self._discard(key)
        return len(keys)
