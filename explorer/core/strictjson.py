"""JSON from users, read strictly: a key given twice in one object is refused, naming the key.

Python's json keeps the last of two equal keys without a word, so a recipe saying `"model": "digits_cnn"`
and then `"model": "vgg13"` ran VGG-13 while a reader of the file saw the digits CNN first. Every place that
reads JSON a user wrote or sent (recipe files and text, packed artifacts' headers) goes through `loads`.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    """An object that gives one key twice; the message names the key."""


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"key {key!r} is given twice in one object: give each key once")
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """json.loads, refusing duplicate keys at every level (DuplicateKeyError; json.JSONDecodeError and
    RecursionError as json.loads raises them)."""
    return json.loads(text, object_pairs_hook=_one_value_per_key)
