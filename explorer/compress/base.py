"""What every technique shares: the step registry, the compression state and training hooks.

A technique is a frozen, validated config dataclass registered under its recipe `kind`, plus a pure
`apply(model, config, ctx) -> Compressed` that deep-copies its input. The `CompressionState`
travels from step to step: masks keep pruned weights at zero in every later fine-tuning, codebooks
keep clustered layers on their centroids, and quantisation records say how each tensor sits on an
integer grid, which is what the packed format stores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from explorer.core import plugins
from explorer.core.card import ModelCard
from explorer.core.data import DataBundle
from explorer.core.errors import bad_value, check_choice
from explorer.core.train import LossFn, Progress, TrainConfig, TrainHook, fit

# ---------------------------------------------------------------- state


@dataclass
class QuantRecord:
    """Weight `name` equals (q - zero_point) * scale with integer q in [qmin, qmax]; scale and zero_point
    are per output channel when `axis` is 0, else one value each. With `group_size` > 0 (a Linear weight,
    axis 0) they are per output row and per group of `group_size` consecutive inputs: shape (rows, groups),
    the last group of a row shorter when the inputs are not a multiple of the group."""

    bits: int
    symmetric: bool
    axis: int | None
    scale: torch.Tensor
    zero_point: torch.Tensor
    group_size: int = 0

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1


@dataclass
class Codebook:
    """Weight `name` equals centroids[assignments], and 0 where a mask prunes it (assignments there are 0
    and ignored)."""

    centroids: torch.Tensor  # (k,) float32
    assignments: torch.Tensor  # int64, the weight's shape


@dataclass(frozen=True)
class Deploy(Mapping[str, Any]):
    """How the int8 ONNX Runtime model of a run is made: as a recipe's static or dynamic int8 step says
    (QuantizeConfig.deploy), or ONNX Runtime's default static per-channel int8 for a run without one
    (`default`). Read-only, and readable as a mapping (deploy["mode"]) like the RunResult's plain data."""

    mode: str  # static | dynamic
    per_channel: bool = True
    symmetric: bool = True
    calibration: str = "minmax"
    calibration_samples: int = 256
    keep_float: list[str] = field(default_factory=list)  # layers the int8 model leaves in fp32
    from_recipe: bool = True
    engine: str = "onnxruntime"

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("static", "dynamic"))

    @classmethod
    def default(cls) -> Deploy:
        return cls(mode="static", from_recipe=False)

    @property
    def symmetric_weights(self) -> bool:
        """Whether the int8 model's weights are symmetric: as asked, except static per-channel QDQ, which ONNX
        Runtime always makes symmetric (its integer convolutions take one zero point)."""
        return self.symmetric or (self.mode == "static" and self.per_channel)

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class CompressionState:
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # param -> bool, True = kept
    codebooks: dict[str, Codebook] = field(default_factory=dict)
    quant: dict[str, QuantRecord] = field(default_factory=dict)
    float_format: dict[str, str] = field(default_factory=dict)  # param -> "fp16" | "bf16"
    activations: dict[str, Any] | None = None  # activation quantisation: bits, symmetric, ranges
    deploy: Deploy | None = None  # the integer runtime path to export (ONNX Runtime int8)
    notes: list[str] = field(default_factory=list)  # what will surprise a user, and why
    info: dict[str, Any] = field(default_factory=dict)  # per-step details for the report
    # each fine-tuning's mean cross-entropy per epoch, in the order they ran: a loss stuck at ln(classes) is a model
    # that guesses (explorer.run.collapse)
    losses: list[list[float]] = field(default_factory=list)

    def copy(self) -> CompressionState:
        return copy.deepcopy(self)

    def hooks(self) -> list[TrainHook]:
        """Hooks that keep every constraint so far in force during fine-tuning."""
        out: list[TrainHook] = []
        if self.masks:
            out.append(MaskHook(self.masks))
        if self.codebooks:
            out.append(CodebookHook(self.codebooks, self.masks))
        return out


@dataclass
class Compressed:
    model: nn.Module
    state: CompressionState


@dataclass
class Context:
    """What a step may use besides the model: data for fine-tuning and calibration, the state so
    far, progress reporting, the seed and the teacher (the uncompressed baseline)."""

    data: DataBundle | None = None
    state: CompressionState = field(default_factory=CompressionState)
    progress: Progress | None = None
    seed: int = 0
    baseline: nn.Module | None = None
    model_name: str | None = None

    def need_data(self, what: str) -> DataBundle:
        if self.data is None:
            raise ValueError(f"{what} needs a dataset (fine-tuning or calibration data); none was given")
        return self.data


