"""Class-per-folder image trees, read with bounds a visitor's upload cannot get round (issue 21: a 24 MB zip of
99,992 tiny images took 5.4 GB of memory; 20 PNGs of 12000x12000 in a 2.8 MB zip took 33 s on every run).

Every image's header is read first (Pillow opens lazily: size and bands, no pixels), so before anything is
decoded: one image may hold at most EXPLORER_MAX_IMAGE_PIXELS pixels, a tree at most EXPLORER_MAX_IMAGES images,
and their decoded pixels (width x height x bands, summed) and the data set built from them at most
EXPLORER_MAX_DECODED_MB each. The same checks run while an uploaded zip is extracted, so a refused upload is
refused at once and never stored.

Symbolic links are followed only where they stay inside the tree: the folder was checked against the folders the
page may read, and a link inside it could otherwise read images from anywhere on the server (or, linked to `/`,
walk the whole file system).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from explorer.core import settings
from explorer.core.errors import first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
Pair = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W) and their class indices
Listed = tuple[list[tuple[Path, int, str]], list[str], list[str]]  # (file, class, name) listed, classes, skipped


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


class Budget:
    """What a tree's images may cost, counted image by image from their headers."""

    def __init__(self, where: str):
        self.where = where
        self.max_images = int(settings.get("EXPLORER_MAX_IMAGES"))
        self.max_pixels = int(settings.get("EXPLORER_MAX_IMAGE_PIXELS"))
        self.max_bytes = int(settings.get("EXPLORER_MAX_DECODED_MB") * 2**20)
        self.images = 0
        self.decoded = 0

    def count(self) -> None:
        self.images += 1
        if self.images > self.max_images:
            raise ValueError(f"{self.where} holds more than {self.max_images:,} images, over the cap of "
                             f"{self.max_images:,} (EXPLORER_MAX_IMAGES)")

    def header(self, path: Path, shown: str) -> bool:
        """Check one image by its header: False where it is not a readable image (it is skipped), a ValueError
        naming it where it is over a cap."""
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by a lower cap
                with Image.open(path) as im:
                    (w, h), bands = im.size, len(im.getbands())
        except Image.DecompressionBombError as e:  # over twice Pillow's own limit: refused before the size is known
            n = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(n.group(1)):,} pixels" if n else "too many pixels"
            raise ValueError(f"image {shown!r} is {size}, over the cap of {self.max_pixels:,} pixels per image "
                             "(EXPLORER_MAX_IMAGE_PIXELS)") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return False
        self.count()
        if w * h > self.max_pixels:
            raise ValueError(f"image {shown!r} is {w:,}x{h:,} = {w * h:,} pixels, over the cap of {self.max_pixels:,} "
                             "pixels per image (EXPLORER_MAX_IMAGE_PIXELS)")
        self.decoded += w * h * bands
        if self.decoded > self.max_bytes:
            raise ValueError(f"the images of {self.where} decode to more than {self._mb(self.decoded)}, over the cap "
                             f"of {self._mb(self.max_bytes)} (EXPLORER_MAX_DECODED_MB); up to {shown!r}")
        return True

    def tensor(self, n: int, channels: int, size: int) -> None:
        """The data set the images become: n float32 images of channels x size x size."""
        need = n * channels * size * size * 4
        if need > self.max_bytes:
            raise ValueError(f"{n:,} images of {channels}x{size}x{size} from {self.where} take {self._mb(need)} as a "
                             f"data set, over the cap of {self._mb(self.max_bytes)} (EXPLORER_MAX_DECODED_MB): use "
                             "fewer or smaller images")

    @staticmethod
    def _mb(n: int) -> str:
        return f"{n / 2**20:,.0f} MB"


def image_folder(root: Path, size: int, channels: int | None
                 ) -> tuple[Pair, Pair | None, list[str], list[str]]:
    """A class-per-subfolder tree, or one with train/ and test/ (or val/) subtrees: (train, test or None,
    classes, notes). Files that are not images are skipped and counted in `notes`."""
    try:
        trees, budget = _listings(root)
        parts = [_decode(t, size, channels, budget) for t in trees]
    except OSError as e:  # a folder the server may not read, a file gone meanwhile
        raise ValueError(f"image folder {str(root)!r} could not be read: {first_line(e)}") from None
    notes = _skip_notes([s for t in trees for s in t[2]] + [s for p in parts for s in p[2]])
    return parts[0][:2], (parts[1][:2] if len(parts) == 2 else None), trees[0][1], notes


