"""Which local folders a visitor of the page may name as a data set (issue 21: the page's folder box listed any
folder of the server, `/etc` answering with its subfolders). The operator allows folders with
EXPLORER_DATA_ROOTS, absolute paths separated by os.pathsep; by default there are none and the page reads only
the data sets installed in their usual places and the zips visitors upload. The command line is the operator's
own and reads any folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ENV = "EXPLORER_DATA_ROOTS"


def data_roots(raw: str | None = None) -> tuple[Path, ...]:
    """The allowed folders (symbolic links and `..` resolved), from `raw` or the environment; a ValueError
    repeating the value where an entry is not an absolute path."""
    raw = os.environ.get(ENV, "") if raw is None else raw
    roots = []
    for part in raw.split(os.pathsep):
        part = part.strip()
        if not part:
            continue
        if not Path(part).is_absolute():
            raise ValueError(f"{ENV}={raw!r}: {part!r} is not an absolute path; name the folders the page may read "
                             f"as absolute paths separated by {os.pathsep!r}")
        roots.append(Path(os.path.realpath(part)))
    return tuple(dict.fromkeys(roots))


def inside(path: str | os.PathLike[str], roots: Iterable[Path]) -> Path | None:
    """`path` resolved (symbolic links and `..`), if that is one of `roots` or under one; else None."""
    resolved = Path(os.path.realpath(Path(path)))
    return next((resolved for r in roots if resolved == r or r in resolved.parents), None)


def check_page_folder(path: str | os.PathLike[str], roots: Iterable[Path] | None = None,
                      also: Iterable[Path] = ()) -> Path:
    """The folder a visitor named, resolved, if it lies in an allowed root (or in `also`: the explorer's own
    folder of uploaded data sets); else a ValueError that repeats the path and names the allowed roots. The
    answer is the same whether or not the path exists, so the page tells nothing about the server's folders."""
    roots = data_roots() if roots is None else tuple(roots)
    found = inside(path, (*roots, *(Path(os.path.realpath(a)) for a in also)))
    if found is not None:
        return found
    if not roots:
        raise ValueError(f"dataset folder {str(path)!r} refused: this page reads no local folders (the operator can "
                         f"allow folders with {ENV}); upload a zip of an image folder instead")
    shown = ", ".join(str(r) for r in roots)
    raise ValueError(f"dataset folder {str(path)!r} is outside the folders this page may read: {shown} ({ENV})")
