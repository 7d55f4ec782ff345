"""The packed deployable artifact (`.xpk`): every tensor of a compressed model in its cheapest exact
encoding, and the runnable model rebuilt from those bytes alone (JSON and numbers; no pickle, no code).

File: MAGIC | format version (uint16 LE) | header length (uint32 LE) | header (JSON; from version 2 in
one zstd frame) | payload | SHA-256 of everything before it. The header names the architecture, the
layers that differ from it (explorer.artifact.architecture), the activation quantisation spec and, per tensor, how
its payload section is encoded. A section is: side arrays (float32 scales / zero points / centroids) |
sparse index (bitmask or relative indices) | value codes bit-packed at exactly their width; optionally
one zstd frame.

Every choice is checked by decoding it at pack time and comparing bits with the model's tensor; an
encoding that does not reproduce it (weights moved off their recorded grid, -0.0 where a grid gives
+0.0) is dropped for the next cheapest, down to raw dense bits, which are always exact. So size
figures read from these bytes and accuracy measured on `unpack(...)` describe the same model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zstandard
from torch import nn

from explorer.artifact import bitpack, bounds
from explorer.artifact.architecture import describe, materialize, rebuild
from explorer.artifact.codecs import Values, bits_view, candidates, decode_values, side_bytes
from explorer.compress.base import CompressionState
from explorer.compress.quantize import attach_activation_quant
from explorer.core import strictjson
from explorer.core.errors import check_choice

MAGIC = b"XPK\x01"
VERSION = 2  # 2: the header JSON is one zstd frame (on a small model it was most of the file); 1: plain JSON
READS = (1, 2)
# no honest header comes near this (2,000 tensors, the most of any classification model, take 0.5 MB), and
# parsing one takes some 20 times its size in memory: a zstd bomb in the header, or a plain one, stops here
HEADER_CAP = 4 << 20
SUFFIX = ".xpk"
ENTROPY = ("auto", "zstd", "none")
ZSTD_LEVEL = 19
_PREFIX = struct.Struct("<4sHI")  # magic, format version, header length
_DIGEST = 32
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                      torch.int64, torch.int32, torch.int16, torch.int8,
                                                      torch.uint8, torch.bool)}


class PackError(ValueError):
    """A blob that is not a readable packed model; the message says what is wrong with it."""


@dataclass
class Unpacked:
    model: nn.Module
    header: dict[str, Any]


# ---------------------------------------------------------------- sections: side | index | values


def _serialize(v: Values, layout: dict[str, Any], positions: np.ndarray, keep: np.ndarray) -> bytes:
    bits = v.params["bits"]
    if layout["kind"] == "dense":
        return v.side + bitpack.pack_bits(v.codes, bits)
    if layout["kind"] == "bitmask":
        index = bitpack.pack_mask(keep)
    else:
        index = bitpack.pack_bits(bitpack.csr_encode(positions, layout["index_bits"]), layout["index_bits"])
    return v.side + index + bitpack.pack_bits(v.codes[positions], bits)


def _decode_section(e: dict[str, Any], data: bytes, dtype: torch.dtype) -> torch.Tensor:
    p, layout, shape = e["encoding"], e["layout"], [int(s) for s in e["shape"]]
    n, bits = math.prod(shape), int(p["bits"])
    if not 1 <= bits <= 64:
        raise PackError(f"value width {bits} bits is outside [1, 64]")
    at = side_bytes(p)
    side, positions = data[:at], None
    if layout["kind"] == "bitmask":
        keep = bitpack.unpack_mask(data[at:at + (n + 7) // 8], n)
        at += (n + 7) // 8
        positions = np.flatnonzero(keep)
    elif layout["kind"] == "csr":
        ib, entries = int(layout["index_bits"]), int(layout["entries"])
        if ib not in bitpack.CSR_INDEX_BITS:
            raise PackError(f"index_bits {ib} is not one of {bitpack.CSR_INDEX_BITS}")
        size = bitpack.nbytes(entries, ib)
        if at + size > len(data):
            raise PackError(f"section of {len(data)} bytes is shorter than its indices")
        positions = bitpack.csr_decode(bitpack.unpack_bits(data[at:at + size], ib, entries), ib)
        at += size
        if len(positions) and positions[-1] >= n:
            raise PackError(f"relative indices run to element {positions[-1]} of {n}")
    elif layout["kind"] != "dense":
        raise PackError(f"unknown layout {layout['kind']!r}")
    count = n if positions is None else len(positions)
    need = at + bitpack.nbytes(count, bits)
    if need != len(data):
        raise PackError(f"section holds {len(data)} bytes, its encoding needs {need}")
    values = bitpack.unpack_bits(data[at:], bits, count)
    if positions is None:
        out = decode_values(p, side, values, shape, dtype)
    else:
        out = _scatter(p, side, values, positions, shape, dtype)
    nonzero = int((bits_view(out) != 0).sum())
    if nonzero != e["nonzero"]:
        raise PackError(f"decodes to {nonzero} non-zero elements, the header says {e['nonzero']}")
    return out


def _scatter(p: dict[str, Any], side: bytes, values: np.ndarray, positions: np.ndarray, shape: list[int],
             dtype: torch.dtype) -> torch.Tensor:
    """Decode the stored values into their positions; every other element is a +0.0 (or 0)."""
    n = math.prod(shape)
    codes = np.zeros(n, dtype=values.dtype)
    codes[positions] = values
    out = decode_values(p, side, codes, shape, dtype).reshape(-1)
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[torch.from_numpy(positions)] = False
    if out.dtype == torch.bool:
        out[dropped] = False
    else:
        bits_view(out)[dropped] = 0  # a view: zeroes the bits, so a stored-away zero is +0.0
    return out.reshape(shape)


def _options(v: Values, t: torch.Tensor, positions: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
    """(bytes, layout) for each layout in which this encoding reproduces t exactly."""
    n, m, bits = t.numel(), len(positions), v.params["bits"]
    try:
        dec = decode_values(v.params, v.side, v.codes, list(t.shape), t.dtype)
    except ValueError:  # a state that does not fit the tensor (a codebook index past its centroids)
        return []
    same = (bits_view(dec) == bits_view(t)).reshape(-1)
    out: list[tuple[int, dict[str, Any]]] = []
    if bool(same.all()):
        out.append((len(v.side) + bitpack.nbytes(n, bits), {"kind": "dense"}))
    if m < n and bool(same[torch.from_numpy(positions)].all()):
        out.append((len(v.side) + (n + 7) // 8 + bitpack.nbytes(m, bits), {"kind": "bitmask"}))
        ib, entries = bitpack.best_csr(positions)
        out.append((len(v.side) + bitpack.nbytes(entries, ib) + bitpack.nbytes(m, bits),
                    {"kind": "csr", "index_bits": ib, "entries": entries}))
    return out


def _entropy(raw: bytes, mode: str) -> tuple[str, bytes]:
    if mode == "none" or (mode == "auto" and len(raw) < 64):
        return "none", raw
    if mode == "auto" and len(zstandard.ZstdCompressor(level=3).compress(raw)) >= len(raw):
        return "none", raw  # a fast probe: where level 3 finds nothing, the slow level rarely does
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return ("zstd", packed) if mode == "zstd" or len(packed) < len(raw) else ("none", raw)


def _encode_tensor(name: str, t: torch.Tensor, state: CompressionState, entropy: str) -> tuple[dict[str, Any], bytes]:
    keep = (bits_view(t) != 0).reshape(-1).numpy()
    positions = np.flatnonzero(keep)
    choices = []
    for i, v in enumerate(candidates(name, t, state)):
        choices += [(size, i, j, v, layout) for j, (size, layout) in enumerate(_options(v, t, positions))]
    for *_, v, layout in sorted(choices, key=lambda c: c[:3]):
        raw = _serialize(v, layout, positions, keep)
        entry = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                 "nonzero": len(positions), "encoding": v.params, "layout": layout, "raw_length": len(raw)}
        try:
            exact = torch.equal(bits_view(_decode_section(entry, raw, t.dtype)), bits_view(t))
        except ValueError:
            exact = False
        if exact:
            entry["entropy"], data = _entropy(raw, entropy)
            return entry, data
    raise RuntimeError(f"no exact encoding for {name}; raw bits should always be one")  # pragma: no cover


# ---------------------------------------------------------------- the file


def pack(model: nn.Module, state: CompressionState, architecture: dict[str, Any], *, entropy: str = "auto") -> bytes:
    """The packed file's bytes for `model` (as compressed with `state`) built on `architecture`."""
    check_choice("entropy", entropy, ENTROPY)
    tensors, chunks, offset = [], [], 0
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES.values():
            raise ValueError(f"tensor {name} has dtype {t.dtype}; the packed format holds {sorted(_DTYPES)}")
        entry, data = _encode_tensor(name, t, state, entropy)
        tensors.append({**entry, "offset": offset, "length": len(data)})
        chunks.append(data)
        offset += len(data)
    header = {"format": "xpk", "version": VERSION, "architecture": architecture,
              "structure": describe(model, architecture), "activations": state.activations,
              "payload_length": offset, "tensors": tensors}
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"the packed header must be plain JSON data: {e}") from None
    text = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(text)
    body = _PREFIX.pack(MAGIC, VERSION, len(text)) + text + b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def _read(blob: bytes) -> tuple[dict[str, Any], memoryview]:
    """Header and payload of a checked blob (magic, version, lengths, checksum, JSON)."""
    blob = bytes(blob)
    n = len(blob)
    if blob[:4] != MAGIC[:n]:
        raise PackError(f"bad magic {blob[:4]!r}: not a packed model (expected {MAGIC!r})")
    if n < _PREFIX.size + _DIGEST:
        raise PackError(f"truncated: {n} bytes cannot hold even the fixed fields and the checksum")
    _, version, hlen = _PREFIX.unpack_from(blob)
    if version not in READS:
        known = ", ".join(map(str, READS))
        raise PackError(f"unsupported format version {version} (this reader knows versions {known})")
    end = _PREFIX.size + hlen
    if end + _DIGEST > n:
        raise PackError(f"truncated: the header alone needs {end + _DIGEST} bytes, the blob has {n}")
    digest_ok = hashlib.sha256(blob[:-_DIGEST]).digest() == blob[-_DIGEST:]
    raw = blob[_PREFIX.size:end]
    try:
        if version >= 2:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
                raw = reader.read(HEADER_CAP + 1)
            if len(raw) > HEADER_CAP:
                raise PackError(f"header inflates past {HEADER_CAP} bytes: refused")
        elif len(raw) > HEADER_CAP:
            raise PackError("checksum mismatch" if not digest_ok else
                            f"header of {len(raw)} bytes is past the {HEADER_CAP} allowed: refused")
        levels = bounds.depth(raw)  # measured first: json recurses once per level
        if levels > bounds.MAX_DEPTH:
            raise PackError("checksum mismatch" if not digest_ok else
                            f"header nests {levels:,} levels deep; at most {bounds.MAX_DEPTH} are allowed")
        header = strictjson.loads(raw.decode("utf-8"))
    except strictjson.DuplicateKeyError as e:  # two readers could see two different models
        raise PackError("checksum mismatch" if not digest_ok else f"header is ambiguous: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, zstandard.ZstdError, RecursionError) as e:
        raise PackError("checksum mismatch" if not digest_ok else f"header is not valid JSON: {e}") from None
    size = header.get("payload_length") if isinstance(header, dict) else None
    if not isinstance(size, int) or size < 0 or not isinstance(header.get("tensors"), list):
        raise PackError("checksum mismatch" if not digest_ok else "header lacks payload_length or tensors")
    if end + size + _DIGEST > n:
        raise PackError(f"truncated: the header describes {end + size + _DIGEST} bytes, the blob has {n}")
    if end + size + _DIGEST < n:
        raise PackError(f"{n - end - size - _DIGEST} unexpected bytes after the payload")
    if not digest_ok:
        raise PackError("checksum mismatch: the bytes are not the ones that were packed")
    try:
        bounds.check(header, _DTYPES)
    except ValueError as e:
        raise PackError(str(e)) from None
    return header, memoryview(blob)[end:end + size]


def _section(e: dict[str, Any], payload: memoryview) -> bytes:
    off, length = e["offset"], e["length"]
    if not (isinstance(off, int) and isinstance(length, int) and 0 <= off and 0 <= length
            and off + length <= len(payload)):
        raise PackError(f"section [{off}, +{length}) lies outside the {len(payload)}-byte payload")
    data, raw_length = bytes(payload[off:off + length]), int(e["raw_length"])
    if not 0 <= raw_length <= 16 * math.prod(e["shape"]) + 65536:  # no honest section is larger: no zstd bombs
        raise PackError(f"raw_length {raw_length} is implausible for shape {e['shape']}")
    if e["entropy"] == "zstd":
        try:  # a frame that declares its size is decoded to that size whatever max_output_size says
            if zstandard.frame_content_size(data) not in (raw_length, -1):
                raise PackError(f"zstd frame declares {zstandard.frame_content_size(data)} bytes, not {raw_length}")
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_length)
        except zstandard.ZstdError as err:
            raise PackError(f"zstd stream is corrupt: {err}") from None
    elif e["entropy"] != "none":
        raise PackError(f"unknown entropy coding {e['entropy']!r}")
    if len(data) != raw_length:
        raise PackError(f"section decodes to {len(data)} bytes, the header says {raw_length}")
    return data