# ---------------------------------------------------------------- hooks


def named_param(model: nn.Module, name: str) -> nn.Parameter:
    """The trainable tensor behind `name`, also while a parametrization (QAT's fake quantisation)
    wraps it, so masks and codebooks hold during quantisation-aware training too."""
    owner, _, attr = name.rpartition(".")
    try:
        mod = model.get_submodule(owner) if owner else model
        if parametrize.is_parametrized(mod, attr):
            original: nn.Parameter = getattr(mod.parametrizations, attr).original
            return original
        return model.get_parameter(name)
    except AttributeError:
        raise ValueError(f"the model has no parameter {name!r}") from None


class MaskHook(TrainHook):
    """Pruned weights get no update and stay exactly zero (zero grad, then re-mask after the step,
    since weight decay and momentum would otherwise move them)."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    def after_backward(self, model: nn.Module) -> None:
        for name, mask in self.masks.items():
            p = named_param(model, name)
            if p.grad is not None:
                p.grad.mul_(mask)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        apply_masks(model, self.masks)


class CodebookHook(TrainHook):
    """Assignments stay fixed; after each step every weight of a cluster is set to the cluster's
    mean, so the shared centroid moves by the average of its members' updates (seed 000 sec 3.2,
    Deep Compression's centroid fine-tuning up to the learning-rate scale)."""

    def __init__(self, codebooks: dict[str, Codebook], masks: dict[str, torch.Tensor]):
        self.codebooks, self.masks = codebooks, masks

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        with torch.no_grad():
            for name, cb in self.codebooks.items():
                p = named_param(model, name)
                mask = self.masks.get(name)
                cb.centroids.copy_(cluster_means(p.detach().cpu(), cb.assignments, cb.centroids, mask))
                p.copy_(codebook_weight(cb, mask).to(p.device))


def cluster_means(w: torch.Tensor, assign: torch.Tensor, old: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of each cluster's (kept) weights; a cluster left with no member keeps its old centroid."""
    flat_w, flat_a = w.reshape(-1).float(), assign.reshape(-1)
    if mask is not None:
        keep = mask.reshape(-1)
        flat_w, flat_a = flat_w[keep], flat_a[keep]
    k = len(old)
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, flat_a, flat_w.double())
    counts = torch.zeros(k, dtype=torch.float64).index_add_(0, flat_a, torch.ones_like(flat_w, dtype=torch.float64))
    return torch.where(counts > 0, sums / counts.clamp_min(1), old.double()).float()


def codebook_weight(cb: Codebook, mask: torch.Tensor | None) -> torch.Tensor:
    w = cb.centroids[cb.assignments]
    return w.masked_fill(~mask, 0.0) if mask is not None else w


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    # masked_fill writes +0.0 (a multiply would leave -0.0 for negative weights), so pruned weights
    # are bit-identical zeros and the packed format's sparse layouts reproduce them exactly
    with torch.no_grad():
        for name, mask in masks.items():
            named_param(model, name).masked_fill_(~mask, 0.0)


def require_shapes_free(state: CompressionState, kind: str) -> None:
    """Structural steps (channel pruning, low-rank, distillation) rebuild layers; masks, codebooks and
    quantisation records are indexed by the old shapes, so such a step must come before those."""
    held = [k for k in ("masks", "codebooks", "quant", "float_format") if getattr(state, k)]
    if held:
        raise ValueError(f"{kind} changes layer shapes, so it must come before the steps that left "
                         f"{', '.join(held)}: put it before prune, cluster and quantize in the recipe")


def finetune(model: nn.Module, ctx: Context, epochs: int, lr: float, what: str,
             extra_hooks: list[TrainHook] | None = None, loss_fn: LossFn | None = None,
             params: Sequence[nn.Parameter] | None = None) -> dict[str, Any]:
    """Fine-tune in place with every constraint in the state kept; returns a small report."""
    if epochs == 0:
        return {"epochs": 0, "seconds": 0.0}
    data = ctx.need_data(f"fine-tuning after {what}")
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=ctx.seed, weight_decay=0.0)
    hist = fit(model, data.train, cfg, hooks=[*ctx.state.hooks(), *(extra_hooks or [])], progress=ctx.progress,
               loss_fn=loss_fn, params=params)
    if loss_fn is None:  # plain cross-entropy, whose value for a uniform guess is ln(classes)
        ctx.state.losses.append([round(v, 6) for v in hist.train_loss])
    return {"epochs": epochs, "seconds": round(hist.seconds, 3), "final_loss": hist.train_loss[-1]}


