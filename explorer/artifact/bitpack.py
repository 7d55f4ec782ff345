"""Bit-level layouts for the packed format (explorer.artifact.pack), on plain numpy arrays.

Codes of any width from 1 to 64 bits are packed back to back, least significant bit first
(np.packbits with bitorder="little"), so a 4-bit tensor of a million weights is 500,000 bytes.

Sparse tensors store only their non-zero elements, with either a bitmask (one bit per element) or
Deep Compression's relative indices (Han et al. 2016, sec. 3): each kept element is stored with the
gap to the previous one in b bits. Deep Compression writes a zero value at a filler position when a
gap does not fit in b bits; here the largest b-bit code is reserved as the filler ("skip 2^b - 1
positions") and carries no value, which stores the same positions in fewer bits and keeps fillers
apart from real entries whatever the value encoding (a codebook need not contain 0).
"""

from __future__ import annotations

import numpy as np

CSR_INDEX_BITS = (2, 3, 4, 5, 6, 8)


def _container(bits: int) -> np.dtype:
    for width in (8, 16, 32, 64):
        if bits <= width:
            return np.dtype(f"<u{width // 8}")
    raise ValueError(f"bits={bits} must be in [1, 64]")


def nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Unsigned integer codes (each < 2**bits) written at exactly `bits` bits each."""
    dt = _container(bits)
    arr = np.ascontiguousarray(codes.reshape(-1), dtype=dt)
    if bits == dt.itemsize * 8:
        return arr.tobytes()
    # one row of container bits per code, keep the low `bits` columns, then re-pack the stream
    planes = np.unpackbits(arr.view(np.uint8).reshape(-1, dt.itemsize), axis=1, bitorder="little")
    return np.packbits(planes[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of pack_bits: `count` codes in the smallest unsigned dtype that holds `bits`."""
    dt = _container(bits)
    raw = np.frombuffer(buf, dtype=np.uint8)
    if len(raw) < nbytes(count, bits):
        raise ValueError(f"{len(raw)} bytes hold fewer than {count} codes of {bits} bits")
    if bits == dt.itemsize * 8:
        return raw[:count * dt.itemsize].view(dt).copy()
    stream = np.unpackbits(raw, count=count * bits, bitorder="little").reshape(count, bits)
    planes = np.zeros((count, dt.itemsize * 8), dtype=np.uint8)
    planes[:, :bits] = stream
    return np.packbits(planes, axis=1, bitorder="little").reshape(-1).view(dt)


def pack_mask(keep: np.ndarray) -> bytes:
    return np.packbits(keep.reshape(-1), bitorder="little").tobytes()


def unpack_mask(buf: bytes | memoryview | np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=count, bitorder="little").astype(bool)


# ---------------------------------------------------------------- relative (CSR) indices


def _gaps(positions: np.ndarray) -> np.ndarray:
    """Distance of each kept position from the previous one (the first from -1), so every gap is >= 1."""
    return np.diff(positions.astype(np.int64), prepend=-1)


def csr_entries(positions: np.ndarray, index_bits: int) -> int:
    """Index codes needed for these sorted positions: one per kept element plus the fillers."""
    skip = (1 << index_bits) - 1
    return int(len(positions) + ((_gaps(positions) - 1) // skip).sum())


def csr_encode(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Index codes: gap - 1 for a kept element (0 .. 2^b - 2); 2^b - 1 for a filler that advances
    2^b - 1 positions and stores no value."""
    skip = (1 << index_bits) - 1
    gaps = _gaps(positions)
    fillers = (gaps - 1) // skip
    codes = np.full(int(len(positions) + fillers.sum()), skip, dtype=np.int64)
    real = np.cumsum(fillers + 1) - 1  # where each kept element's code lands, after its fillers
    codes[real] = gaps - fillers * skip - 1
    return codes


def csr_decode(codes: np.ndarray, index_bits: int) -> np.ndarray:
    """Sorted positions of the kept elements."""
    skip = (1 << index_bits) - 1
    codes = codes.astype(np.int64)
    real = codes != skip
    steps = np.where(real, codes + 1, skip)
    positions: np.ndarray = (np.cumsum(steps) - 1)[real]
    return positions


def best_csr(positions: np.ndarray) -> tuple[int, int]:
    """(index_bits, entries) of the width in CSR_INDEX_BITS that stores these positions in the fewest bytes."""
    _, bits = min((nbytes(csr_entries(positions, b), b), b) for b in CSR_INDEX_BITS)
    return bits, csr_entries(positions, bits)
