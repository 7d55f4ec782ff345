"""Safe extraction of an uploaded zip of an image tree: nothing lands outside the target folder, links are
refused, and caps on entry count, total size and compression ratio (per entry and over the whole archive)
stop zip bombs while extracting (the sizes a zip declares can lie, so the bytes written are counted as they
are written). Each image's header is checked as it lands (explorer.core.imagetree: pixels per image, image
count, decoded bytes), so an image bomb is refused at upload rather than decoded on every later run."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, TypedDict

from explorer.core import settings
from explorer.core.errors import first_line
from explorer.core.imagetree import Budget, is_image_name


class Caps(TypedDict):
    max_files: int
    max_bytes: int
    max_ratio: float


def caps() -> Caps:
    return {"max_files": int(settings.get("EXPLORER_ZIP_MAX_FILES")),
            "max_bytes": int(settings.get("EXPLORER_ZIP_MAX_MB") * 2**20),
            "max_ratio": settings.get("EXPLORER_ZIP_MAX_RATIO")}


def _member_path(name: str) -> PurePosixPath:
    """The relative path a member may be written to, or a ValueError naming the entry."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or p.is_absolute():
        raise ValueError(f"zip entry {name!r} has an absolute path: refused (entries must stay inside the folder)")
    if any(part == ".." for part in p.parts):
        raise ValueError(f"zip entry {name!r} climbs out of the folder with '..': refused")
    return p


def count_entries(zip_path: str | os.PathLike[str], what: str, max_files: int) -> None:
    """Refuse a zip (`what`: how the refusal names it) whose central directory holds more than `max_files`
    records, counted record by record from the file before `zipfile` reads it: `zipfile.ZipFile` keeps an object
    of some 400 bytes per record, and a record can take 46 bytes, so a 500 MB upload of empty entries took
    gigabytes in the server before any cap could be checked. The record count the end record states is not
    trusted (zipfile reads every record the directory's size holds). A file that is not a zip is left to
    zipfile to refuse."""
    import struct

    with open(zip_path, "rb") as f:
        try:
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # zipfile's own end-record reader
        except OSError:
            return
        if not end:
            return
        size = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
        start = end[zipfile._ECD_LOCATION] - size  # type: ignore[attr-defined]  # as zipfile finds it
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        if start < 0:
            return
        f.seek(start)
        count = pos = 0
        while pos + 46 <= size:
            head = f.read(46)
            if len(head) < 46 or head[:4] != b"PK\x01\x02":
                return  # a damaged directory: zipfile refuses it
            name, extra, comment = struct.unpack("<HHH", head[28:34])
            count += 1
            if count > max_files:
                raise ValueError(f"{what} holds more than {max_files:,} entries, over the cap (files and folders "
                                 "count alike; EXPLORER_ZIP_MAX_FILES)")
            f.seek(name + extra + comment, 1)
            pos += 46 + name + extra + comment


RATIO_FLOOR = 64 << 10  # below this many bytes written, a ratio says nothing (a tiny file of zeros is fine)


def extract_zip(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str], *, max_files: int | None = None,
                max_bytes: int | None = None, max_ratio: float | None = None,
                shown: str | None = None) -> dict[str, Any]:
    """Extract into `dest` (created; must be empty or missing). Returns {"files", "bytes", "skipped"}.
    Caps: entries (files and folders alike), bytes written, and the expansion ratio of each entry and of
    the whole archive, all counted on the bytes actually written. On any refusal the partly written
    folder is removed, so nothing is left half-extracted."""
    c = caps()
    max_files = max_files or c["max_files"]
    max_bytes = max_bytes or c["max_bytes"]
    max_ratio = max_ratio or c["max_ratio"]
    shown = shown or Path(zip_path).name
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"extraction folder {str(dest)!r} is not empty")
    try:
        count_entries(zip_path, f"zip {shown!r}", max_files)
        zf = zipfile.ZipFile(zip_path)
        archive_bytes = max(Path(zip_path).stat().st_size, 1)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{shown!r} is not a readable zip file: {e}") from None
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    budget = Budget(f"zip {shown!r}")
    written = files = 0
    skipped: list[str] = []
    try:
        with zf:
            infos = zf.infolist()
            if len(infos) > max_files:
                raise ValueError(f"zip {shown!r} holds {len(infos):,} entries, over the cap of {max_files:,} entries "
                                 "(files and folders count alike; EXPLORER_ZIP_MAX_FILES)")
            for info in infos:
                rel = _member_path(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ValueError(f"zip entry {info.filename!r} is a symbolic link: refused")
                if rel.parts and rel.parts[0] == "__MACOSX":
                    skipped.append(info.filename)
                    continue
                target = (root / rel).resolve()
                if target != root and root not in target.parents:
                    raise ValueError(f"zip entry {info.filename!r} would land outside the folder: refused")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                entry_bytes = 0
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        entry_bytes += len(chunk)
                        _check_expansion(info, entry_bytes, written, archive_bytes, max_bytes, max_ratio)
                        out.write(chunk)
                if is_image_name(rel.name):
                    budget.header(target, info.filename)
                files += 1
    except ValueError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ValueError(f"{shown!r} could not be extracted: {first_line(e)}") from None
    return {"files": files, "bytes": written, "skipped": skipped}


def _check_expansion(info: zipfile.ZipInfo, entry_bytes: int, written: int, archive_bytes: int, max_bytes: int,
                     max_ratio: float) -> None:
    """Zip-bomb checks on what has been written so far (the sizes a zip declares can lie)."""
    if written > max_bytes:
        raise ValueError(f"zip expands past the cap of {max_bytes / 2**20:,.0f} MB: refused "
                         "(a zip bomb, or set EXPLORER_ZIP_MAX_MB)")
    if entry_bytes > RATIO_FLOOR and entry_bytes / max(info.compress_size, 1) > max_ratio:
        raise ValueError(f"zip entry {info.filename!r} expands past {max_ratio:g}x its compressed size: refused "
                         "as a zip bomb (EXPLORER_ZIP_MAX_RATIO)")
    if written > RATIO_FLOOR and written / archive_bytes > max_ratio:
        raise ValueError(f"zip expands past {max_ratio:g}x its own size ({archive_bytes:,} bytes): refused as a "
                         "zip bomb (EXPLORER_ZIP_MAX_RATIO)")


def tree_root(folder: str | os.PathLike[str]) -> Path:
    """A zip of 'mydata/cat/...' extracts to one top folder: descend while there is exactly one folder."""
    p = Path(folder)
    while True:
        children = [c for c in p.iterdir() if not c.name.startswith(".") and c.name != "__MACOSX"]
        if len(children) == 1 and children[0].is_dir() and not {"train", "test", "val"} & {c.name for c in children}:
            sub = [c for c in children[0].iterdir() if c.is_dir()]
            if sub:
                p = children[0]
                continue
        return p