# ---------------------------------------------------------------- registry

# The most training epochs one step may ask for: recipes come from users, and each epoch is real CPU time. The
# page offers at most 100 (distillation; 50 for pruning and QAT); a recipe's total has its own cap (recipe.py).
MAX_STEP_EPOCHS = 100


DEFAULT_LR = 1e-3  # the learning rate of a step's training where its config names none


class Training(NamedTuple):
    """A step's training as the same-budget control repeats it on the uncompressed baseline
    (explorer.compress.finetune): `runs` fine-tunings in a row, each `epochs` epochs at learning rate `lr` with its
    own optimiser and cosine schedule (an iterative schedule fine-tunes once per round)."""

    epochs: int
    lr: float
    runs: int = 1


Layer = nn.Conv2d | nn.Linear  # what the techniques compress
Controls = Mapping[str, Any]  # the page's control values by name, as its sidebar and share link hold them
Card = ModelCard  # a baseline's card: architecture, dataset, name, path, format, whether it has BatchNorm


@dataclass(frozen=True)
class Control:
    """One control of the page's sidebar that a technique owns, as data: a selector when it has `options`, else a
    number (a slider with `slider`, else a number box) with its range [lo, hi] and step, or a box when the default
    is a bool. `enabled(controls, card)` says when it can change the result; a control that cannot is shown
    disabled, and the recipe and the run key never see its value (explorer.run.controls.build resets it to its
    default first). A technique's switch (the control that turns it on: sparsity, bits, clusters...) names the value
    that turns it `off`.

    Everything that draws a control reads it from here: the sidebar (its label, help, the words of each option,
    the number format), the Sweep tab and the command line's sweep flags (`flag`, `aliases`: the other spellings it
    takes, such as 32 for fp32), and the background grid (`sweep`: the values of the default grid, which make the
    control one of its axes; `notch`: how far a number moves to its neighbouring slider position)."""

    name: str
    default: Any
    options: tuple[Any, ...] = ()
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    enabled: Callable[[Controls, Card | None], bool] | None = None  # None: always
    off: Any = None  # a switch's value that leaves the technique out; None for a control that is no switch
    label: str = ""  # the sidebar's words for it ("" : its name)
    help: str = ""
    words: Mapping[Any, str] = field(default_factory=dict, hash=False)  # an option's words in the sidebar
    slider: bool = False  # options on a select slider, a number on a slider (else a select box, a number box)
    fmt: str | None = None  # printf-style format of a number ("%.2f")
    # why an option does not apply to this model (None: it does), e.g. attention heads on a model without attention
    refuse: Callable[[Any, Card | None], str | None] | None = None
    unavailable: Callable[[Card | None], str | None] | None = None  # why the control never applies to this model
    sweep: tuple[Any, ...] = ()  # the default grid's values: an axis of sweeps and of the background grid
    choices: tuple[Any, ...] = ()  # what the Sweep tab offers (default: every option, or lo to hi by step)
    notch: float | None = None  # a number axis: the distance to its neighbouring positions (default: step)
    skip_near: tuple[Any, ...] = ()  # options the background grid never measures as a neighbour
    flag: str = ""  # the command line's sweep flag, without its dashes ("": the name with dashes)
    aliases: Mapping[str, Any] = field(default_factory=dict, hash=False)  # command-line spellings -> values

    def applies(self, controls: Controls, card: Card | None) -> bool:
        return self.enabled is None or bool(self.enabled(controls, card))

    @property
    def title(self) -> str:
        return self.label or self.name

    def say(self, value: Any) -> str:
        """A value in the sidebar's words."""
        return self.words.get(value, str(value))

    def allowed(self, card: Card | None = None) -> tuple[Any, ...]:
        """Every value the control takes on this model, in order: its options (less those the model refuses), or
        its range by its step (a bool: False and True)."""
        if self.options:
            return tuple(o for o in self.options if self.refuse is None or self.refuse(o, card) is None)
        if isinstance(self.default, bool):
            return (False, True)
        if self.lo is None or self.hi is None or not self.step:
            return (self.default,)
        n = int(round((self.hi - self.lo) / self.step))
        whole = isinstance(self.default, int)
        return tuple(int(round(self.lo + i * self.step)) if whole else round(self.lo + i * self.step, 10)
                     for i in range(n + 1))

    def offered(self, card: Card | None = None) -> tuple[Any, ...]:
        """The values the Sweep tab offers."""
        return self.choices or self.allowed(card)

    def parse(self, text: str) -> Any:
        """A value given as text (a command line's sweep flag, a link), checked: ValueError names it and what is
        allowed."""
        raw = text.strip()
        shown = raw if _number(raw) else repr(raw)  # sparsity=1.2, granularity='rows'
        if raw in self.aliases:
            return self.aliases[raw]
        if self.options:
            for o in self.options:
                if str(o) == raw:
                    return o
            spelled = [*map(str, self.options), *self.aliases]
            raise ValueError(f"{self.name}={shown} must be one of: {', '.join(spelled)}")
        if isinstance(self.default, bool):
            if raw.lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"{self.name}={shown} must be 0 or 1")
            return raw.lower() in ("1", "true")
        kind = int if isinstance(self.default, int) else float
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{self.name}={shown} is not a {'whole number' if kind is int else 'number'}") from None
        if self.lo is not None and self.hi is not None and not self.lo <= value <= self.hi:
            raise ValueError(f"{self.name}={shown} must be in [{self.lo:g}, {self.hi:g}]")
        return value

    @property
    def cli(self) -> str:
        return "--" + (self.flag or self.name.replace("_", "-"))


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class StepConfig:
    """Base of every technique's config: a frozen, validated dataclass whose class names its recipe `kind`
    (the JSON form is {"kind": ..., every field}). Subclasses validate in __post_init__, raising a
    ValueError that repeats the bad value and says what is allowed.

    A technique knows itself: besides `label` its config class must define (register_step refuses it otherwise)
      - `words()`: the step in plain words for the page, the report and the command line, right for every
        value the config allows;
      - `controls()`: the page's controls it owns, as `Control` data ((): it has none, and the page never
        builds it);
      - `from_controls(controls, card, before)`: the step the controls stand for (None: the controls leave it
        out), given the steps built before it; ValueError for a combination the technique refuses;
      - `to_controls()`: the inverse, the controls it sets (None: the sidebar cannot express this config).
    `page_order` places its step among the page's (distil 10, low-rank 20, prune 30, cluster 40, BatchNorm
    adaptation 50, quantise 60); `on_onnx` says whether an ONNX model takes it; `columns()` and `canonical()`
    have defaults. Adding a technique touches its own module, its test and the README's Techniques table."""

    kind: ClassVar[str] = ""
    one_record: ClassVar[bool] = False  # its report is one record, not a list with one entry per step
    page_order: ClassVar[int] = 100
    on_onnx: ClassVar[bool] = False  # whether an ONNX model (ONNX Runtime only) takes this step
    # where the sidebar draws its controls: (the section's place, its title, whether it opens expanded); techniques
    # that share a title share the section, their controls in page order
    section: ClassVar[tuple[int, str, bool]] = (90, "More techniques", True)
    trains_anew: ClassVar[bool] = False  # the step trains a new model from scratch (distillation)
    fixes_floats: ClassVar[bool] = False  # after it the float statistics are fixed (quantisation)
    compresses: ClassVar[bool] = True  # False: it only trains (the same-budget control, explorer.compress.finetune)

    def structural(self) -> bool:
        """True when the step changes layer shapes or the architecture: such steps come before weight-level
        ones (masks and codebooks are indexed by the shapes they were made for)."""
        return False

    def label(self) -> str:
        """A short human label for tables and legends, e.g. 'prune 90% unstructured' or 'W8A8 static'."""
        return self.kind

    def words(self) -> str:
        """The step in plain words, e.g. 'prune 90% of the single weights at once'."""
        raise NotImplementedError

    @classmethod
    def controls(cls) -> tuple[Control, ...]:
        """The page's controls this technique owns; () for a technique the page does not offer."""
        raise NotImplementedError

    @classmethod
    def from_controls(cls, controls: Controls, card: Card, before: tuple[StepConfig, ...]) -> StepConfig | None:
        """The step the page's controls stand for on this baseline, or None when they leave it out."""
        raise NotImplementedError

    def to_controls(self) -> dict[str, Any] | None:
        """The controls that build this step (from_controls' inverse), or None where the page cannot say it."""
        raise NotImplementedError

    def columns(self) -> dict[str, Any]:
        """What the step contributes to a run's table row (explorer.run.result.flatten): the requested sparsity,
        the bit-width, the clusters... Later steps overwrite earlier ones."""
        return {}

    @classmethod
    def blank_columns(cls) -> dict[str, Any]:
        """Its columns in the row of a run without this technique (no pruning: 0 sparsity requested)."""
        return {}

    def canonical(self) -> StepConfig:
        """The same computation with every field that cannot change it at its default, so two recipes that
        differ only there share a run key (Recipe.canonical_json)."""
        return self

    def training_epochs(self) -> int:
        """Epochs of training the step runs (fine-tuning, QAT, distillation), as a recipe's epoch budget counts
        them; 0 for a step that does not train."""
        return 0

    def training(self) -> Training | None:
        """The training the step runs, as the same-budget control repeats it on the uncompressed baseline (None: it
        trains none): by default its `training_epochs()` in one go at its `lr`. A step that trains in rounds says
        so; a step that `trains_anew` has no such control (explorer.compress.finetune.control_of)."""
        epochs = self.training_epochs()
        return Training(epochs, float(getattr(self, "lr", DEFAULT_LR))) if epochs else None

    def revision(self) -> int:
        """Raised when a fix changes what this configuration computes, so cached runs made before the fix are
        recomputed (explorer.run.runner.run_key); 1 adds nothing to the key."""
        return 1

    def check_place(self, before: tuple[StepConfig, ...], after: tuple[StepConfig, ...]) -> None:
        """Refuse (ValueError, in words) a recipe that puts this step where it cannot work, given the steps before
        and after it (Recipe checks every step)."""

    def deploys(self) -> Deploy | None:
        """The int8 ONNX Runtime model this step deploys as (None: it deploys none), which is also the one step an
        ONNX model takes: ValueError, in words, where this configuration of it cannot."""
        return None

    def collapse_advice(self) -> str | None:
        """What to try instead when a run with this step collapsed (its model guesses), in words ("a lower
        sparsity, or ..."); None where the step has nothing to say."""
        return None

    def explain(self, result: Mapping[str, Any]) -> list[str]:
        """What will surprise a user in a result of a recipe with this step, each a sentence for the page (a
        checkpoint no smaller than the dense one, channel pruning that removes more than its ratio...)."""
        return []

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d


