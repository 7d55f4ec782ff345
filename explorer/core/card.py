"""The model card: the JSON file beside every baseline's weights (and every model a user added), as a type the
checker holds from where it is read (explorer.models) through the service to the page.

Every key is optional to the checker (`total=False`) because cards come from three writers: `train` writes the
full card, `add-model` a shorter one, and the model list adds `path`, `batchnorm` and `attention` when it reads
them. The keys that a card must have to be read at all are checked by `explorer.models.baselines.read_card`.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ModelCard(TypedDict, total=False):
    name: str  # the model's name in the picker: <architecture>-<dataset>, or the name a user gave
    architecture: str  # zoo name, "torchvision:<name>", "timm:<name>", a plugin's name, or "onnx"
    arch_kwargs: dict[str, Any]  # what the architecture is built with (classes, channels, image size)
    dataset: str
    dataset_root: str | None
    split_seed: int
    classes: list[str]
    # what the explorer feeds the model (explorer.core.preprocessing): pixels scaled to [0, 1], then (x - mean) / std
    # per channel, at input_size (channels, height, width); filled from the architecture's arguments on read where an
    # older card lacks it
    normalisation: dict[str, list[float]]
    input_size: list[int]
    preprocessing: dict[str, Any]  # what the user gave when adding it (mean, std, image_size); absent: the data's own
    train: dict[str, Any]  # how it was trained, with the command that trains it again
    accuracy: dict[str, float]  # top1, top3, top5, loss on the test set
    top1_interval: list[float]
    top1_interval_note: str
    test_samples: int
    val_top1: float | None
    params: int
    macs: int
    file: str
    file_bytes: int
    sha256: str
    versions: dict[str, str]
    created: str
    finetune_samples: int
    finetune_note: str
    # a model a user added
    format: str  # "onnx" where only size, latency and int8 apply
    unsupported_reason: str
    source: dict[str, Any]  # the file it came from: its format, sha256 and (from the command line) name
    reused: bool  # the same file added again: the stored model is kept
    user: bool
    checked: dict[str, Any]  # how the file was checked: in a child process, under which limits
    notes: list[str]  # what fitting the data took (images converted to the channels the model takes)
    # added when the list of models is read
    path: str
    batchnorm: bool
    attention: bool  # attention layers (the page offers pruning heads and MLP neurons), from the weights' names
    data_available: bool  # its data set is on this machine
