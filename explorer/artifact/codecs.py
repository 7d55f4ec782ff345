"""Value encodings of the packed format (explorer.artifact.pack): each writes a tensor's elements as unsigned
integer codes of a fixed width plus the float32 side arrays needed to decode them.

Which encodings a tensor is offered comes from the compression state (a QuantRecord gives k-bit codes
on the recorded grid: per tensor, per output channel, or per row and group of inputs, where the header's
"group" is the group length and the side arrays hold a scale and zero point per group, row by row; a
Codebook gives cluster indices, float_format gives 16-bit floats); the data decides whether they hold
(explorer.artifact.pack decodes each one and compares bits). A float tensor with few distinct values also
gets a palette, an integer tensor an offset code, and every tensor raw bits.
Decoding errors raise ValueError; explorer.artifact.pack reports them as PackError with the tensor's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explorer.compress import qmath
from explorer.compress.base import CompressionState, QuantRecord

PALETTE_MAX = 256
_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class Values:
    params: dict[str, Any]  # the header's "encoding": kind, bits and what decoding needs
    codes: np.ndarray  # unsigned, one per element, each < 2**bits
    side: bytes  # float32 arrays decoding needs, stored ahead of the indices


def bits_view(t: torch.Tensor) -> torch.Tensor:
    """Integers with the tensor's exact bit pattern (so -0.0 != +0.0 and NaN payloads count)."""
    if t.is_floating_point():
        return t.view(_SIGNED[t.element_size()])
    return t.to(torch.uint8) if t.dtype == torch.bool else t


def raw_codes(t: torch.Tensor) -> np.ndarray:
    b = bits_view(t.reshape(-1)).numpy()
    return b.view(f"<u{b.itemsize}")


