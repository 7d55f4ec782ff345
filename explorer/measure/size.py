"""Sizes read from files that exist: the checkpoint, its gzip (seed 001's measure) and zstd, the packed
artifact, the ONNX files; reduction factors computed from those byte counts.

The checkpoint of a compressed variant is its state_dict as safetensors, in fp16/bf16 where the
recipe made it so and fp32 otherwise: a pruned checkpoint is therefore no smaller than the dense one
(the zeros are stored), which is exactly what a user who saves the model gets; the packed size is
where sparsity and low bit-widths show.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import zstandard
from safetensors.torch import save_file
from torch import nn

SIZE_KINDS = ("state_dict_bytes", "file_bytes", "gzip_bytes", "zstd_bytes", "packed_bytes", "onnx_bytes",
              "onnx_int8_bytes")


def state_dict_bytes(model: nn.Module, float_format: dict[str, str] | None = None) -> int:
    """Bytes of the tensors themselves (what seed 004 checks the file against)."""
    total = 0
    for k, t in model.state_dict().items():
        fmt = (float_format or {}).get(k)
        total += t.numel() * (2 if fmt in ("fp16", "bf16") else t.element_size())
    return total


def write_checkpoint(model: nn.Module, path: str | os.PathLike[str], float_format: dict[str, str] | None = None) -> int:
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    tensors = {}
    for k, t in model.state_dict().items():
        t = t.detach().contiguous().clone()
        fmt = (float_format or {}).get(k)
        tensors[k] = t.to(dtypes[fmt]) if fmt in dtypes else t
    save_file(tensors, str(path))
    return Path(path).stat().st_size


def gzip_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> int:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    return Path(dst).stat().st_size


def zstd_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> int:
    Path(dst).write_bytes(zstandard.ZstdCompressor(level=19).compress(Path(src).read_bytes()))
    return Path(dst).stat().st_size


def check_file_against_tensors(file_bytes: int, tensor_bytes: int, n_tensors: int) -> dict[str, Any]:
    """Seed 004's sanity check: the file is the tensors plus a small header (safetensors: 8 bytes of
    length, a JSON index of about 100 bytes per tensor, alignment)."""
    overhead = file_bytes - tensor_bytes
    ok = 0 <= overhead <= 256 + 160 * n_tensors
    return {"file_bytes": file_bytes, "state_dict_bytes": tensor_bytes, "overhead_bytes": overhead, "consistent": ok}


def reduction_factors(sizes: Mapping[str, int | None], baseline_file_bytes: int,
                      baseline_sizes: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
    """Per size kind: the fp32 baseline file's bytes over this kind's bytes (DESIGN's definition), and,
    where the baseline's own figure of the same kind is known, like-for-like (seed 001's gzip ratio)."""
    vs_file = {k: round(baseline_file_bytes / v, 4) for k, v in sizes.items() if isinstance(v, int) and v > 0}
    same = {}
    if baseline_sizes:
        same = {k: round(baseline_sizes[k] / v, 4) for k, v in sizes.items()
                if isinstance(v, int) and v > 0 and isinstance(baseline_sizes.get(k), int)}
    return {"vs_fp32_file": vs_file, "same_kind": same}
