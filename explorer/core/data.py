"""Datasets as in-memory tensors with seeded, stratified, disjoint train/val/test splits.

`digits` (scikit-learn's bundled 8x8 digits) is the embedded default and needs nothing on disk.
The others read a local folder the user names and never download: MNIST and Fashion-MNIST through
torchvision's idx readers, CIFAR-10/100 through a restricted unpickler (torchvision's CIFAR class
unpickles arbitrary objects, which user files must never get), and any class-per-folder image tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from explorer.core import settings
from explorer.core.errors import bad_value, check_range, first_line
from explorer.core.idx import read_idx
from explorer.core.imagetree import IMAGE_EXTENSIONS, Pair, image_folder  # noqa: F401  (IMAGE_EXTENSIONS: the data set's API)
from explorer.core.paths import REPO_DATA
from explorer.core.preprocessing import check_normalisation

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
FOLDER_DATASETS = DATASETS[1:]
VAL_FRACTION, TEST_FRACTION = 0.15, 0.2  # held out per class where load_dataset is not told otherwise


@dataclass(frozen=True)
class Split:
    """One split: `x` float32 (N, C, H, W) normalised, `y` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    root: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise bad_value("split", name, ("train", "val", "test"))
        split: Split = getattr(self, name)
        return split

    def with_train_subset(self, n: int | None, seed: int = 0) -> DataBundle:
        """This bundle with its training split cut to about `n` images, stratified by class and seeded, for
        fine-tuning on a large data set in bounded time; validation and test stay whole. The bundle itself
        when `n` is None or covers the split."""
        if n is None or n >= len(self.train):
            return self
        _, idx = stratified_split(self.train.y, n / len(self.train), seed)
        return dataclasses.replace(self, train=Split(self.train.x[idx], self.train.y[idx]))

    def calibration(self, n: int, seed: int = 0) -> torch.Tensor:
        """N training inputs, drawn without replacement with `seed`, for post-training quantisation."""
        check_range("calibration samples", n, 1, len(self.train), integer=True)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train), generator=g)[:n]
        return self.train.x[idx]


# a trusted plugin's data sets (explorer.core.plugins): name -> loader(root) returning (x, y, classes, test), x float
# images (N, C, H, W) in [0, 1], y int64 labels, test an official (x, y) test split or None for a seeded one
PLUGIN_DATASETS: dict[str, Callable[[Path | None], Any]] = {}


def register_dataset(name: str, loader: Callable[[Path | None], Any]) -> None:
    """For plugins: a data set under `name`, loaded by `loader(root)` (root is the folder the user named, or None)
    into (x, y, classes, test); split, resized and normalised like every other data set."""
    if name in DATASETS or name in PLUGIN_DATASETS:
        raise RuntimeError(f"dataset {name!r} registered twice")
    PLUGIN_DATASETS[name] = loader


def _load_plugins() -> None:
    from explorer.core import plugins

    plugins.load()


def list_datasets() -> list[str]:
    _load_plugins()
    return [*DATASETS, *sorted(PLUGIN_DATASETS)]


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    image_size: int | None = None,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    channels: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DataBundle:
    """Load `name` into memory, split it and normalise it with the training split's statistics, or with `mean`
    and `std` where the model was trained with those (explorer.core.preprocessing).

    `test_fraction` applies where the data has no official test split (digits, a flat image tree);
    `val_fraction` is carved from the training data. `image_size` resizes (imagefolder defaults to 32).
    A data set held in a few files is kept in memory for the next call while its files are unchanged
    (Fashion-MNIST takes seconds to decode; every run of the page asks for it). Callers never modify
    the tensors of a bundle.
    """
    stamp = _files_stamp(name, root)
    norm = check_normalisation(mean, std)  # before any image is read; the channels are checked once they are known
    args = (name, None if root is None else str(root), seed, image_size, val_fraction, test_fraction, channels,
            *(norm or (None, None)))
    if stamp is None:
        return _load_dataset(*args)
    return _load_cached(stamp, *args)