def _f32(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").copy())


def candidates(name: str, t: torch.Tensor, state: CompressionState) -> list[Values]:
    """Encodings the state says this tensor has (each still to be verified), then raw bits."""
    out: list[Values] = []
    if t.dtype == torch.float32:
        rec = state.quant.get(name)
        if rec is not None and rec.group_size:
            out += _grouped(t, rec)
        elif rec is not None and (rec.axis is None or (rec.axis == 0 and t.dim())) \
                and rec.scale.numel() == (1 if rec.axis is None else t.shape[0]):
            scale, zp = rec.scale.detach().cpu().float().reshape(-1), rec.zero_point.detach().cpu().float().reshape(-1)
            qmin, _ = qmath.qrange(rec.bits, rec.symmetric)
            q = qmath.quantize(t, scale, zp, rec.bits, rec.symmetric, rec.axis)
            out.append(Values({"kind": f"int{rec.bits}", "bits": rec.bits, "symmetric": rec.symmetric,
                               "axis": rec.axis, "channels": scale.numel()},
                              (q - qmin).reshape(-1).numpy().astype(np.uint64),
                              scale.numpy().tobytes() + zp.numpy().tobytes()))
        cb = state.codebooks.get(name)
        if cb is not None and cb.centroids.numel() and tuple(cb.assignments.shape) == tuple(t.shape):
            k = cb.centroids.numel()
            out.append(Values({"kind": "codebook", "bits": max(1, math.ceil(math.log2(k))), "k": k},
                              cb.assignments.reshape(-1).cpu().numpy().astype(np.uint64),
                              cb.centroids.detach().cpu().float().numpy().tobytes()))
        fmt = state.float_format.get(name)
        if fmt in ("fp16", "bf16"):
            half = t.to(torch.float16 if fmt == "fp16" else torch.bfloat16)
            out.append(Values({"kind": fmt, "bits": 16}, raw_codes(half), b""))
        pal = palette(raw_codes(t)) if t.numel() else None
        if pal is not None:
            out.append(pal)
    elif not t.is_floating_point() and t.numel():
        lo, hi = int(t.min()), int(t.max())
        if hi - lo < 2 ** 63:  # the offsets must fit int64
            codes = (t.reshape(-1).to(torch.int64) - lo).numpy().astype(np.uint64)
            out.append(Values({"kind": "offset", "bits": max(1, (hi - lo).bit_length()), "min": lo}, codes, b""))
    out.append(Values({"kind": "raw", "bits": t.element_size() * 8}, raw_codes(t), b""))
    return out


def _grouped(t: torch.Tensor, rec: QuantRecord) -> list[Values]:
    """k-bit codes on a group-wise grid (a Linear weight's scale and zero point per row and group of inputs),
    or nothing where the record does not fit the tensor."""
    g = rec.group_size
    if t.dim() != 2 or tuple(rec.scale.shape) != (t.shape[0], math.ceil(t.shape[1] / g)):
        return []
    scale, zp = rec.scale.detach().cpu().float(), rec.zero_point.detach().cpu().float()
    qmin, _ = qmath.qrange(rec.bits, rec.symmetric)
    q = qmath.quantize_groups(t, scale, zp, rec.bits, rec.symmetric, g)
    return [Values({"kind": f"int{rec.bits}", "bits": rec.bits, "symmetric": rec.symmetric, "axis": 0,
                    "channels": scale.numel(), "group": g},
                   (q - qmin).reshape(-1).numpy().astype(np.uint64),
                   scale.reshape(-1).numpy().tobytes() + zp.reshape(-1).numpy().tobytes())]


def palette(raw: np.ndarray) -> Values | None:
    """Distinct float32 values and an index per element (a clustered model without its codebook)."""
    if len(np.unique(raw[:: max(1, len(raw) // 4096)])) > PALETTE_MAX:
        return None  # a cheap sample already rules it out; most float tensors stop here
    table, inverse = np.unique(raw, return_inverse=True)
    if len(table) > PALETTE_MAX:
        return None
    return Values({"kind": "palette", "bits": max(1, math.ceil(math.log2(len(table)))), "k": len(table)},
                  inverse.reshape(-1).astype(np.uint64), table.astype("<u4").tobytes())


def side_bytes(p: dict[str, Any]) -> int:
    """Bytes of float32 side arrays ahead of the indices: scale and zero point per channel, or the table."""
    if p["kind"].startswith("int"):
        return 8 * int(p["channels"])
    return 4 * int(p["k"]) if p["kind"] in ("codebook", "palette") else 0


def decode_values(p: dict[str, Any], side: bytes, codes: np.ndarray, shape: list[int],
                  dtype: torch.dtype) -> torch.Tensor:
    """The tensor these codes stand for (codes of every element, side arrays as stored)."""
    kind, bits = p["kind"], int(p["bits"])
    if kind in ("codebook", "palette"):
        table = _f32(side)
        if codes.size and int(codes.max()) >= len(table):
            raise ValueError(f"index {int(codes.max())} is past the {len(table)}-entry {kind}")
        out = table[torch.from_numpy(codes.astype(np.int64))]
    elif kind.startswith("int") and kind[3:].isdigit():
        c = int(p["channels"])
        scale, zp = _f32(side[:4 * c]), _f32(side[4 * c:])
        axis, group = p["axis"], p.get("group", 0)
        qmin, _ = qmath.qrange(bits, bool(p["symmetric"]))
        if group:  # per row and group of `group` inputs of a 2-D weight
            if type(group) is not int or group < 1 or len(shape) != 2 or c != shape[0] * math.ceil(shape[1] / group):
                raise ValueError(f"{kind} has {c} scales for groups of {group!r} of shape {shape}")
            q = torch.from_numpy(codes.astype(np.int64)).reshape(shape) + qmin
            out = qmath.dequantize_groups(q, scale.reshape(shape[0], -1), zp.reshape(shape[0], -1), group)
            if out.dtype != dtype:
                raise ValueError(f"encoding {kind} gives {out.dtype}, not {dtype}")
            return out
        if axis not in (0, None) or (axis is None and c != 1) or (axis == 0 and c != shape[0]):
            raise ValueError(f"{kind} has {c} scales for axis {axis} of shape {shape}")
        q = torch.from_numpy(codes.astype(np.int64)).reshape(shape) + qmin
        out = qmath.dequantize(q, scale, zp, axis)
    elif kind in ("fp16", "bf16"):
        half = torch.float16 if kind == "fp16" else torch.bfloat16
        out = torch.from_numpy(codes.astype("<u2").view("<i2")).view(half).float()
    elif kind == "offset":
        out = (torch.from_numpy(codes.astype(np.int64)) + int(p["min"])).to(dtype)
    elif kind == "raw":
        width = torch.empty((), dtype=dtype).element_size()
        if bits != 8 * width:
            raise ValueError(f"raw {bits}-bit values cannot hold {dtype}")
        if dtype == torch.bool:
            out = torch.from_numpy(codes != 0)
        elif dtype == torch.uint8:
            out = torch.from_numpy(codes.astype(np.uint8))
        else:
            out = torch.from_numpy(codes.astype(f"<u{width}").view(f"<i{width}")).view(dtype)
    else:
        raise ValueError(f"unknown value encoding {kind!r}")
    if out.dtype != dtype:
        raise ValueError(f"encoding {kind} gives {out.dtype}, not {dtype}")
    return out.reshape(shape)
