"""What a model is fed, said wherever the model goes: its card, the "Your model" form, its runs, its ONNX files.

The explorer scales every image to [0, 1] and normalises it per channel with a mean and a std: by default the
training split's own, at the data set's size; a user whose model was trained otherwise gives the mean, std and size
when adding it (explorer.models.user), and the card keeps them (`preprocessing`). These functions read them back from
a card or a run, say them in words, and write them into an ONNX file's metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from explorer.compress.recipe import Recipe
from explorer.core import preprocessing
from explorer.core.card import ModelCard
from explorer.core.data import DataBundle, load_dataset
from explorer.models import baselines

DATASET_DEFAULT = "the data set's own statistics and image size"


def given_of(card: ModelCard) -> dict[str, Any]:
    """The preprocessing the card's user gave (mean, std, image size), checked; {} for the data set's own."""
    return preprocessing.read_given(card.get("preprocessing"), f"the card of model {card.get('name')!r}")


def given_words(given: dict[str, Any]) -> str:
    """The preprocessing a user gave, in words ('mean 0 and std 1, images of 16x16'); the default said so."""
    parts = []
    if "mean" in given:
        parts.append(f"mean {', '.join(map(preprocessing.number, given['mean']))} and std "
                     f"{', '.join(map(preprocessing.number, given['std']))}")
    if "image_size" in given:
        parts.append(f"images of {given['image_size']}x{given['image_size']}")
    return ", ".join(parts) or DATASET_DEFAULT


def flags(given: dict[str, Any]) -> str:
    """The add-model options that give this preprocessing."""
    out = []
    if "mean" in given:
        out += [f"--mean {','.join(map(repr, given['mean']))}", f"--std {','.join(map(repr, given['std']))}"]
    if "image_size" in given:
        out.append(f"--image-size {given['image_size']}")
    return " ".join(out)


def fed(data: DataBundle, given: dict[str, Any]) -> dict[str, Any]:
    """A run's record of what its model was fed (RunResult `preprocessing`)."""
    return {"input_size": list(data.input_shape), "mean": list(data.mean), "std": list(data.std), "given": given}


def feed_words(card: Mapping[str, Any] | None = None, record: Mapping[str, Any] | None = None) -> str | None:
    """What the model is fed, in words, from a run's record or else its card; None where neither says."""
    got: Any = record or (card or {}).get("normalisation")
    if not got or "mean" not in got:
        return None
    size = got.get("input_size") or (card or {}).get("input_size")
    return preprocessing.feed_words(size, got["mean"], got["std"])


@functools.lru_cache(maxsize=16)
def _default_feed(dataset: str, root: str | None, image_size: int | None) -> tuple[tuple[int, ...], tuple[float, ...],
                                                                                   tuple[float, ...]]:
    data = load_dataset(dataset, root, image_size=image_size)
    return data.input_shape, data.mean, data.std


def feed_preview(dataset: str, root: str | None, image_size: int | None, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None) -> str:
    """What a model added on this data with these settings will be fed, in words, before it is added."""
    norm = preprocessing.check_normalisation(mean, std)
    if image_size is not None:
        preprocessing.check_image_size(image_size)
    shape, own_mean, own_std = _default_feed(dataset, root or None, image_size)
    if norm is None:
        return preprocessing.feed_words(shape, own_mean, own_std)
    if len(norm[0]) != shape[0]:  # grey <-> colour: the images are converted where the model's first layer asks
        converted = (len(norm[0]), *shape[1:])
        return (f"{preprocessing.feed_words(converted, *norm)} (the {dataset} images have {shape[0]} channel"
                f"{'s' if shape[0] > 1 else ''}: they are converted, if your model's first layer takes "
                f"{len(norm[0])})")
    return preprocessing.feed_words(shape, *norm)


def onnx_metadata(card: ModelCard, data: DataBundle) -> dict[str, str]:
    """What an ONNX file of this model carries in its metadata: its input, its classes, its model and data set."""
    return preprocessing.onnx_metadata(data.input_shape, data.mean, data.std, data.classes,
                                       model=str(card.get("name") or card.get("architecture")), dataset=data.name)


def card_of(result: Mapping[str, Any]) -> ModelCard | None:
    """The card of a stored run's model, or None where it is gone."""
    try:
        path = Recipe.from_dict(result["recipe"]).checkpoint_path
        card = baselines.read_card(path)
    except (ValueError, OSError, KeyError):
        return None
    card.setdefault("name", path.stem)
    return card


def feed_words_of(result: Mapping[str, Any]) -> str | None:
    """What a stored run's model was fed, in words: from the run's record, else (older runs) its model's card."""
    record = result.get("preprocessing")
    return feed_words(None if record else card_of(result), record)
