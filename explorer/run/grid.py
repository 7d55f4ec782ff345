"""Sweep grids over the page's controls, each point turned into a Recipe by the page's own builder
(explorer.run.controls.build), so a sweep, the background grid and the sliders agree.

A grid's axes are controls with the values to try; which controls exist, their values and their default axes (the
techniques' `Control.sweep`: sparsity x bit-width x clusters for the techniques shipped) come from the registered
techniques, so a plugin's technique can be swept like any other without a change here."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from explorer.compress.recipe import Recipe
from explorer.core.card import ModelCard
from explorer.core.errors import check_range
from explorer.run.controls import DEFAULTS, OFF, all_controls, build, control, grid_card, grid_controls, value

Axes = tuple[tuple[str, tuple[Any, ...]], ...]  # (control name, its values), in order


def default_axes() -> Axes:
    """The techniques' default grid: every control that names its `sweep` values, in page order."""
    return tuple((ctrl.name, ctrl.sweep) for ctrl in all_controls() if ctrl.sweep)


@dataclass(frozen=True)
class Grid:
    """The product of `axes` (control values; () = the default axes) over `repeats` seeds from `seed`. A control
    neither on an axis nor in `fixed` is at its default, except a technique's switch, which is off: a grid turns on
    only what it names. `card` is the baseline's card where it is known (which layers it has); `checkpoint` a user's
    model instead of models/<model>-<dataset>.safetensors."""

    model: str = "digits_cnn"
    dataset: str = "digits"
    axes: Axes = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    repeats: int = 1  # each recipe with seeds seed .. seed + repeats - 1 (fine-tuning order, calibration, k-means)
    checkpoint: str | None = None
    card: ModelCard | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", self.axes or default_axes())
        names = [control(name).name for name, _ in self.axes]
        for name, values in self.axes:
            if not values:
                raise ValueError(f"grid {name} is empty: give at least one value")
        if len(set(names)) < len(names):
            raise ValueError(f"grid names a control twice: {', '.join(names)}")
        # every value read as its control holds it (32 for fp32 on the command line), and checked
        object.__setattr__(self, "axes", tuple((real, tuple(dict.fromkeys(value(control(real), v) for v in values)))
                                               for (_, values), real in zip(self.axes, names, strict=True)))
        object.__setattr__(self, "fixed", tuple((control(k).name, value(control(k), v)) for k, v in self.fixed))
        check_range("repeats", self.repeats, 1, 100, integer=True)

    @classmethod
    def of(cls, model: str = "digits_cnn", dataset: str = "digits", *, seed: int = 0, repeats: int = 1,
           checkpoint: str | None = None, card: ModelCard | None = None, values: Mapping[str, Any] | None = None,
           **more: Any) -> Grid:
        """A grid from keyword values: a tuple or list is an axis, a single value is fixed, by control name or the
        command line's name (`Grid.of("lenet5", "fashion-mnist", sparsity=(0, 0.5), bits=(32, 8), bn_adapt=True)`);
        the default axes that are not named stay axes."""
        axes = {n: v for n, v in default_axes()}
        fixed = {}
        for name, v in {**(values or {}), **more}.items():
            real = control(name).name
            if isinstance(v, (tuple, list)):
                axes[real] = tuple(v)
            else:
                axes.pop(real, None)
                fixed[real] = v
        return cls(model, dataset, tuple(axes.items()), tuple(fixed.items()), seed, repeats, checkpoint, card)

    @classmethod
    def page(cls, card: ModelCard, axes: Axes = (), repeats: int = 1, **fixed: Any) -> Grid:
        """The page's grid on a baseline (the Sweep tab's, and the one the background measures): the controls
        not on an axis at the page's defaults, switches included, unless `fixed` says otherwise."""
        named = {control(n).name for n, _ in (axes or default_axes())}
        at = {k: v for k, v in DEFAULTS.items() if k in OFF and k not in named}
        committed = card.get("name") == f"{card['architecture']}-{card['dataset']}"
        return cls(card["architecture"], card["dataset"], axes, tuple({**at, **fixed}.items()), repeats=repeats,
                   checkpoint=None if committed else card.get("path"), card=card)

    def values(self, name: str) -> tuple[Any, ...]:
        """The values the grid takes for a control: its axis, or its one fixed value."""
        real = control(name).name
        return dict(self.axes).get(real) or (grid_controls(dict(self.fixed))[real],)

    def size(self) -> int:
        n = self.repeats
        for _, values in self.axes:
            n *= len(values)
        return n

    def points(self) -> list[dict[str, Any]]:
        """Every point as the page's controls (before the ones that do not apply are reset)."""
        names = [n for n, _ in self.axes]
        out = []
        for combo in itertools.product(*(v for _, v in self.axes)):
            point: Mapping[str, Any] = {**dict(self.fixed), **dict(zip(names, combo, strict=True))}
            out.append(grid_controls(point))
        return out

    def recipes(self) -> list[Recipe]:
        card = self.card or grid_card(self.model, self.dataset, self.checkpoint)
        out, seen = [], set()
        for c in self.points():
            for seed in range(self.seed, self.seed + self.repeats):
                r = build(c, card, seed=seed)
                if r.canonical_json() not in seen:  # e.g. details that do not apply at sparsity 0
                    seen.add(r.canonical_json())
                    out.append(r)
        return out


def page_choices(card: ModelCard) -> dict[str, tuple[Any, ...]]:
    """The Sweep tab's starting values on this baseline: each control's values in the page's default grid."""
    grid = Grid.page(card)
    return {ctrl.name: grid.values(ctrl.name) for ctrl in all_controls()}