SELF_DESCRIPTION = ("words", "controls", "from_controls", "to_controls")


def _missing_self_description(config: type[StepConfig]) -> list[str]:
    return [name for name in SELF_DESCRIPTION if getattr(config, name).__qualname__.startswith("StepConfig.")]


ApplyFn = Callable[[nn.Module, Any, Context], Compressed]


@dataclass(frozen=True)
class StepType:
    """A registered technique: its config type and its pure apply(model, config, ctx)."""

    kind: str
    config: type[StepConfig]
    apply: ApplyFn


_STEPS: dict[str, StepType] = {}  # kind -> technique; filled as explorer.compress imports each module
_BY_TYPE: dict[type, StepType] = {}
_registered = 0


def register_step(config: type[StepConfig]) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: `@register_step(PruneConfig)` over a technique's apply() makes its kind usable in recipes."""
    if not (isinstance(config, type) and issubclass(config, StepConfig) and config.kind):
        raise TypeError(f"{config!r} is not a StepConfig subclass with a kind")
    if missing := _missing_self_description(config):
        raise TypeError(f"step kind {config.kind!r} ({config.__name__}) does not describe itself: it lacks "
                        f"{', '.join(m + '()' for m in missing)}; every technique defines "
                        f"{', '.join(m + '()' for m in SELF_DESCRIPTION)} (explorer.compress.base.StepConfig)")

    def deco(fn: ApplyFn) -> ApplyFn:
        if config.kind in _STEPS and _STEPS[config.kind].config is not config:
            raise ValueError(f"step kind {config.kind!r} is registered twice")
        global _registered
        _STEPS[config.kind] = _BY_TYPE[config] = StepType(config.kind, config, fn)
        _registered += 1
        return fn

    return deco


