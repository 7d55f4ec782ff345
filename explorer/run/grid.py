"""Sweep grids: sparsity x bit-width x clusters (and technique details), each point turned into a Recipe by
the page's own builder (explorer.run.controls.grid_point), so a sweep and the sliders agree."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from explorer.compress.recipe import Recipe
from explorer.core.errors import check_choice, check_range
from explorer.run.controls import grid_point

BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)


@dataclass(frozen=True)
class Grid:
    """Sparsity x bit-width x clusters, with technique details fixed or swept too. bits 32 = no
    quantisation, 16 = fp16, 8 = static int8 (weights and activations, the ONNX Runtime path), 2-7 =
    k-bit weights; clusters 0 = off; sparsity 0 = no pruning."""

    model: str = "digits_cnn"
    dataset: str = "digits"
    sparsity: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9, 0.95)
    bits: tuple[int, ...] = (32, 16, 8, 4)
    clusters: tuple[int, ...] = (0, 16)
    granularity: tuple[str, ...] = ("unstructured",)
    schedule: tuple[str, ...] = ("oneshot",)
    finetune_epochs: tuple[int, ...] = (2,)
    seed: int = 0
    bn_adapt: bool = False  # BatchNorm adaptation after pruning or clustering
    repeats: int = 1  # each recipe with seeds seed .. seed + repeats - 1 (fine-tuning order, calibration, k-means)
    checkpoint: str | None = None  # a user's model instead of models/<model>-<dataset>.safetensors
    quant_mode: str = "auto"  # the page's mode control: auto = static int8 at 8 bits, weights-only below

    def __post_init__(self) -> None:
        for name in ("sparsity", "bits", "clusters", "granularity", "schedule", "finetune_epochs"):
            if not getattr(self, name):
                raise ValueError(f"grid {name} is empty: give at least one value")
        for s in self.sparsity:
            check_range("sparsity", s, 0.0, 0.99)
        for b in self.bits:
            check_choice("bits", b, BITS)
        for c in self.clusters:
            if c != 0:
                check_range("clusters", c, 2, 256, integer=True)
        for e in self.finetune_epochs:
            check_range("finetune_epochs", e, 0, 1000, integer=True)
        check_range("repeats", self.repeats, 1, 100, integer=True)

    def recipes(self) -> list[Recipe]:
        out, seen = [], set()
        for s, b, c, g, sch, e, seed in itertools.product(self.sparsity, self.bits, self.clusters, self.granularity,
                                                          self.schedule, self.finetune_epochs,
                                                          range(self.seed, self.seed + self.repeats)):
            r = grid_point(self.model, self.dataset, sparsity=s, bits=b, clusters=c, granularity=g, schedule=sch,
                           finetune_epochs=e, seed=seed, bn_adapt=self.bn_adapt, checkpoint=self.checkpoint,
                           quant_mode=self.quant_mode)
            if r.canonical_json() not in seen:  # e.g. details that do not apply at sparsity 0
                seen.add(r.canonical_json())
                out.append(r)
        return out
