"""The pruning step's config: what a recipe's {"kind": "prune", ...} step asks for, validated. Kept apart from the
mask maths and module surgery (prune.py, channel.py) so both can name the type without importing each other."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from explorer.compress.base import LAYER_CHOICES, MAX_STEP_EPOCHS, Card, Control, Controls, StepConfig, Training
from explorer.core.errors import bad_value, check_choice, check_range
from explorer.core.words import byte_size

GRANULARITIES = ("unstructured", "channel", "block", "nm", "heads", "neurons")
REMOVES = ("channel", "heads", "neurons")  # granularities that make layers smaller (structural steps)
CRITERIA = ("l1", "l2", "geometric_median")
SCHEDULES = ("oneshot", "iterative", "gradual")


@dataclass(frozen=True)
class PruneConfig(StepConfig):
    """Fields: `sparsity` is the share pruned: of the selected weights (unstructured, block), of each layer's
    output channels (channel), of the attention heads (heads: every block keeps at least one) or of the MLP
    hidden neurons (neurons), all physically removed for channel, heads and neurons; n:m fixes it at 1 - n/m.
    `granularity`: unstructured | channel | block | nm | heads | neurons. `criterion`: l1 | l2 magnitude
    (geometric_median for channel). `scope`: global (one ranking over all layers: single weights and blocks by
    layer-adaptive LAMP scores with a per-layer floor, explorer.compress.lamp; for heads and neurons each block's
    scores are divided by their mean first) | layer (the same share in every layer). `schedule`:
    oneshot | iterative | gradual (heads and neurons: oneshot). `finetune_epochs`, `lr`: fine-tuning after
    pruning. `layers`: which Conv/Linear layers (all | conv | linear | inner | mlp; heads and neurons take
    every transformer block). `rounds`, `initial_sparsity`: the iterative and gradual schedules. `block`:
    the block shape; `n`, `m`: n of every m consecutive inputs kept (2:4 by default)."""

    kind: ClassVar[str] = "prune"
    page_order: ClassVar[int] = 30
    section: ClassVar[tuple[int, str, bool]] = (1, "Pruning", True)

    sparsity: float = 0.5
    granularity: str = "unstructured"
    criterion: str = "l1"
    scope: str = "global"
    schedule: str = "oneshot"
    finetune_epochs: int = 0
    lr: float = 1e-3
    layers: str = "all"
    rounds: int = 3  # iterative: prune/fine-tune rounds
    initial_sparsity: float = 0.0  # gradual: s_i of the cubic schedule
    block: tuple[int, int] = (4, 4)
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 0.99)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("criterion", self.criterion, CRITERIA)
        check_choice("scope", self.scope, SCOPES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("finetune_epochs", self.finetune_epochs, 0, MAX_STEP_EPOCHS, integer=True)
        check_range("lr", self.lr, 1e-7, 1.0)
        check_choice("layers", self.layers, LAYER_CHOICES)
        check_range("rounds", self.rounds, 1, 50, integer=True)
        check_range("initial_sparsity", self.initial_sparsity, 0.0, self.sparsity)
        if len(self.block) != 2 or not all(isinstance(b, int) and 1 <= b <= 64 for b in self.block):
            raise bad_value("block", self.block, "two integers in [1, 64]")
        check_range("m", self.m, 2, 32, integer=True)
        check_range("n", self.n, 1, self.m - 1, integer=True)
        if self.criterion == "geometric_median" and self.granularity != "channel":
            raise bad_value("criterion", self.criterion, "l1 or l2 unless granularity is 'channel'")
        if self.granularity == "nm" and self.sparsity not in (0.0, 1 - self.n / self.m):
            fixed = f"1 - n/m = {1 - self.n / self.m:g} for {self.n}:{self.m} pruning"
            raise bad_value("sparsity", self.sparsity, fixed)
        if self.schedule != "oneshot" and self.finetune_epochs == 0:
            raise bad_value("finetune_epochs", 0, f"at least 1 for the {self.schedule} schedule")
        if self.granularity in ("heads", "neurons") and self.schedule != "oneshot":
            raise bad_value("schedule", self.schedule, f"oneshot for {self.granularity} pruning")
        if self.granularity == "nm" and self.schedule == "gradual":
            raise bad_value("schedule", "gradual", "oneshot or iterative for n:m pruning (its sparsity is fixed)")

    @property
    def target(self) -> float:
        return 1 - self.n / self.m if self.granularity == "nm" else self.sparsity

    def structural(self) -> bool:
        return self.granularity in REMOVES  # channels, heads or neurons are removed: the layers get smaller

    def training_epochs(self) -> int:
        """Each round of an iterative schedule (and of gradual channel pruning) fine-tunes at least one epoch, so
        many rounds train more than `finetune_epochs` (prune_channels, _prune_unstructured)."""
        t = self.training()
        return 0 if t is None else t.epochs * t.runs

    def training(self) -> Training | None:
        """One fine-tuning per round, each of `finetune_epochs // rounds` epochs (at least one)."""
        rounds = self.rounds if self.schedule == "iterative" or (
            self.schedule == "gradual" and self.granularity == "channel") else 1
        if rounds == 1:
            return Training(self.finetune_epochs, self.lr) if self.finetune_epochs else None
        return Training(max(1, self.finetune_epochs // rounds), self.lr, rounds)

    def label(self) -> str:
        sched = "" if self.schedule == "oneshot" else f" {self.schedule}"
        return f"prune {self.target:.0%} {self.granularity}{sched}"

    def revision(self) -> int:
        # 2: global channel pruning no longer skips a layer whose every channel falls under the threshold; global
        # unstructured and block pruning rank by layer-adaptive scores under a per-layer floor instead of one
        # threshold that emptied layers small in scale (nothing changed at a target of 0: nothing is pruned)
        if self.scope == "global" and (self.granularity == "channel" or self.adaptive()):
            return 2
        return 1

    def adaptive(self) -> bool:
        """Whether the step ranks weights across layers by layer-adaptive scores (explorer.compress.lamp)."""
        return self.scope == "global" and self.granularity in ADAPTIVE and self.target > 0

    def words(self) -> str:
        if self.granularity == "nm":
            what = f"the weights, keeping {self.n} of every {self.m} ({self.n}:{self.m})"
        else:
            what = f"the {_granularity_words(self)}"
        if self.granularity in RANKED:  # the criterion changes which groups go; single weights and n:m: it cannot
            what += f" {CRITERION_WORDS[self.criterion]}"
        clauses = []
        if self.granularity in ADAPTIVE:
            clauses.append("ranked across layers by layer-adaptive scores (LAMP)" if self.scope == "global" else
                           "the same share in every layer")
        if self.layers != "all" and self.granularity not in ("heads", "neurons"):  # those take every block
            clauses.append(LAYER_WORDS[self.layers])
        how = "".join(f", {c}" for c in clauses) + ("," if clauses else "")
        tune = f", fine-tuned {self.finetune_epochs} epoch{'s' if self.finetune_epochs != 1 else ''}" \
            if self.finetune_epochs else ""
        return f"prune {self.target:.0%} of {what}{how} {SCHEDULE_WORDS[self.schedule]}{tune}"

    @classmethod
    def controls(cls) -> tuple[Control, ...]:
        return (
            Control("sparsity", 0.5, lo=0.0, hi=0.99, step=0.01, off=0.0, label="Sparsity", slider=True,
                    help="Share of weights (unstructured, blocks) or of channels (channel pruning) removed.",
                    sweep=(0.0, 0.5, 0.75, 0.9, 0.95), notch=0.05,
                    choices=(0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98)),
            Control("granularity", "unstructured", GRANULARITIES, enabled=_pruning, label="Granularity",
                    words=GRANULARITY_WORDS, refuse=_needs_attention),
            # unstructured ranks |w| and w^2 alike, and n:m keeps the n largest of each group whatever the
            # criterion and scope: there these controls change nothing
            Control("criterion", "l1", CRITERIA,
                    enabled=lambda c, card: _pruning(c, card) and c["granularity"] in RANKED, label="Criterion",
                    words={"l1": "L1 norm (magnitude)", "l2": "L2 norm",
                           "geometric_median": "geometric median (channels only)"}),
            Control("scope", "global", SCOPES, enabled=lambda c, card: _pruning(c, card) and c["granularity"] != "nm",
                    label="Scope", words={"global": "one ranking across all layers",
                                          "layer": "the same share in every layer"},
                    help="One ranking across all layers: single weights and blocks are ranked by layer-adaptive "
                         "scores (LAMP), which compare each weight with its own layer's, and no layer goes above 98% "
                         "zeros; channels by their norms."),
            # the first layer holds few weights and sees the raw pixels, the last decides the classes: both the most
            # sensitive, and a global ranking prunes them like any other (kept dense by default; off: every layer)
            Control("dense_ends", True, enabled=_ranked_globally, label="Keep the first and last layers dense",
                    help="Leave the first and the last layer unpruned; the sparsity is then the share of the other "
                         "layers' weights."),
            # heads and neurons are removed at once (Torch-Pruning's graph, then fine-tuning)
            Control("schedule", "oneshot", SCHEDULES,
                    enabled=lambda c, card: _pruning(c, card) and c["granularity"] not in ("heads", "neurons"),
                    label="Schedule", words={"oneshot": "one shot, then fine-tune",
                                             "iterative": "in rounds, fine-tuning between",
                                             "gradual": "gradually during fine-tuning (Zhu & Gupta's cubic schedule)"}),
            Control("prune_epochs", 2, lo=0, hi=50, step=1, enabled=_pruning, label="Fine-tune epochs",
                    flag="finetune-epochs"),
        )

    def collapse_advice(self) -> str | None:
        if self.granularity in REMOVES:
            removed = {"channel": "channels", "heads": "attention heads", "neurons": "hidden neurons"}[self.granularity]
            return f"a lower share of {removed}, or more fine-tuning epochs"
        if self.granularity == "nm":  # its sparsity is fixed by n and m
            return "more fine-tuning epochs, or leaving the first and last layers dense"
        other = "the same share in every layer" if self.scope == "global" else "one ranking across all layers"
        return f"a lower sparsity, the scope '{other}', or more fine-tuning epochs"

    def explain(self, result: Mapping[str, Any]) -> list[str]:
        out = []
        size, base = result.get("size") or {}, result.get("baseline_size") or {}
        if result.get("sparsity", 0) > 0.3 and size.get("file_bytes", 0) >= 0.95 * base.get("file_bytes", 1):
            out.append(f"The checkpoint file is no smaller than the dense one ({byte_size(size['file_bytes'])}): "
                       "the zeros are stored. The packed file, which skips them, is "
                       f"{byte_size(size['packed_bytes'])}.")
        removed = 1 - result.get("params", 0) / max(result.get("baseline_params", 1), 1)
        explained = any("removing an output channel" in n for n in result.get("notes", []))
        if self.granularity == "channel" and removed > self.sparsity + 0.1 and not explained:
            out.append(f"Channel pruning at ratio {self.sparsity:.2f} removed {removed:.0%} of the parameters: each "
                       "removed channel also removes the next layer's matching input weights.")
        return out

    @classmethod
    def from_controls(cls, controls: Controls, card: Card, before: tuple[StepConfig, ...]) -> PruneConfig | None:
        c = controls
        if c["sparsity"] <= 0:
            return None
        if c["granularity"] == "nm":  # 2:4 fixes the sparsity at one half; the slider only turns it on
            return cls(granularity="nm", sparsity=0.5, layers="inner", criterion=c["criterion"], scope=c["scope"],
                       schedule=c["schedule"], finetune_epochs=c["prune_epochs"])
        layers = "inner" if _ranked_globally(c, card) and c["dense_ends"] else "all"
        return cls(sparsity=c["sparsity"], granularity=c["granularity"], criterion=c["criterion"], scope=c["scope"],
                   schedule=c["schedule"], finetune_epochs=c["prune_epochs"], layers=layers)

    def to_controls(self) -> dict[str, Any]:
        ends = self.layers == "inner" if self.scope == "global" and self.granularity in ADAPTIVE else True
        return {"sparsity": self.sparsity, "granularity": self.granularity, "criterion": self.criterion,
                "scope": self.scope, "schedule": self.schedule, "prune_epochs": self.finetune_epochs,
                "dense_ends": ends}

    def columns(self) -> dict[str, Any]:
        return {"sparsity_requested": self.target, "granularity": self.granularity}

    @classmethod
    def blank_columns(cls) -> dict[str, Any]:
        return {"sparsity_requested": 0.0, "granularity": None}

    def canonical(self) -> PruneConfig:
        """L1 and L2 rank single weights alike, and n:m pruning uses neither the criterion nor the scope."""
        if self.granularity == "unstructured":
            return dataclasses.replace(self, criterion="l1")
        if self.granularity == "nm":
            return dataclasses.replace(self, criterion="l1", scope="global")
        return self


SCOPES = ("global", "layer")
ADAPTIVE = ("unstructured", "block")  # granularities a global scope ranks by layer-adaptive scores (LAMP)
LAYER_WORDS = {"inner": "first and last layers left dense", "conv": "convolutions only",
               "linear": "fully connected layers only", "mlp": "the transformer MLPs' layers only"}
# granularities whose ranking the L1/L2 criterion changes: groups of weights (a channel, a block, a head's rows,
# a neuron's row and column) rank differently by the sum of |w| and of w^2; single weights and n:m do not
RANKED = ("channel", "block", "heads", "neurons")
CRITERION_WORDS = {"l1": "by L1 norm", "l2": "by L2 norm", "geometric_median": "by geometric median"}
SCHEDULE_WORDS = {"oneshot": "at once", "iterative": "in rounds", "gradual": "gradually"}


def _granularity_words(cfg: PruneConfig) -> str:
    if cfg.granularity == "block":
        return f"{cfg.block[0]}x{cfg.block[1]} blocks of weights"
    return {"unstructured": "single weights", "channel": "whole channels", "heads": "attention heads",
            "neurons": "hidden neurons of the MLPs"}[cfg.granularity]


def _pruning(c: Controls, card: Card | None) -> bool:
    return bool(c["sparsity"] > 0)


def _ranked_globally(c: Controls, card: Card | None) -> bool:
    return _pruning(c, card) and c["granularity"] in ADAPTIVE and c["scope"] == "global"


GRANULARITY_WORDS = {"unstructured": "single weights", "channel": "whole channels (physically removed)",
                     "block": "4x4 blocks", "nm": "2:4 semi-structured (sparsity fixed at 50%)",
                     "heads": "attention heads of a transformer (physically removed)",
                     "neurons": "hidden neurons of a transformer's MLPs (physically removed)"}


def _needs_attention(granularity: Any, card: Card | None) -> str | None:
    """Heads and neurons are a transformer's: refused for a model without attention layers."""
    if granularity in ("heads", "neurons") and card is not None and not card.get("attention"):
        what = {"heads": "attention heads", "neurons": "the hidden neurons of transformer MLPs"}[granularity]
        name = card.get("name", "this model")
        return f"Pruning {what} applies to transformers only, and {name} has no attention layers"
    return None
