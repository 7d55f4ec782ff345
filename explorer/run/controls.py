"""The explorer's controls as plain data, and the one function that turns them into a Recipe.

The page's sidebar, its Sweep tab and the command line's sweep grid all build recipes with `build`, so a
bit-width means the same quantisation scheme, the same label and the same cache key everywhere. Each technique
owns its controls (explorer.compress.base.Control: ranges, choices, when each applies), the mapping from them to
its step and back; this module only composes them. Controls that do not apply to a configuration (calibration
for weights-only quantisation, the rank ratio while low-rank is off, the criterion of unstructured pruning) are
reset to their defaults before anything is built, so moving them never starts a new run.
"""

from __future__ import annotations

import json
from typing import Any

from explorer.compress.base import Control, StepConfig, config_from_dict, config_to_dict, page_types
from explorer.compress.quantize_config import quant_mode  # noqa: F401  (the page's name for it)
from explorer.compress.recipe import Recipe
from explorer.core.card import ModelCard
from explorer.core.errors import bad_value


def _all_controls() -> list[Control]:
    return [ctrl for t in page_types() for ctrl in t.controls()]


DEFAULTS: dict[str, Any] = {"baseline": "digits_cnn-digits", **{ctrl.name: ctrl.default for ctrl in _all_controls()}}
CHOICES: dict[str, list[Any]] = {ctrl.name: list(ctrl.options) for ctrl in _all_controls() if ctrl.options}
RANGES: dict[str, tuple[float, float]] = {ctrl.name: (ctrl.lo, ctrl.hi) for ctrl in _all_controls()
                                          if ctrl.lo is not None and ctrl.hi is not None}
OFF: dict[str, Any] = {ctrl.name: ctrl.off for ctrl in _all_controls() if ctrl.off is not None}  # every technique off
BIT_OPTIONS = CHOICES["bits"]
CLUSTER_OPTIONS = CHOICES["clusters"]
GRANULARITIES = CHOICES["granularity"]
CRITERIA = CHOICES["criterion"]
SCOPES = CHOICES["scope"]
SCHEDULES = CHOICES["schedule"]
QUANT_MODES = CHOICES["quant_mode"]
CALIBRATIONS = CHOICES["calibration"]
GROUP_SIZES = CHOICES["group_size"]


def relevant(c: dict[str, Any], card: ModelCard | None = None) -> set[str]:
    """The controls that change what a configuration computes; the others are shown disabled, kept out of
    the recipe and out of the share link."""
    return {"baseline"} | {ctrl.name for ctrl in _all_controls() if ctrl.applies(c, card)}


def effective(c: dict[str, Any], card: ModelCard | None = None) -> dict[str, Any]:
    """The controls with every one that does not apply at its default: what a recipe is built from."""
    on = relevant(c, card)
    return {k: v if k in on or k not in DEFAULTS else DEFAULTS[k] for k, v in c.items()}


def build(c: dict[str, Any], card: ModelCard, seed: int = 0) -> Recipe:
    """The recipe the controls stand for, each technique's step in the order the techniques compose (distil ->
    low-rank -> prune -> cluster -> BatchNorm adaptation -> quantise: their `page_order`). Invalid combinations
    raise ValueError from the technique configs, repeating the bad value. `card` is the baseline's card
    (architecture, dataset, name, path, and whether it has BatchNorm)."""
    c = effective(c, card)
    if card.get("format") == "onnx":
        return _onnx_recipe(c, card)
    steps: list[StepConfig] = []
    for technique in page_types():
        step = technique.from_controls(c, card, tuple(steps))
        if step is not None:
            steps.append(step)
    # the committed baselines sit where Recipe looks by default; others are named by their path
    default = card.get("name") == f"{card['architecture']}-{card['dataset']}"
    return Recipe(model=card["architecture"], dataset=card["dataset"], checkpoint=None if default else card["path"],
                  seed=seed, steps=tuple(steps))


def _onnx_recipe(c: dict[str, Any], card: ModelCard) -> Recipe:
    """An ONNX model takes only the techniques that run on one (ONNX Runtime's int8 quantisation); any other
    control is refused with the reason."""
    reason = card.get("unsupported_reason", "the model is ONNX")
    used, switches = [], []
    for technique in page_types():
        if technique.on_onnx:
            continue
        try:
            on = technique.from_controls(c, card, ()) is not None
        except ValueError:  # asked for, in a combination the technique refuses anyway
            on = True
        if on:
            used.append(technique.kind)
            switches += [f"{ctrl.name} to {ctrl.off}" for ctrl in technique.controls() if ctrl.off is not None]
    if used:
        raise ValueError(f"{', '.join(used)} not available for {card['name']}: {reason}. Set "
                         f"{' and '.join(switches)}.")
    steps = [technique.from_controls(c, card, ()) for technique in page_types() if technique.on_onnx]
    return Recipe(model="onnx", dataset=card["dataset"], checkpoint=card["path"], seed=0,
                  steps=tuple(s for s in steps if s is not None))


def grid_point(model: str, dataset: str = "digits", *, sparsity: float = 0.0, bits: int = 32, clusters: int = 0,
               granularity: str = "unstructured", schedule: str = "oneshot", finetune_epochs: int = 2,
               seed: int = 0, bn_adapt: bool = False, checkpoint: str | None = None,
               quant_mode: str = "auto") -> Recipe:  # noqa: F811  (the grid's name for the mode control)
    """A sweep grid's point as the page's controls: bits 32 = none, 16 = fp16, else that integer bit-width
    in the 'auto' scheme (static int8 at 8 bits, weights-only below); clusters 0 = off."""
    names = {32: "fp32", 16: "fp16"}
    if bits not in (*names, *range(2, 9)):
        raise bad_value("bits", bits, (32, 16, 8, 7, 6, 5, 4, 3, 2))
    c = {**DEFAULTS, "sparsity": sparsity, "bits": names.get(bits, str(bits)), "quant_mode": quant_mode,
         "clusters": "off" if not clusters else str(clusters), "granularity": granularity, "schedule": schedule,
         "prune_epochs": finetune_epochs, "bn_adapt": bn_adapt}
    card: ModelCard = {"architecture": model, "dataset": dataset, "batchnorm": bn_adapt,
            "name": f"{model}-{dataset}" if checkpoint is None else checkpoint}
    if checkpoint is not None:
        card["path"] = checkpoint
    return build(c, card, seed=seed)


def from_recipe(recipe: dict[str, Any], card: ModelCard) -> dict[str, Any] | None:
    """The controls that build `recipe` (JSON form) on this baseline, or None where the sidebar cannot express
    it (a hand-written recipe, another learning rate): checked by building them again."""
    c: dict[str, Any] = {**DEFAULTS, "baseline": card["name"], **OFF}
    try:
        steps = [config_from_dict(s) for s in recipe.get("steps", [])]
    except ValueError:
        return None
    for step in steps:
        said = step.to_controls() if step.controls() else None
        if said is None:
            return None
        c.update(said)
    c = effective(c, card)
    try:
        again = build(c, card, seed=recipe.get("seed", 0))
    except ValueError:
        return None
    return c if _canonical(list(again.steps)) == _canonical(steps) else None


def _canonical(steps: list[StepConfig]) -> str:
    return json.dumps([config_to_dict(s.canonical()) for s in steps], sort_keys=True)
