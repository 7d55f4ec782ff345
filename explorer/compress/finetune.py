"""The same-budget control: the uncompressed baseline fine-tuned as a recipe's compression steps fine-tune, and
no compression.

A recipe that fine-tunes (pruning's fine-tuning, QAT, clustering's centroid fine-tuning, low-rank's) trains the
model further than its baseline was trained; on an under-trained baseline that alone raises top-1, and the
comparison with the untouched baseline reads the extra training as a compression gain. `control_of(recipe)` is the
recipe that answers "would the same training without compression do as well?": a `finetune` step for each training
step of the recipe, with its epochs (and rounds) at its learning rate, in order, on the same training images and
seed. Two recipes that train alike share it (one run key), so it is measured once per model and budget.

Distillation has none: it trains a new, smaller model from scratch, so the baseline trained longer is no control
for it; its fair control is a model of the student's size trained from scratch the same way
(explorer.compress.distill.train_dense_control).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from explorer.compress.base import (
    MAX_STEP_EPOCHS,
    Card,
    Compressed,
    Context,
    Control,
    Controls,
    StepConfig,
    Training,
    clone,
    config_from_dict,
    finetune,
    record,
    register_step,
)
from explorer.compress.recipe import Recipe
from explorer.core.errors import check_range
from explorer.core.words import count


@dataclass(frozen=True)
class FinetuneConfig(StepConfig):
    """Fine-tune the model as it is, `runs` times in a row, each `epochs` epochs at learning rate `lr`; the
    constraints of earlier steps (masks, codebooks) stay in force, as in every fine-tuning."""

    kind: ClassVar[str] = "finetune"
    compresses: ClassVar[bool] = False
    page_order: ClassVar[int] = 5

    epochs: int = 1
    lr: float = 1e-3
    runs: int = 1

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 1, MAX_STEP_EPOCHS, integer=True)
        check_range("lr", self.lr, 1e-7, 10.0)  # the widest range a technique's fine-tuning takes
        check_range("runs", self.runs, 1, 50, integer=True)  # as many as an iterative schedule's rounds

    def label(self) -> str:
        return f"fine-tune {count(self.training_epochs(), 'epoch')}"

    def words(self) -> str:
        runs = f" in {self.runs} runs of {count(self.epochs, 'epoch')} each" if self.runs > 1 else ""
        return (f"fine-tune the uncompressed model {count(self.training_epochs(), 'epoch')}{runs} at learning rate "
                f"{self.lr:g}")

    @classmethod
    def controls(cls) -> tuple[Control, ...]:
        return ()  # the page builds it as the control of what the sidebar sets, never from a control of its own

    @classmethod
    def from_controls(cls, controls: Controls, card: Card, before: tuple[StepConfig, ...]) -> FinetuneConfig | None:
        return None

    def to_controls(self) -> dict[str, Any] | None:
        return None

    def training_epochs(self) -> int:
        return self.epochs * self.runs

    def training(self) -> Training:
        return Training(self.epochs, self.lr, self.runs)


@register_step(FinetuneConfig)
def apply(model: nn.Module, config: FinetuneConfig, ctx: Context) -> Compressed:
    model = clone(model)
    state = ctx.state.copy()
    tuned = dataclasses.replace(ctx, state=state)
    runs = [finetune(model, tuned, config.epochs, config.lr, "the same-budget control") for _ in range(config.runs)]
    record(state, config, {"epochs": config.epochs, "lr": config.lr, "runs": runs})
    return Compressed(model, state)


def control_of(recipe: Recipe) -> Recipe | None:
    """The same-budget control of `recipe`: its baseline fine-tuned as its steps fine-tune (each step's epochs and
    rounds at its learning rate, in order), on the same training images and seed, with no compression. None where
    the recipe trains nothing, where it is a control itself, or where a step trains a new model (distillation)."""
    steps = recipe.steps
    if not any(s.compresses for s in steps) or any(s.trains_anew for s in steps):
        return None
    spans = [t for s in steps if (t := s.training()) is not None]
    if not spans:
        return None
    return Recipe(model=recipe.model, dataset=recipe.dataset, checkpoint=recipe.checkpoint, seed=recipe.seed,
                  steps=tuple(FinetuneConfig(t.epochs, t.lr, t.runs) for t in spans),
                  finetune_samples=recipe.finetune_samples)


def is_control(recipe: Recipe | Mapping[str, Any]) -> bool:
    """Whether a recipe (or its JSON form) only trains: a same-budget control, not a compression to choose."""
    steps: list[Any] = list(recipe.steps) if isinstance(recipe, Recipe) else list(recipe.get("steps") or [])
    try:
        configs = [s if isinstance(s, StepConfig) else config_from_dict(s) for s in steps]
    except (ValueError, TypeError):
        return False  # a step no technique reads (a stored run of an older explorer) is no control of ours
    return bool(configs) and not any(c.compresses for c in configs)


def budget_words(control: Recipe) -> str:
    """How a control trains, for a sentence: '2 epochs', or '2 epochs at learning rate 0.001, then 1 at 0.0001'
    where its steps train at different rates."""
    epochs = sum(s.training_epochs() for s in control.steps)
    rates = {t.lr for s in control.steps if (t := s.training()) is not None}
    if len(rates) <= 1:
        return count(epochs, "epoch")
    return ", then ".join(f"{count(s.training_epochs(), 'epoch')} at learning rate {t.lr:g}"
                          for s in control.steps if (t := s.training()) is not None)
