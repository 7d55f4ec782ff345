"""The IDX format of MNIST and Fashion-MNIST (LeCun's "THE MNIST DATABASE" page), plain or gzipped, read
into numpy without trusting the header: the data must be exactly as long as the dimensions say.

Debian's `dataset-fashion-mnist` ships the four files gzipped; torchvision's reader takes only the
unpacked ones, so the explorer reads both itself (and the tests check it against torchvision's).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
         0x0E: np.dtype(">f8")}
MAX_BYTES = 1 << 31  # no IDX data set the explorer reads comes near 2 GiB; a header that says so lies


def read_idx(path: str | os.PathLike[str], as_floats_mb: float | None = None) -> np.ndarray:
    """The array an IDX file holds (`.gz` is decompressed as it is read); ValueError naming the file if the
    header is not IDX or the data does not match it. With `as_floats_mb`, an array that would take more
    megabytes than that as 32-bit floats (the data set it becomes) is refused from its header, before its data
    is read: a gzipped file of zeros expands about a thousand times."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:2] != b"\0\0" or head[2] not in TYPES or not 1 <= head[3] <= 4:
                raise ValueError(f"IDX file {p.name!r} has no IDX header (magic {head.hex() or 'missing'})")
            dtype, ndim = np.dtype(TYPES[head[2]]), head[3]  # type: ignore[call-overload]  # TYPES holds dtype names
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise ValueError(f"IDX file {p.name!r} ends inside its header")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            n = math.prod(dims) * dtype.itemsize  # Python's integers: numpy's int64 wraps past 2**63
            if n > MAX_BYTES:
                raise ValueError(f"IDX file {p.name!r} declares {dims}, {n:,} bytes: more than any data set read here")
            floats = math.prod(dims) * 4
            if as_floats_mb is not None and floats > as_floats_mb * 2**20:
                raise ValueError(f"IDX file {p.name!r} declares {dims}: {floats / 2**20:,.0f} MB as a data set, over "
                                 f"the cap of {as_floats_mb:,.4g} MB (EXPLORER_MAX_DECODED_MB)")
            data = f.read(n)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"IDX file {p.name!r} could not be read: {e}") from None
    if extra:
        raise ValueError(f"IDX file {p.name!r} has bytes past the end of the {dims} array its header declares")
    if len(data) != n:
        raise ValueError(f"IDX file {p.name!r} holds {len(data):,} data bytes, but its header {dims} says {n:,}")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)
