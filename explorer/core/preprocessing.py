"""What the explorer feeds a model: images of (channels, height, width), their pixels scaled to [0, 1], then
normalised per channel as (x - mean) / std.

By default the mean and std are the training split's own statistics (explorer.core.data) and the size is the data
set's; a user whose model was trained otherwise (on [0, 1] inputs, with mean 0.5, at another size) says so when the
model is added, and that choice travels with the model's card, its recipes, its ONNX files and its summaries. A
model fed other inputs than it was trained on loses accuracy silently, so each of these states it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from explorer.core.errors import check_range

CHANNELS = (1, 3)
IMAGE_SIZES = (4, 512)  # what explorer.core.data resizes to
SCALE = "scaled to [0, 1]"  # every loader divides its pixels so: 8-bit images by 255, the digits by 16
EXAMPLE = "0.5, or 0.485, 0.456, 0.406 for three channels"
GIVEN_KEYS = ("mean", "std", "image_size")  # a card's `preprocessing`: what the user gave, nothing else


def parse_values(text: str | None, what: str) -> tuple[float, ...] | None:
    """A mean or std as a person types it ('0.5' or '0.485, 0.456, 0.406'); None for a blank (the data set's own)."""
    if text is None or not str(text).strip():
        return None
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what} {str(text)!r} must be numbers separated by commas, one per channel (such as "
                         f"{EXAMPLE})") from None


def check_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None,
                        channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std a user gave, checked: both or neither, one finite value per channel, every std above 0.
    `channels` is the images' where they are known. None where neither is given."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise ValueError(f"the {given} is given without the {missing}: give both (mean 0 and std 1 feed the "
                         "[0, 1] pixels as they are)")
    out: list[tuple[float, ...]] = []
    for what, values in (("mean", mean), ("std", std)):
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{what} {values!r} must be one number per channel (such as {EXAMPLE})")
        if len(values) not in CHANNELS:
            raise ValueError(f"{what} {_show(values)} has {len(values)} values: give one per channel, 1 for grey "
                             "images or 3 for colour")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{what} {_show(values)} holds {v!r}: each value must be a finite number")
        out.append(tuple(float(v) for v in values))
    mean_t, std_t = out
    if len(mean_t) != len(std_t):
        raise ValueError(f"mean {_show(mean_t)} and std {_show(std_t)} have {len(mean_t)} and {len(std_t)} values: "
                         "give one of each per channel")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"std {_show(std_t)} must be above 0 in every channel (a std of 0 divides by zero)")
    if channels is not None and len(mean_t) != channels:
        raise ValueError(f"mean {_show(mean_t)} and std {_show(std_t)} have {len(mean_t)} value"
                         f"{'s' if len(mean_t) > 1 else ''} each, but the images have {channels} channel"
                         f"{'s' if channels > 1 else ''}: give one per channel")
    return mean_t, std_t


def check_image_size(value: object, what: str = "image size") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} {value!r} must be a whole number of pixels in [{IMAGE_SIZES[0]}, {IMAGE_SIZES[1]}]")
    check_range(what, value, *IMAGE_SIZES, integer=True)
    return value


def given(mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          image_size: int | None = None) -> dict[str, Any]:
    """The preprocessing a user gave, as a card and a recipe keep it: only what was given, checked."""
    out: dict[str, Any] = {}
    checked = check_normalisation(mean, std)
    if checked is not None:
        out["mean"], out["std"] = list(checked[0]), list(checked[1])
    if image_size is not None:
        out["image_size"] = check_image_size(image_size)
    return out


def read_given(d: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A `preprocessing` record read back from a card or a recipe (JSON), checked like a user's input."""
    if d is None:
        return {}
    if not isinstance(d, Mapping) or set(d) - set(GIVEN_KEYS):
        raise ValueError(f"{where}: preprocessing {d!r} must hold only {', '.join(GIVEN_KEYS)}")
    return given(d.get("mean"), d.get("std"), d.get("image_size"))


def number(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) >= 1e-4 or v == 0 else f"{v:.3g}"


def _show(values: Sequence[Any]) -> str:
    return ", ".join(number(v) if isinstance(v, int | float) and not isinstance(v, bool) else repr(v) for v in values)


def size_words(input_size: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in input_size)


def feed_words(input_size: Sequence[int] | None, mean: Sequence[float], std: Sequence[float]) -> str:
    """What a model is fed, in one phrase: 'images of 1x28x28, scaled to [0, 1], then (x - 0.286) / 0.3529'."""
    size = f"images of {size_words(input_size)}" if input_size else "images"
    if all(m == 0 for m in mean) and all(s == 1 for s in std):
        return f"{size}, {SCALE}, as they are (mean 0, std 1)"

    def one(values: Sequence[float]) -> str:
        return number(values[0]) if len(values) == 1 else f"({_show(values)})"

    per = " per channel" if len(mean) > 1 else ""
    return f"{size}, {SCALE}, then (x - {one(mean)}) / {one(std)}{per}"


def onnx_metadata(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                  classes: Sequence[str], **extra: str) -> dict[str, str]:
    """The ONNX file's metadata_props: what its input must be, for whoever deploys it without the explorer."""
    return {"input_size": json.dumps([int(v) for v in input_size]), "input_scale": SCALE,
            "mean": json.dumps([float(v) for v in mean]), "std": json.dumps([float(v) for v in std]),
            "normalisation": "(x - mean) / std per channel, after scaling the pixels to [0, 1]",
            "preprocessing": feed_words(input_size, mean, std), "classes": json.dumps(list(classes)), **extra}
