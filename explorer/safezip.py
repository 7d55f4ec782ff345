"""Safe extraction of an uploaded zip of an image tree: nothing lands outside the target folder, links are
refused, and caps on file count, total size and compression ratio stop zip bombs while extracting (the
sizes a zip declares can lie, so the bytes written are counted as they are written)."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from explorer.errors import env_positive


def caps() -> dict:
    return {"max_files": int(env_positive("EXPLORER_ZIP_MAX_FILES", 100_000)),
            "max_bytes": int(env_positive("EXPLORER_ZIP_MAX_MB", 1024, " of megabytes") * 2**20),
            "max_ratio": env_positive("EXPLORER_ZIP_MAX_RATIO", 200)}


def _member_path(name: str) -> PurePosixPath:
    """The relative path a member may be written to, or a ValueError naming the entry."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or p.is_absolute():
        raise ValueError(f"zip entry {name!r} has an absolute path: refused (entries must stay inside the folder)")
    if any(part == ".." for part in p.parts):
        raise ValueError(f"zip entry {name!r} climbs out of the folder with '..': refused")
    return p


def extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike, *, max_files: int | None = None,
                max_bytes: int | None = None, max_ratio: float | None = None) -> dict:
    """Extract into `dest` (created; must be empty or missing). Returns {"files", "bytes", "skipped"}.
    On any refusal the partly written folder is removed, so nothing is left half-extracted."""
    c = caps()
    max_files = max_files or c["max_files"]
    max_bytes = max_bytes or c["max_bytes"]
    max_ratio = max_ratio or c["max_ratio"]
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"extraction folder {str(dest)!r} is not empty")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{Path(zip_path).name!r} is not a readable zip file: {e}") from None
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = files = 0
    skipped: list[str] = []
    try:
        with zf:
            infos = zf.infolist()
            if sum(1 for i in infos if not i.is_dir()) > max_files:
                raise ValueError(f"zip holds {len(infos)} entries, over the cap of {max_files} files")
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
                if info.compress_size and info.file_size / max(info.compress_size, 1) > max_ratio \
                        and info.file_size > 1 << 20:
                    raise ValueError(f"zip entry {info.filename!r} expands {info.file_size / info.compress_size:,.0f}"
                                     f"x (over {max_ratio:g}x): refused as a zip bomb")
                target.parent.mkdir(parents=True, exist_ok=True)
                entry_bytes = 0
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        entry_bytes += len(chunk)
                        if written > max_bytes:
                            raise ValueError(f"zip expands past the cap of {max_bytes / 2**20:,.0f} MB: refused "
                                             "(a zip bomb, or set EXPLORER_ZIP_MAX_MB)")
                        if entry_bytes > 1 << 20 and entry_bytes / max(info.compress_size, 1) > max_ratio:
                            raise ValueError(f"zip entry {info.filename!r} expands past {max_ratio:g}x its "
                                             "compressed size: refused as a zip bomb")
                        out.write(chunk)
                files += 1
    except ValueError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ValueError(f"{Path(zip_path).name!r} could not be extracted: {e}") from None
    return {"files": files, "bytes": written, "skipped": skipped}


def tree_root(folder: str | os.PathLike) -> Path:
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