def registered() -> int:
    """How many registrations there have been: tables built from the techniques are built again when it changes."""
    return _registered


def page_types() -> list[type[StepConfig]]:
    """The techniques the page offers (those with controls), in the order the page composes their steps; the
    operator's plugins are imported first, so their techniques are offered too."""
    plugins.load()
    return sorted((t.config for t in _STEPS.values() if t.config.controls()), key=lambda c: c.page_order)


def blank_columns() -> dict[str, Any]:
    """Every technique's columns as a run without it has them: the row a table starts each run from."""
    out: dict[str, Any] = {}
    for t in sorted(_STEPS.values(), key=lambda t: t.config.page_order):
        out.update(t.config.blank_columns())
    return out


def step_types() -> dict[str, StepType]:
    """Every registered technique by kind (importing any module of explorer.compress registers them all)."""
    return dict(_STEPS)


def step_type_of(config: Any) -> StepType:
    technique = _BY_TYPE.get(type(config))
    if technique is None:
        raise TypeError(f"no technique is registered for {type(config).__name__}")
    return technique


def config_from_dict(d: dict[str, Any]) -> StepConfig:
    """Build a step config from its JSON form; unknown keys and kinds are named with what is allowed."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"recipe step {d!r} must be an object with a 'kind'")
    kind = d["kind"]
    if isinstance(kind, str) and kind not in _STEPS:
        plugins.load()  # a plugin's technique (a sweep worker, a command line, a recipe from the page)
    if not isinstance(kind, str) or kind not in _STEPS:
        raise bad_value("step kind", kind, sorted(_STEPS))
    cls = _STEPS[kind].config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields) - {"kind"})
    if unknown:
        raise ValueError(f"{kind} step has unknown keys {unknown}; allowed: {sorted(fields)}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "kind"}
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"{kind} step: {e}") from None


def config_to_dict(config: StepConfig) -> dict[str, Any]:
    step_type_of(config)  # only registered techniques have a recipe form
    return config.to_dict()


def record(state: CompressionState, config: StepConfig, info: dict[str, Any]) -> None:
    """A step's report for the RunResult's `compression` section, under its kind: a list with one entry per
    step, or for the techniques whose config says `one_record` (applied once: the last one's report) a
    single record. The shapes are the stored RunResult contract, so they stay as they are."""
    if config.one_record:
        state.info[config.kind] = info
    else:
        state.info.setdefault(config.kind, []).append(info)


def clone(model: nn.Module) -> nn.Module:
    """Techniques never change their input model: they work on a deep copy."""
    return copy.deepcopy(model)


def _mlp_types() -> tuple[type[nn.Module], ...]:
    """A transformer block's feed-forward module types: timm's Mlp family and torchvision's MLP (MLPBlock). A
    library not imported yet holds no module of any model, and is not imported for it (seconds on a first page)."""
    types: list[type[nn.Module]] = []
    if "torchvision" in sys.modules:
        from torchvision.ops import MLP

        types.append(MLP)
    if "timm" in sys.modules:
        with contextlib.suppress(ImportError):
            from timm.layers import GluMlp, Mlp, SwiGLU

            types = [Mlp, GluMlp, SwiGLU, *types]
    return tuple(types)


def compressible(model: nn.Module, layers: str = "all") -> list[tuple[str, Layer]]:
    """Conv and Linear layers selected by `layers`: all, conv, linear, inner (all but the first and
    last, which are the most sensitive and hold few weights), or mlp (the Linear layers inside a
    transformer block's feed-forward MLP: timm's fc1/fc2, torchvision's MLPBlock)."""
    mods: list[tuple[str, Layer]] = [(n, m) for n, m in model.named_modules()
                                     if isinstance(m, (nn.Conv2d, nn.Linear))]
    if layers == "mlp":
        mlps = [(n, m) for n, m in model.named_modules() if isinstance(m, _mlp_types())]
        inside = {f"{n}.{c}" for n, m in mlps for c, _ in m.named_modules() if c}
        return [(n, m) for n, m in mods if isinstance(m, nn.Linear) and n in inside]
    if layers == "conv":
        return [(n, m) for n, m in mods if isinstance(m, nn.Conv2d)]
    if layers == "linear":
        return [(n, m) for n, m in mods if isinstance(m, nn.Linear)]
    if layers == "inner":
        return mods[1:-1]
    return mods


LAYER_CHOICES = ("all", "conv", "linear", "inner", "mlp")