def unpack(blob: bytes) -> Unpacked:
    """The runnable model (eval mode, activation quantisation re-attached) and the header."""
    header, payload = _read(blob)
    try:  # on the meta device: nothing of the size the header declares is allocated before this passes
        shaped = bounds.check_model(header)
    except ValueError as refusal:
        raise PackError(str(refusal)) from None
    # only the file's tensors are allocated (the layers the structure replaces are never built); a model that
    # keeps a large tensor the file does not hold is built as the architecture builds it
    model = materialize(shaped)
    if model is None:
        try:
            model = rebuild(header["architecture"], header["structure"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PackError(f"structure cannot be rebuilt: {err}") from None
    expected = model.state_dict()
    decoded: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        name = e.get("name") if isinstance(e, dict) else None
        ref = expected.get(name) if isinstance(name, str) else None
        if ref is None or not isinstance(name, str) or name in decoded:  # (ref is None for any name not a str)
            raise PackError(f"tensor {name!r} is {'repeated' if name in decoded else 'not in the rebuilt model'}")
        try:
            if list(e["shape"]) != list(ref.shape) or _DTYPES.get(e["dtype"]) != ref.dtype:
                raise PackError(f"is {e['dtype']} {e['shape']}, the model needs {ref.dtype} {list(ref.shape)}")
            decoded[name] = _decode_section(e, _section(e, payload), ref.dtype)
        except (PackError, KeyError, TypeError, ValueError, IndexError) as err:
            raise PackError(f"tensor {name}: {err}") from None
    missing = sorted(set(expected) - set(decoded))
    if missing:
        raise PackError(f"tensor {missing[0]} is missing ({len(missing)} tensors of the model are not in the file)")
    model.load_state_dict(decoded, strict=True)
    try:
        attach_activation_quant(model, header.get("activations"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PackError(f"activations spec is invalid: {e}") from None
    return Unpacked(model.eval(), header)


def tensor_report(blob: bytes) -> list[dict[str, Any]]:
    """Per tensor: how it is stored and how many bytes of the file it takes (the per-layer size column)."""
    header, _ = _read(blob)
    rows = []
    for e in header["tensors"]:
        enc, layout = e["encoding"], e["layout"]
        rows.append({"name": e["name"], "shape": e["shape"], "numel": math.prod(e["shape"]), "nonzero": e["nonzero"],
                     "encoding": enc["kind"], "bits": enc["bits"], "layout": layout["kind"],
                     "index_bits": layout.get("index_bits"), "entropy": e["entropy"], "bytes": e["length"],
                     "raw_bytes": e["raw_length"]})
    return rows


def theoretical_bits(model: nn.Module, state: CompressionState) -> dict[str, Any]:
    """The textbook count, labelled theoretical: per tensor, stored values x value bits (k for k-bit
    quantisation; ceil(log2 k) per index plus 32 per centroid for a codebook; 16 for fp16/bf16; 32 for
    other floats, the dtype's width for integers) plus the index overhead of the cheaper of dense, a
    bitmask (one bit per element) and relative indices. Scales, zero points and headers are not counted."""
    rows, total = [], 0
    for name, t in model.state_dict().items():
        n = t.numel()
        nz = np.flatnonzero((t.detach().cpu() != 0).reshape(-1).numpy())
        options = []  # (value bits, table bits, encoding)
        if name in state.quant:
            options.append((state.quant[name].bits, 0, f"int{state.quant[name].bits}"))
        if name in state.codebooks:
            k = state.codebooks[name].centroids.numel()
            options.append((max(1, math.ceil(math.log2(k))), 32 * k, "codebook"))
        if name in state.float_format:
            options.append((16, 0, state.float_format[name]))
        if not options:
            options.append((32 if t.is_floating_point() else t.element_size() * 8, 0, "raw"))
        vb, table, enc = min(options, key=lambda o: o[0] * n + o[1])
        layouts = [(n * vb, 0, "dense")]
        if len(nz) < n:
            csr = min(bitpack.csr_entries(nz, b) * b for b in bitpack.CSR_INDEX_BITS)
            layouts += [(len(nz) * vb + n, n, "bitmask"), (len(nz) * vb + csr, csr, "csr")]
        bits, index, layout = min(layouts, key=lambda x: x[0])
        rows.append({"name": name, "numel": n, "nonzero": len(nz), "encoding": enc, "value_bits": vb,
                     "layout": layout, "index_bits": index, "table_bits": table, "bits": bits + table})
        total += bits + table
    return {"kind": "theoretical", "tensors": rows, "total_bits": total, "total_bytes": math.ceil(total / 8)}
