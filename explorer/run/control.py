"""A run against its same-budget control (explorer.compress.finetune.control_of): the baseline fine-tuned as the
run's steps fine-tune, with no compression. The comparison is paired, on the same test images, from the predictions
both runs stored (nothing is computed again), with the control's key and budget beside it; it has the shape of a
run's comparison with its untouched baseline (`vs_baseline`), where "baseline" stands for the control.

It is made where both runs exist (the page, once both are stored; the results table, for each run whose control is
stored), never inside the run itself: a page's run is measured before its control, and results stored before the
control existed stay as they are."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from explorer.compress.finetune import budget_words, control_of
from explorer.compress.recipe import Recipe
from explorer.core import stats
from explorer.measure.accuracy import load_predictions
from explorer.models.baselines import baseline_data, read_card
from explorer.run.cache import RunCache
from explorer.run.result import FILES, ControlComparison, RunResult

_compared: dict[tuple[str, str], ControlComparison] = {}  # (run key, control key) -> the comparison
_compared_lock = threading.Lock()


def recipe_of(result: Mapping[str, Any]) -> Recipe | None:
    """The control of a stored run's recipe, or None where it has none (or its recipe no longer reads)."""
    try:
        return control_of(Recipe.from_dict(dict(result.get("recipe") or {})))
    except (ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=8)
def _labels(checkpoint: str, mtime_ns: int) -> np.ndarray:
    return baseline_data(read_card(checkpoint)).test.y.numpy()


def labels(recipe: Recipe) -> np.ndarray:
    """The test labels of the recipe's baseline, in test order (the order every run's predictions are stored in)."""
    path = recipe.checkpoint_path
    return _labels(str(path), Path(path).stat().st_mtime_ns)


def compare(result: RunResult, control: RunResult, cache: RunCache) -> ControlComparison | None:
    """`result` against its control `control` on the same test images, from the predictions both stored in `cache`;
    None where either has no intact predictions there, or they cover different images."""
    run_key, control_key = str(result.get("key") or ""), str(control.get("key") or "")
    if not run_key or not control_key or result.get("status") != "ok" or control.get("status") != "ok":
        return None
    with _compared_lock:
        known = _compared.get((run_key, control_key))
    if known is not None:
        return known
    raw = [cache.artifact(k, FILES["predictions"]) for k in (run_key, control_key)]
    if raw[0] is None or raw[1] is None:
        return None
    run_pred, control_pred = load_predictions(raw[0]), load_predictions(raw[1])
    recipe = Recipe.from_dict(dict(control["recipe"]))
    y = labels(recipe)
    if not len(run_pred) == len(control_pred) == len(y):
        return None
    paired = stats.vs_baseline(control_pred, run_pred, y)
    ci = (control.get("accuracy_ci") or {}).get("top1")
    out = cast(ControlComparison, {
        **paired, "key": control_key, "epochs": sum(s.training_epochs() for s in recipe.steps),
        "budget": budget_words(recipe), "top1": control["accuracy"]["top1"],
        "top1_ci": list(ci) if ci else list(stats.wilson(paired["both_right"] + paired["baseline_only"], len(y))),
        "delta": result["accuracy"]["top1"] - control["accuracy"]["top1"]})
    with _compared_lock:
        if len(_compared) > 4096:
            _compared.clear()
        _compared[(run_key, control_key)] = out
    return out


def attach(result: RunResult, control: RunResult | None, cache: RunCache) -> RunResult:
    """`result` with its comparison against `control` as `vs_control` (unchanged where there is none)."""
    vs = compare(result, control, cache) if control is not None else None
    return result if vs is None else cast(RunResult, {**result, "vs_control": vs})

