"""A compressed model's architecture as plain data, and the model rebuilt from it.

Structured pruning, low-rank factorisation and distillation change layer shapes or the whole
architecture. The packed file must rebuild a runnable model without storing code, so it records the
zoo architecture (name and arguments) plus every layer that differs from the freshly built one, as a
type from a fixed allow-list and its constructor arguments. Nothing from a file is ever executed.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from explorer.compress.lowrank import Factorized
from explorer.core.zoo import create_model


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


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def rebuild(architecture: dict[str, Any], entries: list[dict[str, Any]]) -> nn.Module:
    """The model `describe` described: the zoo architecture with the listed layers replaced."""
    model = create_model(architecture["name"], **architecture["kwargs"])
    for e in entries:
        kind, args = e.get("type"), e.get("args") or {}
        if kind == "Factorized":
            # children follow as their own entries; placeholders keep the two slots
            _set(model, e["path"], _factorized()(nn.Identity(), nn.Identity()))
            continue
        if kind == "Attention":
            try:
                _set_heads(model, e["path"], args)
            except AttributeError:
                raise ValueError(f"packed structure names no layer at {e.get('path')!r}") from None
            continue
        if kind not in _TYPES:
            raise ValueError(f"packed structure names layer type {kind!r}; allowed: {sorted(_TYPES)}, Factorized and "
                             "Attention")
        kw = dict(args)
        for k in ("kernel_size", "stride", "padding", "dilation"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        try:
            _set(model, e["path"], _TYPES[kind](**kw))
        except (TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"packed structure entry for {e.get('path')!r} is invalid: {err}") from None
    return model.eval()
