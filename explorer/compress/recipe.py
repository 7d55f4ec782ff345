"""Recipe: which baseline, which data, and the ordered compression steps (JSON and frozen dataclasses).

The canonical JSON (sorted keys, every default written out) is what the cache key hashes, so two
recipes that mean the same run have the same key.

A recipe that travels to another machine names its model by its name and the sha256 of its weights rather than by
a path on the machine that made it, and says how the model is fed where that is not the data set's default (the mean,
std and image size its user gave): `baseline`, `sha256`, `source_sha256` (the file as it was added, where the
explorer re-saved it), `mean`, `std`, `image_size`. They say which model the recipe is for, and a model that differs
is refused (explorer.run.runner); they stay out of the canonical JSON, since the key already hashes the weights'
bytes and the preprocessing the model's card gives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.compress.base import StepConfig, config_from_dict, config_to_dict, step_type_of
from explorer.core import strictjson
from explorer.core.data import list_datasets
from explorer.core.errors import bad_value, check_choice, check_range
from explorer.core.paths import baseline_path, read_user_file
from explorer.core.preprocessing import given as given_preprocessing

IDENTITY_KEYS = ("baseline", "sha256", "source_sha256", "mean", "std", "image_size")  # which model, not what is done
RECIPE_KEYS = ("model", "dataset", "checkpoint", "seed", "steps", "name", "finetune_samples", *IDENTITY_KEYS)
MAX_RECIPE_BYTES = 1 << 20
# A recipe is work done on the user's behalf, so it is bounded before any starts: the page builds at most 6 steps
# (distil, low-rank, prune, cluster, BatchNorm adaptation, quantise) and at most 203 epochs of training (100 of
# distillation, 50 of pruning, 50 of QAT, 2 of low-rank, 1 of clustering); each step has its own cap too
# (base.MAX_STEP_EPOCHS). An 8,000-step recipe of 1,000 epochs each fits in the file-size cap and never ends.
MAX_STEPS = 16
MAX_EPOCHS = 250
FINETUNE_SAMPLES = (100, 10_000_000)  # fewer leaves too little to fine-tune on; more than any data set here
EXAMPLE = '{"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.5}]}'


@dataclass(frozen=True)
class Recipe:
    model: str
    dataset: str = "digits"
    checkpoint: str | None = None  # default: models/<model>-<dataset>.safetensors
    seed: int = 0
    steps: tuple[StepConfig, ...] = field(default=())
    name: str | None = None  # a label for tables and plots; not part of what the run computes
    # fine-tune on a stratified, seeded subset of this many training images; None: the baseline card's
    # recommendation for a large data set, else the whole training split
    finetune_samples: int | None = None
    baseline: str | None = None  # the model's name where it was made (its card's)
    sha256: str | None = None  # of the model's weights file, as the explorer keeps it
    source_sha256: str | None = None  # of the file the model was added from, where that is not the same file
    mean: tuple[float, ...] | None = None  # what the model was trained with, where not the data set's own statistics
    std: tuple[float, ...] | None = None
    image_size: int | None = None  # the size its images are resized to, where not the data set's

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise bad_value("model", self.model, "a model name such as 'digits_cnn'")
        check_choice("dataset", self.dataset, list_datasets())
        if self.checkpoint is not None and (not isinstance(self.checkpoint, str) or not self.checkpoint):
            raise bad_value("checkpoint", self.checkpoint, "a path to a weights file, as text")
        if self.name is not None and not isinstance(self.name, str):
            raise bad_value("name", self.name, "a label, as text")
        check_range("seed", self.seed, 0, 2**31 - 1, integer=True)
        if self.baseline is not None and (not isinstance(self.baseline, str) or not self.baseline):
            raise bad_value("baseline", self.baseline, "the model's name, as text")
        for field_name in ("sha256", "source_sha256"):
            digest = getattr(self, field_name)
            if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                           and all(c in "0123456789abcdef" for c in digest)):
                raise bad_value(field_name, digest, "64 lower-case hexadecimal digits (the weights file's sha256)")
        given = given_preprocessing(self.mean, self.std, self.image_size)  # one line for a std of 0 ...
        object.__setattr__(self, "mean", tuple(given["mean"]) if "mean" in given else None)  # JSON lists as tuples
        object.__setattr__(self, "std", tuple(given["std"]) if "std" in given else None)
        if self.finetune_samples is not None:
            check_finetune_samples(self.finetune_samples)
        _check_step_count(len(self.steps))
        weight_level_seen = None
        for i, step in enumerate(self.steps):
            step_type_of(step)  # a registered technique's config, or a TypeError naming it
            if step.structural():
                if weight_level_seen is not None:
                    raise ValueError(f"step {i + 1} ({step.kind}) changes layer shapes, so it must come before step "
                                     f"{weight_level_seen + 1}; put structural steps (channel pruning, low-rank, "
                                     "distillation) first")
            elif weight_level_seen is None:
                weight_level_seen = i
        epochs = [s.training_epochs() for s in self.steps]
        if sum(epochs) > MAX_EPOCHS:
            each = ", ".join(f"{s.kind} {e}" for s, e in zip(self.steps, epochs, strict=True) if e)
            raise ValueError(f"steps: {sum(epochs)} training epochs in all ({each}) must be at most {MAX_EPOCHS}")
        for i, step in enumerate(self.steps):  # each technique's own rules on where it may stand
            try:
                step.check_place(self.steps[:i], self.steps[i + 1:])
            except ValueError as e:
                raise ValueError(f"step {i + 1} ({step.kind}) {e}") from None

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else baseline_path(self.model, self.dataset)

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing the recipe says its model takes (only what differs from the data set's default)."""
        return given_preprocessing(self.mean, self.std, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        identity = {k: list(v) if isinstance(v, tuple) else v for k in IDENTITY_KEYS if (v := getattr(self, k))
                    is not None}
        return {"model": self.model, "dataset": self.dataset, "checkpoint": self.checkpoint, "seed": self.seed,
                "steps": [config_to_dict(s) for s in self.steps], **({"name": self.name} if self.name else {}),
                **({"finetune_samples": self.finetune_samples} if self.finetune_samples is not None else {}),
                **identity}

    def canonical_json(self) -> str:
        """What identifies the computation: every default explicit, keys sorted, the label and the model's identity
        (checked, and hashed from the weights and the card) left out."""
        d = self.to_dict()
        for k in ("name", *IDENTITY_KEYS):
            d.pop(k, None)
        d["steps"] = [config_to_dict(s.canonical()) for s in self.steps]  # fields that change nothing at defaults
        d["checkpoint"] = str(self.checkpoint_path.as_posix()) if self.checkpoint else None
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def label(self) -> str:
        if self.name:
            return self.name
        return " -> ".join(s.label() for s in self.steps) or "baseline"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        if not isinstance(d, dict):
            raise ValueError(f"a recipe must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(RECIPE_KEYS))
        if unknown:
            raise ValueError(f"recipe has unknown keys {unknown}; allowed: {list(RECIPE_KEYS)}")
        if "model" not in d:
            raise ValueError("recipe needs a 'model' (e.g. \"digits_cnn\")")
        steps = d.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError(f"recipe 'steps' must be a list, got {type(steps).__name__}")
        _check_step_count(len(steps))  # before building thousands of step configs
        return cls(model=d["model"], dataset=d.get("dataset", "digits"), checkpoint=d.get("checkpoint"),
                   seed=d.get("seed", 0), steps=tuple(config_from_dict(s) for s in steps), name=d.get("name"),
                   finetune_samples=d.get("finetune_samples"), **{k: d[k] for k in IDENTITY_KEYS if k in d})

    @classmethod
    def from_json(cls, text: str, source: str = "recipe") -> Recipe:
        """`source` names where the text came from ("recipe file 'r.json'") in every error."""
        try:
            d = strictjson.loads(text)
        except strictjson.DuplicateKeyError as e:
            raise ValueError(f"{source} is ambiguous: {e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} is not valid JSON: {e}") from None
        except RecursionError:
            raise ValueError(f"{source} nests JSON too deeply: a recipe is a flat object such as "
                             f"{EXAMPLE}") from None
        try:
            return cls.from_dict(d)
        except RecursionError:
            raise ValueError(f"{source} nests its values too deeply: a recipe is a flat object such as "
                             f"{EXAMPLE}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Recipe:
        p = Path(path)
        source = f"recipe file {str(p)!r}"
        raw = read_user_file(p, "recipe file", MAX_RECIPE_BYTES)  # a pipe, a device or a folder is named as such
        if len(raw) > MAX_RECIPE_BYTES:  # read no further: a file of /proc says it is empty and may not be
            raise ValueError(f"{source} is over {MAX_RECIPE_BYTES:,} bytes: a recipe is a small JSON object such as "
                             f"{EXAMPLE}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{source} is not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start}): a "
                             f"recipe is a JSON object such as {EXAMPLE}") from None
        try:
            return cls.from_json(text, source)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def step_words(step: dict[str, Any]) -> str:
    """A step (JSON form) in plain words, as its technique says it; the kind for a step no technique reads."""
    try:
        return config_from_dict(step).words()
    except (ValueError, TypeError):
        return str(step.get("kind")) if isinstance(step, dict) else str(step)


def recipe_words(recipe: Recipe | dict[str, Any]) -> str:
    """A whole recipe in words, steps in order; 'the baseline, uncompressed' for none."""
    steps = recipe.to_dict()["steps"] if isinstance(recipe, Recipe) else recipe.get("steps", [])
    return ", then ".join(step_words(s) for s in steps) or "the baseline, uncompressed"


def check_finetune_samples(value: object, field: str = "finetune_samples", where: str = "") -> None:
    """A recommendation of training images to fine-tune on, as a recipe, the train command's flag or a
    baseline card gives it; `where` names the file it came from."""
    try:
        check_range(field, value, *FINETUNE_SAMPLES, integer=True)  # type: ignore[arg-type]  # checked there
    except ValueError as e:
        raise ValueError(f"{where}: {e}" if where else str(e)) from None


def _check_step_count(n: int) -> None:
    if n > MAX_STEPS:
        raise ValueError(f"steps: {n} steps must be at most {MAX_STEPS}")
