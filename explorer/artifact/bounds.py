"""What a packed file's header may declare, checked before anything is built from it.

A packed file is an input like any other (users take it home and load it back), and its header says which
architecture and which layers to build before a single tensor is read: a 149 KB file that declared one
Linear(40000, 40000) made the loader allocate 6.7 GB, one that nested 100,000 lists deep raised
RecursionError. So, in this order: the header's JSON nests at most MAX_DEPTH deep (counted without parsing);
every field has its type and range (`check`); the structure lists at most ENTRIES_PER_MODULE layers per
module of the architecture, each at a layer the architecture has, once; the architecture and those layers
are built on torch's meta device (shapes, no memory) and must ask for exactly the tensors the file stores,
name for name and shape for shape, and for at most twice the parameters of the architecture itself (low-rank
factors at full rank are the most a compression adds), PARAMS_PER_BYTE per byte of the file's data and
EXPLORER_PACK_MAX_PARAMS in all (`check_model`).
Only then are tensors allocated, the file's own (explorer.artifact.architecture.materialize). Every refusal is
a ValueError of one line, which explorer.artifact.pack raises as PackError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from torch import nn

from explorer.artifact import architecture
from explorer.artifact.bitpack import CSR_INDEX_BITS
from explorer.core import settings
from explorer.core.errors import first_line

MAX_DEPTH = 64  # an honest header nests 5 deep (tensors > entry > encoding; structure > entry > args > list)
MAX_TENSORS = 1 << 17  # the largest classification models have a few thousand tensors
MAX_ENTRIES = 1 << 15  # and a few thousand modules
ENTRIES_PER_MODULE = 3  # a factorised layer is listed with its two factors
SLACK = 1 << 20  # parameters any model may hold beyond the two bounds below (a tiny model's factors, its zeros)
# parameters per byte of the file's data: a 99%-sparse 2-bit tensor (the sparsest a recipe makes) stores ~80,
# ~250 when pruned in blocks; a model of zeros stores none (a 1.3 KB file, all header, held ResNet-50's 25.6 million)
PARAMS_PER_BYTE = 4096
_MAX_VALUES = 1 << 48  # a declared tensor size past this is no size at all
ENCODINGS = ("raw", "offset", "fp16", "bf16", "codebook", "palette")  # and int<bits>, a grid of that width
LAYOUTS = ("dense", "bitmask", "csr")
ENTROPY = ("none", "zstd")
LAYER_TYPES = ("Conv2d", "Linear", "BatchNorm2d", "BatchNorm1d", "Factorized", "Attention")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# every string in the header, skipped whole (possessive, so an unclosed one costs one pass, not one per quote)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 opens, -1 (as int8) closes
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_CHUNK = 1 << 20


_Check = Callable[[str, object], object]  # raises ValueError naming the field (`what`) and its value


def max_params() -> int:
    return int(settings.get("EXPLORER_PACK_MAX_PARAMS"))


def depth(raw: bytes) -> int:
    """How deep the JSON text's lists and objects nest (brackets inside strings do not count), in one linear
    pass and a few megabytes, so a 100,000-deep header is measured without recursing into it."""
    steps = np.frombuffer(_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS), dtype=np.int8)
    level = peak = 0
    for at in range(0, len(steps), _CHUNK):
        run = np.cumsum(steps[at:at + _CHUNK], dtype=np.int64) + level
        peak, level = max(peak, int(run.max())), int(run[-1])
    return peak


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(what: str, v: object, allowed: str) -> ValueError:
    return ValueError(f"{what} is {_show(v)}; allowed: {allowed}")


def _int(what: str, v: object, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(what, v, f"a whole number in [{lo}, {hi}]")
    return v


def _choice(what: str, v: object, allowed: Iterable[object]) -> None:
    allowed = list(allowed)
    if not any(type(v) is type(a) and v == a for a in allowed):
        raise _bad(what, v, ", ".join(map(repr, allowed)))


def _bool(what: str, v: object) -> None:
    if type(v) is not bool:
        raise _bad(what, v, "true or false")


def _number(what: str, v: object, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and lo <= v <= hi):
        raise _bad(what, v, f"a number in [{lo:g}, {hi:g}]")


def _object(what: str, v: object, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(what, v, "a JSON object")
    extra = sorted(set(v) - set(allowed)) if allowed is not None else []
    if extra:
        raise ValueError(f"{what} include {_show(extra[0])}; allowed: {', '.join(allowed or ()) or 'none'}")
    return v


def _list(what: str, v: object, most: int) -> list[Any]:
    if not isinstance(v, list):
        raise _bad(what, v, "a JSON list")
    if len(v) > most:
        raise ValueError(f"{what} lists {len(v):,} items; allowed: at most {most:,}")
    return v


# ---------------------------------------------------------------- field by field


def check(header: dict[str, Any], dtypes: Iterable[str]) -> None:
    """Every field of a parsed header has its type and range (the JSON itself was checked by `depth`)."""
    _choice("the header's format", header.get("format"), ["xpk"])
    arch = _object("the architecture's fields", header.get("architecture"), ("name", "kwargs"))
    if not isinstance(arch.get("name"), str) or not 0 < len(arch["name"]) <= 200:
        raise _bad("the architecture's name", arch.get("name"), "a model's name")
    _object("the architecture's arguments", arch.get("kwargs"))
    for i, e in enumerate(_list("the structure", header.get("structure"), MAX_ENTRIES)):
        _check_entry(i, e)
    _check_activations(header.get("activations"))
    names = sorted(dtypes)
    for e in _list("the tensor table", header.get("tensors"), MAX_TENSORS):
        _check_tensor(e, names)


def _check_entry(i: int, e: object) -> None:
    e = _object(f"the fields of structure entry {i}", e, ("path", "type", "args"))
    path = e.get("path")
    if not isinstance(path, str) or not 0 < len(path) <= 1000:
        raise _bad(f"the layer of structure entry {i}", path, "a layer's path such as 'features.0'")
    kind, where = e.get("type"), f"layer {_show(path)}"
    _choice(f"the type of {where}", kind, LAYER_TYPES)
    args = {} if e.get("args") is None else _object(f"the arguments of {where}", e.get("args"), _ARGS[kind])
    for key, value in args.items():
        _ARGS[kind][key](f"{key} of {where} ({kind})", value)


def _size(what: str, v: object) -> None:
    _int(what, v, 1, 1 << 26)


def _pair(lo: int) -> _Check:
    def check_pair(what: str, v: object) -> None:
        if not isinstance(v, list) or len(v) != 2:
            raise _bad(what, v, f"a list of two whole numbers in [{lo}, {1 << 12}]")
        for x in v:
            _int(what, x, lo, 1 << 12)
    return check_pair


def _padding(what: str, v: object) -> None:
    if isinstance(v, str):
        _choice(what, v, ("same", "valid"))
    else:
        _pair(0)(what, v)


def _eps(what: str, v: object) -> None:
    _number(what, v, 1e-30, 1.0)


def _momentum(what: str, v: object) -> None:
    if v is not None:
        _number(what, v, 0.0, 1.0)


_BN: dict[str, _Check] = {
    "num_features": _size, "eps": _eps, "momentum": _momentum, "affine": _bool, "track_running_stats": _bool}
_ARGS: dict[object, dict[str, _Check]] = {
    "Conv2d": {"in_channels": _size, "out_channels": _size, "kernel_size": _pair(1), "stride": _pair(1),
               "padding": _padding, "dilation": _pair(1), "groups": _size, "bias": _bool,
               "padding_mode": lambda what, v: _choice(what, v, PADDING_MODES)},
    "Linear": {"in_features": _size, "out_features": _size, "bias": _bool},
    "BatchNorm2d": _BN, "BatchNorm1d": _BN, "Factorized": {},
    "Attention": {"num_heads": lambda what, v: _int(what, v, 1, 4096),
                  "head_dim": lambda what, v: _int(what, v, 1, 1 << 16)},
}


def _check_activations(spec: object) -> None:
    if spec is None or spec == {}:  # no activation quantisation
        return
    spec = _object("the activation quantisation", spec)
    _int("the activation quantisation's bits", spec.get("bits"), 1, 32)
    _bool("the activation quantisation's dynamic", spec.get("dynamic"))
    ranges = _object("the activation ranges", spec.get("ranges"))
    if len(ranges) > MAX_ENTRIES:
        raise ValueError(f"the activation ranges name {len(ranges):,} layers; allowed: at most {MAX_ENTRIES:,}")
    for layer, r in ranges.items():
        if not isinstance(r, list) or len(r) != 2:
            raise _bad(f"the activation range of {_show(layer)}", r, "a list [low, high]")
        for x in r:
            _number(f"the activation range of {layer!r}", x, -3.4e38, 3.4e38)


def _check_tensor(e: object, dtypes: list[str]) -> None:
    e = _object("a tensor table entry", e)
    name = e.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 1000:
        raise _bad("the name of a tensor in the table", name, "a tensor's name such as 'features.0.weight'")
    what = f"tensor {name}:"
    shape = _list(f"{what} shape", e.get("shape"), 8)
    for s in shape:
        _int(f"{what} dimension", s, 0, _MAX_VALUES)
    n = math.prod(shape)
    if n > _MAX_VALUES:
        raise _bad(f"{what} shape", shape, f"at most {_MAX_VALUES:,} values")
    _choice(f"{what} dtype", e.get("dtype"), dtypes)
    _int(f"{what} non-zero count", e.get("nonzero"), 0, _MAX_VALUES)  # the data must agree: pack decodes it
    for key in ("offset", "length", "raw_length"):
        _int(f"{what} {key.replace('_', ' ')}", e.get(key), 0, _MAX_VALUES)
    _choice(f"{what} entropy coding", e.get("entropy"), ENTROPY)
    layout = _object(f"{what} layout", e.get("layout"))
    _choice(f"{what} layout", layout.get("kind"), LAYOUTS)
    if layout["kind"] == "csr":
        _choice(f"{what} index width", layout.get("index_bits"), CSR_INDEX_BITS)
        _int(f"{what} index count", layout.get("entries"), 0, _MAX_VALUES)
    _check_encoding(what, _object(f"{what} encoding", e.get("encoding")), n)


def _check_encoding(what: str, p: dict[str, Any], n: int) -> None:
    kind = p.get("kind")
    grid = isinstance(kind, str) and re.fullmatch(r"int[1-9][0-9]?", kind) is not None
    if not grid and kind not in ENCODINGS:
        raise _bad(f"{what} value encoding", kind, f"{', '.join(map(repr, ENCODINGS))} or int<bits>")
    bits = _int(f"{what} value width in bits", p.get("bits"), 1, 64)
    if grid:
        if int(str(kind)[3:]) != bits:
            raise _bad(f"{what} value width of {kind}", bits, f"{str(kind)[3:]} bits")
        _bool(f"{what} {kind} symmetric", p.get("symmetric"))
        _choice(f"{what} {kind} axis", p.get("axis"), (0, None))
        _int(f"{what} {kind} scale count", p.get("channels"), 1, max(1, n))
        if "group" in p:
            _int(f"{what} {kind} group length", p["group"], 1, _MAX_VALUES)
    elif kind in ("codebook", "palette"):
        _int(f"{what} {kind} entries", p.get("k"), 1, 1 << min(bits, 32))
    elif kind == "offset":
        _int(f"{what} offset", p.get("min"), -(1 << 63), (1 << 63) - 1)


# ---------------------------------------------------------------- the model it declares


def params(model: nn.Module) -> int:
    """Parameters and buffers: every value of the state dict, which is what a packed file stores."""
    return sum(t.numel() for t in model.state_dict().values())


def check_model(header: dict[str, Any]) -> nn.Module:
    """The architecture and the structure's layers, built on the meta device, ask for exactly the file's
    tensors, and for no more parameters than the caps allow (of a header `check` passed): that model, its
    large tensors still on the meta device."""
    cap, arch, entries = max_params(), header["architecture"], header["structure"]
    stored = {e["name"]: e for e in header["tensors"]}
    declared = sum(math.prod(e["shape"]) for e in stored.values())
    if declared > cap:
        raise ValueError(f"the file's tensors hold {declared:,} parameters, over the cap of {cap:,} "
                         "(EXPLORER_PACK_MAX_PARAMS)")
    data = header["payload_length"]
    if declared > PARAMS_PER_BYTE * data + SLACK:
        raise ValueError(f"the file's tensors hold {declared:,} parameters in {data:,} bytes of data; allowed: "
                         f"{PARAMS_PER_BYTE:,} parameters per byte and {SLACK:,} more (the sparsest model a recipe "
                         "makes stores about 250)")
    model = _built(lambda: architecture.shaped(arch, cap), f"architecture {arch['name']!r}", cap)
    base, modules = params(model), sum(1 for _ in model.modules())
    if len(entries) > ENTRIES_PER_MODULE * modules:
        raise ValueError(f"the structure lists {len(entries):,} layers; architecture {arch['name']!r} has "
                         f"{modules:,} modules, so at most {ENTRIES_PER_MODULE * modules:,} are allowed")
    model = _built(lambda: architecture.layers_shaped(model, entries), "the structure", cap)
    needed = model.state_dict()
    for name, t in needed.items():
        e = stored.get(name)
        want = f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
        if e is None:
            raise ValueError(f"tensor {name} ({want}), which the declared layers need, is not in the file")
        if f"{e['dtype']} {e['shape']}" != want:
            raise ValueError(f"the declared layers need tensor {name} as {want} ({t.numel():,} parameters); the "
                             f"file stores {e['dtype']} {e['shape']}")
    extra = sorted(set(stored) - set(needed))
    if extra:
        raise ValueError(f"tensor {extra[0]!r} is not in the rebuilt model ({len(extra)} of the file's tensors "
                         "are not)")
    limit = 2 * base + SLACK
    if declared > limit:
        raise ValueError(f"the declared layers hold {declared:,} parameters; a compressed {arch['name']!r} holds "
                         f"at most {limit:,} (twice the architecture's {base:,}, and {SLACK:,})")
    return model


def _built(build: Callable[[], nn.Module], what: str, cap: int) -> nn.Module:
    """build(), with what goes wrong as one line; running out of memory is not the file's fault to report."""
    try:
        return build()
    except architecture.TooLarge:
        raise ValueError(f"{what} holds more than {cap:,} parameters, the cap EXPLORER_PACK_MAX_PARAMS") from None
    except MemoryError:
        raise
    except ValueError as e:  # the zoo's and the structure's own refusals say what is wrong
        raise ValueError(first_line(e)) from None
    except Exception as e:  # library code on the file's arguments: any failure is the file's
        raise ValueError(f"{what} cannot be built from the file: {first_line(e)}") from None