def _files_stamp(name: str, root: str | os.PathLike[str] | None) -> tuple[object, ...] | None:
    """What identifies the bytes of a data set held in a few files; None where it is not worth keeping."""
    if name == "digits":
        return ("digits",)
    if name == "imagefolder":
        return None
    base = Path(root).expanduser() if root is not None and root != "" else default_root(name)
    if base is None or not base.is_dir():
        return None
    files: list[tuple[str, int, int]] = []
    for p in base.rglob("*"):
        if len(files) > 64:
            return None
        with contextlib.suppress(OSError):
            if p.is_file():
                st = p.stat()
                files.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(sorted(files))


@functools.lru_cache(maxsize=4)
def _load_cached(stamp: tuple[object, ...], *args: Any) -> DataBundle:
    return _load_dataset(*args)


def _load_dataset(name: str, root: str | Path | None, seed: int, image_size: int | None, val_fraction: float,
                  test_fraction: float, channels: int | None, given_mean: tuple[float, ...] | None = None,
                  given_std: tuple[float, ...] | None = None) -> DataBundle:
    if name not in DATASETS and name not in list_datasets():
        raise bad_value("dataset", name, list_datasets())
    check_range("val_fraction", val_fraction, 0.01, 0.5)
    check_range("test_fraction", test_fraction, 0.01, 0.5)
    if image_size is not None:
        check_range("image_size", image_size, 4, 512, integer=True)
    if channels is not None and channels not in (1, 3):
        raise bad_value("channels", channels, (1, 3))
    if name == "digits":
        x, y, classes = _digits()
        official_test: Pair | None = None
        notes: list[str] = []
    elif name in PLUGIN_DATASETS:
        x, y, classes, official_test = _from_plugin(name, root)
        notes = []
    else:
        if (root is None or str(root).strip() == "") and default_root(name) is not None:
            root = default_root(name)
        if root is None or str(root).strip() == "":
            if name not in DEFAULT_ROOTS:
                raise ValueError(f"dataset {name!r} reads a local folder: name it with root=... (nothing is "
                                 "downloaded)")
            raise ValueError(f"dataset {name!r} is not on this machine: {how_to_get(name)} (nothing is downloaded "
                             "unasked)")
        root = Path(root).expanduser()
        if name in ("mnist", "fashion-mnist"):
            (x, y), official_test, classes = _mnist_like(name, root)
            notes = []
        elif name in ("cifar10", "cifar100"):
            (x, y), official_test, classes = _cifar(name, root)
            notes = []
        else:
            (x, y), official_test, classes, notes = image_folder(root, image_size or 32, channels)
    _check_made_size(name, x, official_test, channels, image_size)
    if channels is not None and x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
        if official_test is not None:
            tx, ty = official_test
            official_test = (tx.mean(1, keepdim=True) if channels == 1 else tx.expand(-1, 3, -1, -1), ty)
    check_normalisation(given_mean, given_std, int(x.shape[1]))  # one value per channel of the images as fed
    if image_size is not None and x.shape[-1] != image_size:
        x = _resize(x, image_size)
        if official_test is not None:
            official_test = (_resize(official_test[0], image_size), official_test[1])

    if official_test is None:
        train_idx, test_idx = stratified_split(y, test_fraction, seed)
        test = (x[test_idx], y[test_idx])
        x, y = x[train_idx], y[train_idx]
    else:
        test = official_test
    train_idx, val_idx = stratified_split(y, val_fraction, seed + 1)
    xtr, ytr = x[train_idx], y[train_idx]
    if given_mean is not None and given_std is not None:
        mean, std = torch.tensor(given_mean, dtype=torch.float32), torch.tensor(given_std, dtype=torch.float32)
    else:
        mean = xtr.mean(dim=(0, 2, 3))
        std = xtr.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return ((t - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()

    return DataBundle(
        name=name,
        train=Split(norm(xtr), ytr),
        val=Split(norm(x[val_idx]), y[val_idx]),
        test=Split(norm(test[0]), test[1]),
        classes=tuple(classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        seed=seed,
        root=None if root is None else str(root),
        notes=tuple(notes),
    )


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded shuffle; each class gives round(fraction * count) samples (at least one
    where it has two or more), so every class appears on both sides and the split is reproducible."""
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    keep: list[np.ndarray] = []
    take: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        take.append(idx[:k])
        keep.append(idx[k:])
    keep_idx, take_idx = np.sort(np.concatenate(keep)), np.sort(np.concatenate(take))
    if len(take_idx) == 0 or len(keep_idx) == 0:
        raise ValueError(f"dataset too small to split: {len(labels)} samples; need at least 2 per class")
    return keep_idx, take_idx


def check_splittable(classes: list[str], counts: list[list[int]], where: str) -> None:
    """One line where an image tree's images per class (`counts`: for the tree, or for its train and test parts)
    cannot become a data set: fewer than 2 classes with images, or too few images for the test and validation
    images load_dataset holds out of them. Checked from the counts alone, so an upload is refused before it is
    stored rather than by the first model added on it."""
    held = [c for c, n in zip(classes, counts[0], strict=True) if n]
    if len(held) < 2:
        which = f"1 class ({held[0]!r})" if held else "no class"
        raise ValueError(f"{where} holds images of {which}: a data set needs at least 2 classes, one subfolder "
                         "with images each")
    y = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(counts[0]))
    try:
        if len(counts) == 1:  # no test/ part: the test images are held out of the tree, then validation of the rest
            y = y[stratified_split(y, TEST_FRACTION, 0)[0]]
        stratified_split(y, VAL_FRACTION, 1)
    except ValueError:
        part, least = ("", 3) if len(counts) == 1 else (" in train/", 2)
        listing = ", ".join(f"{c}: {n}" for c, n in zip(classes, counts[0], strict=True))
        raise ValueError(f"{where} holds too few images{part} to hold out test and validation images ({listing}): "
                         f"give at least one class {least} images or more") from None


def _from_plugin(name: str, root: str | Path | None) -> tuple[torch.Tensor, torch.Tensor, list[str], Pair | None]:
    """A plugin's data set, held to the shapes every other one has; a mismatch is one line naming the data set."""
    x, y, classes, test = PLUGIN_DATASETS[name](None if root is None or root == "" else Path(root).expanduser())
    for what, (xx, yy) in (("images", (x, y)), *((("test images", test),) if test is not None else ())):
        if not (isinstance(xx, torch.Tensor) and xx.ndim == 4 and xx.is_floating_point() and xx.shape[1] in (1, 3)
                and isinstance(yy, torch.Tensor) and yy.shape == (len(xx),) and not yy.is_floating_point()):
            raise ValueError(f"dataset {name!r} from a plugin gave {what} that are not float (N, 1 or 3, H, W) "
                             "tensors with one integer label each")
        if len(yy) and not 0 <= int(yy.min()) <= int(yy.max()) < len(classes):
            raise ValueError(f"dataset {name!r} from a plugin has labels outside 0..{len(classes) - 1}")
    test = None if test is None else (test[0].float(), test[1].long())
    return x.float(), y.long(), list(classes), test


def _check_made_size(name: str, x: torch.Tensor, test: Pair | None, channels: int | None,
                     image_size: int | None) -> None:
    """The images as the data set will hold them, resized and converted, held to EXPLORER_MAX_DECODED_MB before
    they are made: the files passed the cap at their own size, and a resize of Fashion-MNIST's 70,000 images to
    512x512 would take 70,000 MB (allocated in the caller's process, the command line's or the page's)."""
    size = image_size if image_size is not None and x.shape[-1] != image_size else None
    chans = channels if channels is not None and x.shape[1] != channels else None
    if size is None and chans is None:
        return  # nothing is made here: the data set is the size its files (or a trusted plugin) gave
    n = len(x) + (0 if test is None else len(test[0]))
    c, h, w = chans or int(x.shape[1]), size or int(x.shape[-2]), size or int(x.shape[-1])
    need, cap = n * c * h * w * 4, settings.get("EXPLORER_MAX_DECODED_MB")
    if need > cap * 2**20:
        asked = " and ".join([*([f"image size {size}"] if size else []), *([f"{c} channels"] if chans else [])])
        raise ValueError(f"{asked} would make the {n:,} images of {name} take {need / 2**20:,.0f} MB, above "
                         f"EXPLORER_MAX_DECODED_MB={cap:g}: choose a smaller image size (--image-size), or raise "
                         "the cap where the memory is there")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    out: torch.Tensor = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out


def _digits() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return x, y, [str(c) for c in d.target_names]


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# where a data set is found when no folder is named: `python -m explorer data fetch` writes the first,
# Debian's package dataset-fashion-mnist installs the second
DEFAULT_ROOTS = {"fashion-mnist": (REPO_DATA / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")),
                 "mnist": (REPO_DATA / "mnist",)}
INSTALL = {"fashion-mnist": "install Debian's package (apt-get install -y dataset-fashion-mnist), or "}


def available(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether `name` can be loaded here without downloading: digits always, a named folder if it exists,
    else one of the data set's usual places."""
    if name == "digits" or name in PLUGIN_DATASETS:
        return True
    if root not in (None, ""):
        return Path(root).expanduser().exists()
    return default_root(name) is not None


def how_to_get(name: str, fetching: bool = False) -> str:
    fetch_hint = "" if fetching else f"run `python -m explorer data fetch {name}` where the internet is reachable, or "
    return f"{INSTALL.get(name, '')}{fetch_hint}name a folder holding the four IDX files"


def fetch(name: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """Download `name` with torchvision into `folder` (default: the first place the explorer looks). Only
    ever called when a user asks; where the internet is out of reach, says how else to get the files."""
    from torchvision.datasets import MNIST, FashionMNIST

    if name not in ("fashion-mnist", "mnist"):
        raise bad_value("data set to fetch", name, ("fashion-mnist", "mnist"))
    root = Path(folder) if folder else DEFAULT_ROOTS[name][0]
    cls = FashionMNIST if name == "fashion-mnist" else MNIST
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # urllib's many ways to say "no network"
        raise ValueError(f"could not download {name} ({first_line(e, 150)}): the internet is out of reach from "
                         f"here; {how_to_get(name, fetching=True)}") from None
    return root


def _idx_file(base: Path, name: str) -> Path | None:
    """`name` as torchvision unpacks it, or gzipped as the data set's authors and Debian ship it."""
    return next((p for p in (base / name, base / f"{name}.gz") if p.is_file()), None)


def _read_idx_in(base: Path, name: str) -> np.ndarray:
    """An IDX file of a folder _find_idx_base found complete (it checked each file is there)."""
    path = _idx_file(base, name)
    if path is None:
        raise ValueError(f"dataset folder {str(base)!r} has no {name} (nor {name}.gz)")
    return read_idx(path, as_floats_mb=settings.get("EXPLORER_MAX_DECODED_MB"))


def _find_base(root: Path, sub: str, files: tuple[str, ...]) -> Path | None:
    """The folder holding `files`: the subfolder torchvision expects, or the named folder itself."""
    return next((b for b in (root / sub, root) if all((b / f).is_file() for f in files)), None)


def _find_idx_base(root: Path, sub: str) -> Path | None:
    return next((b for b in (root / sub, root / "raw", root) if all(_idx_file(b, f) for f in _MNIST_FILES)), None)


def default_root(name: str) -> Path | None:
    """The first of the data set's usual places that holds it, or None."""
    sub = "FashionMNIST/raw" if name == "fashion-mnist" else "MNIST/raw"
    return next((r for r in DEFAULT_ROOTS.get(name, ()) if _find_idx_base(r, sub)), None)


def _missing(name: str, root: Path, where: str, files: tuple[str, ...]) -> ValueError:
    if not root.exists():
        head = f"dataset folder {str(root)!r} for {name} does not exist"
    else:
        head = f"dataset folder {str(root)!r} for {name} is incomplete"
    return ValueError(f"{head}: expected the files {', '.join(files)} in {where} (nothing is downloaded)")


# torchvision.datasets' folder and class names (MNIST.classes, FashionMNIST.classes; test_data checks them)
_MNIST_LIKE = {"mnist": ("MNIST", ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                                   "7 - seven", "8 - eight", "9 - nine")),
               "fashion-mnist": ("FashionMNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                                  "Shirt", "Sneaker", "Bag", "Ankle boot"))}


def _mnist_like(name: str, root: Path) -> tuple[Pair, Pair, list[str]]:
    """The four IDX files (plain or gzipped) in torchvision's layout (<root>/MNIST/raw/...), in a raw/
    subfolder, or in the named folder itself."""
    folder, classes = _MNIST_LIKE[name]  # torchvision's names, without importing it (seconds) to read them
    sub = f"{folder}/raw"
    base = _find_idx_base(root, sub)
    if base is None:
        raise _missing(name, root, str(root / sub), _MNIST_FILES)
    parts: list[Pair] = []
    for images, labels in (_MNIST_FILES[:2], _MNIST_FILES[2:]):
        x = _read_idx_in(base, images)
        y = _read_idx_in(base, labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8 or not len(x):
            raise ValueError(f"dataset folder {str(base)!r} for {name}: {images} holds {x.dtype} images of shape "
                             f"{x.shape} for {y.shape} labels; expected N uint8 images for N labels, N at least 1")
        parts.append((torch.from_numpy(x).float().div(255.0).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    n_classes = int(max(parts[0][1].max(), parts[1][1].max())) + 1
    if n_classes > len(classes) or min(int(parts[0][1].min()), int(parts[1][1].min())) < 0:
        raise ValueError(f"dataset folder {str(base)!r} for {name}: labels outside 0..{len(classes) - 1}")
    return parts[0], parts[1], list(classes)


class RefusedGlobal(ValueError):
    """A pickle asked for a global other than the array builders: how a pickle runs code, so never loaded."""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (what the CIFAR batches hold); any other
    global, which is how a pickle runs code, is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise RefusedGlobal(f"refused global {module}.{name}: data files may hold arrays only")


def safe_unpickle(data: bytes) -> object:
    """Plain containers, strings, numbers and numpy arrays back. Anything else is one ValueError of one line: a
    RefusedGlobal for a pickle that asks for any other global, else 'not a pickle of arrays (...)' with the cause,
    since truncated or corrupt bytes fail in many ways inside pickle."""
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal:
        raise
    except Exception as e:
        cause = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"not a pickle of arrays ({cause})") from None


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


def _cifar(name: str, root: Path) -> tuple[Pair, Pair, list[str]]:
    sub, train_files, test_files, meta_file, label_key, names_key = _CIFAR[name]
    files = train_files + test_files + (meta_file,)
    base = _find_base(root, sub, files)
    if base is None:
        raise _missing(name, root, str(root / sub), files)

    def read(fname: str) -> dict[Any, Any]:
        try:
            obj = safe_unpickle((base / fname).read_bytes())
        except Exception as e:
            raise ValueError(f"CIFAR file {str(base / fname)!r} could not be read: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"CIFAR file {str(base / fname)!r} holds {type(obj).__name__}, expected a dict")
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}

    def batches(names: tuple[str, ...]) -> Pair:
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for f in names:
            d = read(f)
            if "data" not in d or label_key not in d:
                raise ValueError(f"CIFAR file {str(base / f)!r} lacks the keys 'data' and {label_key!r}")
            data = np.asarray(d["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(d[label_key]) != data.shape[0]:
                raise ValueError(f"CIFAR file {str(base / f)!r} has data of shape {data.shape}, expected (N, 3072)")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        x = torch.from_numpy(np.concatenate(xs)).float().div(255.0)
        return x, torch.from_numpy(np.concatenate(ys))

    meta = read(meta_file)
    expected = {"cifar10": 10, "cifar100": 100}[name]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    if len(classes) != expected:
        classes = [str(i) for i in range(expected)]
    train, test = batches(train_files), batches(test_files)
    for split, (_, y) in (("training", train), ("test", test)):
        out = y[(y < 0) | (y >= expected)]
        if len(out):
            raise ValueError(f"CIFAR files in {str(base)!r} hold the label {int(out[0])} in their {split} images: "
                             f"{name} labels are 0 to {expected - 1}")
    return train, test, classes


def export_split(bundle: DataBundle, split: str) -> dict[str, np.ndarray]:
    """The exact preprocessed tensors the explorer evaluates on, for checking figures from outside."""
    s = bundle.split(split)
    return {"x": s.x.numpy().astype(np.float32), "y": s.y.numpy().astype(np.int64)}
