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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from explorer.compress.base import Control, StepConfig, config_from_dict, config_to_dict, page_types, registered
from explorer.compress.cluster import CLUSTER_OPTIONS  # noqa: F401  (the page's name for them)
from explorer.compress.prune_config import CRITERIA, GRANULARITIES, SCHEDULES, SCOPES  # noqa: F401
from explorer.compress.quantize_config import (  # noqa: F401
    BIT_OPTIONS,
    CALIBRATIONS,
    GROUP_SIZES,
    PAGE_MODES,
    quant_mode,
)
from explorer.compress.recipe import Recipe
from explorer.core.card import ModelCard


def all_controls() -> list[Control]:
    """Every registered technique's controls, in page order (plugins' techniques included)."""
    return [ctrl for t in page_types() for ctrl in t.controls()]


def control(name: str) -> Control:
    for ctrl in all_controls():
        if ctrl.name == name or ctrl.flag == name.replace("_", "-"):
            return ctrl
    raise ValueError(f"no technique has a control {name!r}; the controls: {', '.join(_names())}")


def _names() -> list[str]:
    return [ctrl.name for ctrl in all_controls()]


def sections() -> list[tuple[str, bool, list[Control]]]:
    """The sidebar's sections in order (title, opened, controls), each technique's controls in its own section."""
    out: dict[tuple[int, str, bool], list[Control]] = {}
    for t in page_types():
        out.setdefault(t.section, []).extend(t.controls())
    return [(title, opened, ctrls) for (_, title, opened), ctrls in sorted(out.items(), key=lambda kv: kv[0][:2])]


class _Live(Mapping[str, Any]):
    """A table built from the registered techniques' controls, built again when a technique is registered (a
    plugin's, after this module was imported), so that the page, the link and the grid always know every control."""

    def __init__(self, make: Callable[[], dict[str, Any]]):
        self._make, self._at = make, -1
        self._built: dict[str, Any] = {}

    def _table(self) -> dict[str, Any]:
        if self._at != registered():
            self._built, self._at = self._make(), registered()
        return self._built

    def __getitem__(self, key: str) -> Any:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


# the baseline has no fixed default: the page opens on the model the data sets of this machine allow
# (app.service.default_baseline: LeNet-5 on Fashion-MNIST where it is installed, else the digits CNN)
DEFAULTS: Mapping[str, Any] = _Live(lambda: {"baseline": None, **{ctrl.name: ctrl.default for ctrl in all_controls()}})
CHOICES: Mapping[str, Any] = _Live(lambda: {ctrl.name: list(ctrl.options) for ctrl in all_controls() if ctrl.options})
RANGES: Mapping[str, Any] = _Live(lambda: {ctrl.name: (ctrl.lo, ctrl.hi) for ctrl in all_controls()
                                           if ctrl.lo is not None and ctrl.hi is not None})
OFF: Mapping[str, Any] = _Live(lambda: {ctrl.name: ctrl.off for ctrl in all_controls()
                                        if ctrl.off is not None})  # every technique off
QUANT_MODES = PAGE_MODES


def relevant(c: dict[str, Any], card: ModelCard | None = None) -> set[str]:
    """The controls that change what a configuration computes; the others are shown disabled, kept out of
    the recipe and out of the share link."""
    return {"baseline"} | {ctrl.name for ctrl in all_controls() if ctrl.applies(c, card)}


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


def value(ctrl: Control, given: Any) -> Any:
    """A grid's value for `ctrl` as the control holds it: one of its own values as it is, anything else read as
    text through its spellings (the command line's 32 for fp32, 0 for no clustering), checked."""
    if isinstance(given, bool) != isinstance(ctrl.default, bool):
        return ctrl.parse(str(given))
    if ctrl.options and given in ctrl.options:
        return given
    if not ctrl.options and isinstance(given, (int, float)) and not isinstance(ctrl.default, str):
        return ctrl.parse(repr(given))
    return ctrl.parse(str(given))


def grid_controls(values: Mapping[str, Any]) -> dict[str, Any]:
    """The page's controls for one point of a grid: the values it gives (by control name, or by the command line's
    name for it), every switch it does not name off (no technique is on unless the grid says so), every other
    control at its default."""
    c: dict[str, Any] = {**DEFAULTS, **OFF}
    for name, given in values.items():
        ctrl = control(name)
        c[ctrl.name] = value(ctrl, given)
    return c


def grid_card(model: str, dataset: str, checkpoint: str | None = None) -> ModelCard:
    """The card a grid builds its points for when it has no baseline's card: every technique it names is built,
    and refused at run time where the model cannot take it."""
    card: ModelCard = {"architecture": model, "dataset": dataset, "batchnorm": True, "attention": True,
                       "name": f"{model}-{dataset}" if checkpoint is None else checkpoint}
    if checkpoint is not None:
        card["path"] = checkpoint
    return card


def grid_point(model: str, dataset: str = "digits", *, seed: int = 0, checkpoint: str | None = None,
               card: ModelCard | None = None, **values: Any) -> Recipe:
    """One point of a sweep grid as the page's controls (grid_controls), built by the page's own builder: e.g.
    grid_point("lenet5", "fashion-mnist", sparsity=0.5, bits=4, clusters=16)."""
    return build(grid_controls(values), card or grid_card(model, dataset, checkpoint), seed=seed)


def explain(result: Mapping[str, Any]) -> list[str]:
    """What will surprise a user in this result, as each technique of its recipe says it."""
    try:
        steps = Recipe.from_dict(result["recipe"]).steps
    except (KeyError, ValueError, TypeError):
        return []
    return list(dict.fromkeys(n for step in steps for n in step.explain(result)))


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