def check_image_folder(root: Path) -> tuple[list[str], list[list[int]]]:
    """The classes of an image tree and its readable images per class, for the tree or for its train and test
    parts, every image checked by its header and none decoded; a ValueError where the tree is not an image folder
    image_folder can read (no class folders, no readable image, over a cap)."""
    try:
        trees = _listings(root)[0]
    except OSError as e:
        raise ValueError(f"image folder {str(root)!r} could not be read: {first_line(e)}") from None
    classes = trees[0][1]
    counts = [[0] * len(classes) for _ in trees]
    for part, (files, _, _) in zip(counts, trees, strict=True):
        for _, ci, _ in files:
            part[ci] += 1
    return classes, counts


def _listings(root: Path) -> tuple[list[Listed], Budget]:
    """The tree listed: [train, test] where it has train/ and test/ (or val/) subtrees, else [the tree]."""
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a folder: expected "
                         "one subfolder per class holding image files (.png, .jpg, ...)")
    budget = Budget(f"image folder {str(root)!r}")
    top = Path(os.path.realpath(root))
    test_dir = next((root / d for d in ("test", "val") if _within(root / d, top, folder=True)), None)
    if _within(root / "train", top, folder=True) and test_dir is not None:
        train = _list_tree(root / "train", None, budget, top)
        return [train, _list_tree(test_dir, train[1], budget, top)], budget
    return [_list_tree(root, None, budget, top)], budget


def _skip_notes(skipped: list[str]) -> list[str]:
    if not skipped:
        return []
    shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    return [f"skipped {len(skipped)} file(s) that are not readable images: {shown}"]


def _within(path: Path, top: Path, folder: bool = False) -> bool:
    """`path` is a file (or a folder) that, its symbolic links resolved, lies inside `top`."""
    real = Path(os.path.realpath(path))
    return (real.is_dir() if folder else real.is_file()) and (real == top or top in real.parents)


def _walk(cdir: Path, top: Path) -> tuple[list[Path], list[Path]]:
    """The files under `cdir` (links that stay inside `top` followed, each folder once) and the links that
    lead outside it, which are skipped."""
    files: list[Path] = []
    outside: list[Path] = []
    seen: set[str] = set()
    stack = [cdir]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:  # a link back to a folder already walked: no loops, no double counting
            continue
        seen.add(real)
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() and not _within(path, top, folder=entry.is_dir()):
                outside.append(path)
            elif entry.is_dir():
                stack.append(path)
            elif entry.is_file():
                files.append(path)
    return sorted(files), outside


def _list_tree(folder: Path, classes: list[str] | None, budget: Budget, top: Path) -> Listed:
    """(files with their class index, classes, skipped), every image checked by its header against `budget`."""
    found, skipped = [], []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and not d.name.startswith("."):
            if _within(d, top, folder=True):
                found.append(d.name)
            else:
                skipped.append(f"{d.name}/ (a link to outside the folder)")
    if classes is None:
        classes = found
    if not classes:
        raise ValueError(f"image folder {str(folder)!r} has no class subfolders: expected one folder per class")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"image folder {str(folder)!r} has classes {unknown} "
                         f"not in the training classes {classes}")
    files: list[tuple[Path, int, str]] = []
    for ci, cname in enumerate(classes):
        cdir = folder / cname
        if not _within(cdir, top, folder=True):  # missing here, or a link to outside (noted above)
            continue
        listed, outside = _walk(cdir, top)
        skipped += [f"{p.relative_to(folder)} (a link to outside the folder)" for p in outside]
        for path in listed:
            if path.name.startswith("."):
                continue
            rel = str(path.relative_to(folder))
            if is_image_name(path.name) and budget.header(path, rel):
                files.append((path, ci, rel))
            else:
                skipped.append(rel)
    if not files:
        raise ValueError(f"image folder {str(folder)!r} holds no readable images in its class folders {classes}")
    return files, list(classes), skipped


def _decode(tree: Listed, size: int, channels: int | None, budget: Budget
            ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The listed images decoded and resized straight into one preallocated array (no list of copies)."""
    from PIL import Image, UnidentifiedImageError

    files, _, _ = tree
    mode, c = {1: ("L", 1), 3: ("RGB", 3), None: ("RGB", 3)}[channels]
    budget.tensor(len(files), c, size)
    x = np.empty((len(files), c, size, size), dtype=np.float32)
    y: list[int] = []
    bad: list[str] = []
    n = 0
    for path, ci, rel in files:
        try:
            with Image.open(path) as im:
                small = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(small, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            bad.append(rel)
            continue
        x[n] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        y.append(ci)
        n += 1
    if n == 0:
        raise ValueError(f"{budget.where} holds no readable images")
    return torch.from_numpy(x[:n] if n < len(files) else x), torch.tensor(y, dtype=torch.int64), bad
