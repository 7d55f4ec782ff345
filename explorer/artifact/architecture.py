"""A compressed model's architecture as plain data, and the model rebuilt from it.

Structured pruning, low-rank factorisation and distillation change layer shapes or the whole
architecture. The packed file must rebuild a runnable model without storing code, so it records the
zoo architecture (name and arguments) plus every layer that differs from the freshly built one, as a
type from a fixed allow-list and its constructor arguments. Nothing from a file is ever executed.

A file's model is first built on torch's meta device (`shaped`, `layers_shaped`: shapes without memory, for
explorer.artifact.bounds to check against the file), then made real tensor by tensor (`materialize`), so
loading allocates the file's tensors and never the layers they replace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from explorer.compress.lowrank import Factorized
from explorer.core.errors import first_line
from explorer.core.zoo import create_model

SMALL = 1 << 16  # a tensor of at most this many values is made for real while a model is only measured


def _factorized() -> type:
    return Factorized


def _args(m: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of an allow-listed layer, or None for a layer type the format cannot hold."""
    if isinstance(m, nn.Conv2d):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
                "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
                "padding_mode": m.padding_mode}
    if isinstance(m, nn.Linear):
        return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.BatchNorm2d):
        return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
                "track_running_stats": m.track_running_stats}
    if isinstance(m, nn.BatchNorm1d):
        return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
                "track_running_stats": m.track_running_stats}
    return None


_TYPES = {"Conv2d": nn.Conv2d, "Linear": nn.Linear, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm1d": nn.BatchNorm1d}


def _attention() -> type | None:
    """timm's multi-head attention, whose head count changes when heads are removed (explorer.compress.attention);
    None without timm."""
    if "timm" not in sys.modules:  # no model holds a timm module before timm is imported: not imported for it
        return None
    try:
        from timm.layers import Attention
    except ImportError:
        return None
    return Attention


def _signature(m: nn.Module) -> tuple[str, dict[str, Any] | None]:
    if isinstance(m, _factorized()):
        return "Factorized", {}
    if _attention() is not None and type(m) is _attention():
        # its layers follow as their own entries; the head count is what the module itself holds
        return "Attention", {"num_heads": m.num_heads, "head_dim": m.head_dim}
    return type(m).__name__, _args(m)


def _set_heads(model: nn.Module, path: str, args: dict[str, Any]) -> None:
    """The attention at `path` (built by the architecture) with `num_heads` heads of `head_dim` each."""
    found = model.get_submodule(path)
    heads, dim = args.get("num_heads"), args.get("head_dim")
    if _attention() is None or type(found) is not _attention():
        raise ValueError(f"packed structure names attention heads at {path!r}, which is not an attention layer")
    attn: Any = found  # timm's Attention
    if not (type(heads) is int and 1 <= heads <= attn.num_heads and dim == attn.head_dim):
        raise ValueError(f"packed structure gives {path!r} num_heads={heads!r} head_dim={dim!r}; allowed: 1 to "
                         f"{attn.num_heads} heads of {attn.head_dim}")
    attn.num_heads, attn.attn_dim = heads, heads * dim


def describe(model: nn.Module, architecture: dict[str, Any]) -> list[dict[str, Any]]:
    """Layers of `model` that differ from `create_model(**architecture)`, parents before children."""
    fresh = dict(create_model(architecture["name"], **architecture["kwargs"]).named_modules())
    entries = []
    for path, m in model.named_modules():
        if not path:
            continue
        kind, args = _signature(m)
        ref = fresh.get(path)
        if ref is not None and _signature(ref) == (kind, args):
            continue
        if kind != "Factorized" and args is None:
            if ref is not None and type(ref) is type(m):
                continue  # a parameter-free layer (ReLU, pooling) that the fresh model has too
            raise ValueError(f"layer {path} of type {kind} cannot be stored in the packed format")
        entries.append({"path": path, "type": kind, "args": args})
    return entries


def _has(model: nn.Module, path: str) -> bool:
    if not path:  # the model itself
        return False
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _check_replaces(model: nn.Module, path: str, kind: str) -> None:
    """A layer takes the place of one of its own type (pruning shrinks it), a factorised layer that of a linear
    or convolution layer, its two factors their placeholders: never of a block or a layer of another kind."""
    old, parent = model.get_submodule(path), model.get_submodule(path.rpartition(".")[0])
    if kind == "Factorized":
        ok = isinstance(old, nn.Linear | nn.Conv2d)
    else:
        ok = isinstance(old, _TYPES[kind]) or (type(old) is nn.Identity and isinstance(parent, _factorized()))
    if not ok:
        raise ValueError(f"packed structure puts a {kind} at {path!r}, where the architecture has a "
                         f"{type(old).__name__}; allowed: a layer of the same type")


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def rebuild(architecture: dict[str, Any], entries: list[dict[str, Any]]) -> nn.Module:
    """The model `describe` described: the zoo architecture with the listed layers replaced."""
    return apply(create_model(architecture["name"], **architecture["kwargs"]), entries).eval()


def apply(model: nn.Module, entries: list[dict[str, Any]]) -> nn.Module:
    """`model` with the listed layers replaced, each at a layer it already has (a factorised layer's two
    placeholders are layers too), each once: a file cannot add modules the architecture does not have."""
    seen: set[str] = set()
    for e in entries:
        kind, args, path = e.get("type"), e.get("args") or {}, e.get("path")
        if not isinstance(path, str) or path in seen or not _has(model, path):
            raise ValueError(f"packed structure names layer {path!r}, which is "
                             f"{'listed twice' if path in seen else 'not a layer of the architecture'}")
        seen.add(path)
        if kind == "Factorized":
            _check_replaces(model, path, kind)
            # children follow as their own entries; placeholders keep the two slots
            _set(model, path, _factorized()(nn.Identity(), nn.Identity()))
            continue
        if kind == "Attention":
            _set_heads(model, path, args)
            continue
        if kind not in _TYPES:
            raise ValueError(f"packed structure names layer type {kind!r}; allowed: {sorted(_TYPES)}, Factorized and "
                             "Attention")
        _check_replaces(model, path, kind)
        kw = dict(args)
        for k in ("kernel_size", "stride", "padding", "dilation"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        try:
            _set(model, path, _TYPES[kind](**kw))
        except (TypeError, AttributeError, ValueError, RuntimeError) as err:
            raise ValueError(f"packed structure entry for {path!r} is invalid: {first_line(err)}") from None
    return model


# ---------------------------------------------------------------- measuring a model without building it


class TooLarge(ValueError):
    """A model whose tensors would hold more values than its budget; raised before the one that crosses it."""


class _Sizing(TorchFunctionMode):
    """While a model is built: counts the values of every tensor torch's factory functions make and refuses
    past `budget`; with `meta`, a tensor of more than SMALL values is made on the meta device (its shape, no
    memory), a smaller one for real, so builders that compute with small tensors (torchvision's RegNet turns
    its widths into a list) still run. Each tensor is first made on the meta device to learn its size."""

    def __init__(self, budget: int, meta: bool):
        super().__init__()
        self.budget, self.meta, self.made = budget, meta, 0

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in _device_constructors() or kwargs.get("device") is not None:
            return func(*args, **kwargs)
        try:
            shaped = func(*args, **{**kwargs, "device": "meta"})
        except Exception:  # a call meta cannot make (one with a generator, say) is made as asked
            return func(*args, **kwargs)
        self.made += shaped.numel()
        if self.made > self.budget:
            raise TooLarge(f"more than {self.budget:,}")
        return shaped if self.meta and shaped.numel() > SMALL else func(*args, **kwargs)


def shaped(architecture: dict[str, Any], budget: int) -> nn.Module:
    """The zoo architecture with its large tensors on the meta device, refused (TooLarge) once its tensors
    pass `budget` values. A builder that cannot run on the meta device is built for real under the same budget.
    torch's random state is left as it was: the real build after this draws what it always drew."""
    name, kwargs = architecture["name"], architecture["kwargs"]
    with torch.random.fork_rng(devices=[]):
        try:
            with _Sizing(budget, meta=True):
                return create_model(name, **kwargs)
        except (NotImplementedError, RuntimeError):  # what a meta tensor cannot do: give its data, meet a real one
            pass
        with _Sizing(budget, meta=False):
            return create_model(name, **kwargs)


def layers_shaped(model: nn.Module, entries: list[dict[str, Any]]) -> nn.Module:
    """`model` with the listed layers replaced by layers on the meta device (torch's own layers build there)."""
    with torch.device("meta"):
        return apply(model, entries)


def materialize(model: nn.Module) -> nn.Module | None:
    """`model` with each tensor still on the meta device made for real, uninitialised (loading the file's tensors
    fills every one), or None where one could not be filled: a buffer or an attribute the state dict does not
    hold (a builder's computed table, say), which only building the model for real gives."""
    stored = {id(t) for t in model.state_dict(keep_vars=True).values()}
    for m in model.modules():
        kept = [*m._parameters.values(), *m._buffers.values(),
                *(v for v in vars(m).values() if isinstance(v, torch.Tensor))]
        if any(t is not None and t.is_meta and id(t) not in stored for t in kept):
            return None
    params: dict[int, nn.Parameter] = {}  # by the meta tensor, so that tied parameters stay one
    buffers: dict[int, torch.Tensor] = {}
    for m in model.modules():
        for name, p in m._parameters.items():
            if p is not None and p.is_meta:
                if id(p) not in params:
                    params[id(p)] = nn.Parameter(torch.empty_like(p, device="cpu"), requires_grad=p.requires_grad)
                m._parameters[name] = params[id(p)]
        for name, b in m._buffers.items():
            if b is not None and b.is_meta:
                if id(b) not in buffers:
                    buffers[id(b)] = torch.empty_like(b, device="cpu")
                m._buffers[name] = buffers[id(b)]
    return model
