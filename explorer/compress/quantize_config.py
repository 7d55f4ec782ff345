"""The quantisation step's config: what a recipe's {"kind": "quantize", ...} step asks for, validated. Kept apart
from the quantisers (quantize.py, mixed.py) so both can name the type without importing each other."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from explorer.compress.base import LAYER_CHOICES, MAX_STEP_EPOCHS, Card, Control, Controls, Deploy, StepConfig
from explorer.core.errors import bad_value, check_choice, check_range
from explorer.core.words import UNQUANTISED

MODES = ("fp16", "bf16", "ptq", "static", "dynamic", "qat", "mixed")
CALIBRATIONS = ("minmax", "percentile", "entropy")
# weights-only post-training quantisation: 0 keeps per-channel scales; 32/64/128 give each Linear layer a scale
# per row and group of that many inputs
GROUP_SIZES = (0, 32, 64, 128)
# how weights meet their grid: each rounded to nearest on its own, or by GPTQ, which rounds a layer's inputs one
# after another and moves the weights not yet rounded to make up for each error (explorer.compress.gptq)
ROUNDINGS = ("nearest", "gptq")
GPTQ_MIN_SAMPLES = 512  # GPTQ inverts the Hessian of a layer's inputs: a few hundred images leave it ill-posed
GPTQ_PAGE_SAMPLES = 1024  # the page's calibration images for GPTQ, as the peers it was checked against use
GPTQ_DAMP = 0.01  # the paper's dampening: 1% of the mean diagonal of the inputs' Hessian
# the signed grid of symmetric weights: "full" uses every code -2^(b-1) .. 2^(b-1) - 1 (the negative end reached
# where a channel's largest weight is negative), "restricted" the symmetric -(2^(b-1) - 1) .. 2^(b-1) - 1;
# "closest" each channel (or group) on whichever of the two rounds it with the smaller squared error; "auto" is the
# mode's own: full with GPTQ (better or tied at every bit-width measured), closest for round-to-nearest (ResNet-8's
# 4-bit weights: 89.27% restricted, 85.10% full, 91.13% closest; LeNet-5: 89.47%, 91.38%, 91.33%), restricted for
# static and dynamic int8, whose weights ONNX Runtime rounds again onto its restricted int8 grid (-127..127)
GRIDS = ("auto", "full", "restricted", "closest")


@dataclass(frozen=True)
class QuantizeConfig(StepConfig):
    """Fields: `bits` (2-8; 16 for fp16/bf16; 8 for static and dynamic), `mode` (fp16 | bf16 | ptq | static |
    dynamic | qat | mixed: static and dynamic also deploy as ONNX Runtime int8, dynamic through MatMulInteger,
    the usual CPU path for transformers), `activation_bits` (0: weights only), `symmetric`, `per_channel`,
    calibration settings, QAT epochs and lr, `layers` (all | conv | linear | inner | mlp), `budget_bits` (mixed)
    and `learn_ranges` (QAT). `group_size` (0, 32, 64 or 128; mode ptq, weights only): each Linear weight gets
    a scale and zero point per output row and per group of that many consecutive inputs (int4 g128 as GPTQ and
    AWQ ship); conv weights keep per-channel or per-tensor scales. Left out of the JSON form while 0, so recipes
    without it keep their cache keys. `rounding` ("nearest" | "gptq", mode ptq) with `gptq_damp` and `act_order`,
    and `grid` (see GRIDS) are left out of the JSON form at their defaults in the same way."""

    kind: ClassVar[str] = "quantize"
    page_order: ClassVar[int] = 60
    on_onnx: ClassVar[bool] = True
    section: ClassVar[tuple[int, str, bool]] = (2, "Quantisation", True)
    fixes_floats: ClassVar[bool] = True

    bits: int = 8
    mode: str = "ptq"
    activation_bits: int = 0  # 0: weights only
    symmetric: bool = True
    per_channel: bool = True
    calibration: str = "minmax"
    calibration_samples: int = 256
    percentile: float = 99.99
    finetune_epochs: int = 0  # QAT epochs
    lr: float = 1e-4
    layers: str = "all"
    budget_bits: float = 0.0  # mixed: average bits per quantised weight the mix must fit under
    learn_ranges: bool = True  # QAT: learn each activation range with the weights (LSQ+) instead of fixing it
    group_size: int = 0  # > 0: weight-only group-wise scales for Linear layers (ptq)
    rounding: str = "nearest"
    gptq_damp: float = GPTQ_DAMP
    act_order: bool = True  # GPTQ rounds the inputs with the largest Hessian diagonal first
    grid: str = "auto"

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        if self.mode in ("fp16", "bf16"):
            if self.bits != 16:
                raise bad_value("bits", self.bits, f"16 for mode {self.mode!r}")
        elif self.mode in ("static", "dynamic"):
            if self.bits != 8:
                raise bad_value("bits", self.bits, f"8 for mode {self.mode!r} (the int8 runtime path)")
        else:
            check_range("bits", self.bits, 2, 8, integer=True)
        if self.activation_bits != 0:
            check_range("activation_bits", self.activation_bits, 2, 8, integer=True)
        if self.mode == "dynamic" and self.activation_bits not in (0, 8):
            raise bad_value("activation_bits", self.activation_bits, "8 (or 0) for dynamic quantisation")
        check_choice("symmetric", self.symmetric, (True, False))
        check_choice("per_channel", self.per_channel, (True, False))
        check_choice("calibration", self.calibration, CALIBRATIONS)
        check_range("calibration_samples", self.calibration_samples, 1, 100_000, integer=True)
        check_range("percentile", self.percentile, 90.0, 100.0)
        check_range("finetune_epochs", self.finetune_epochs, 0, MAX_STEP_EPOCHS, integer=True)
        if self.mode == "qat" and self.finetune_epochs == 0:
            raise bad_value("finetune_epochs", 0, "at least 1 for quantisation-aware training")
        check_range("lr", self.lr, 1e-7, 1.0)
        check_choice("layers", self.layers, LAYER_CHOICES)
        check_choice("learn_ranges", self.learn_ranges, (True, False))
        if self.mode == "mixed":
            check_range("budget_bits", self.budget_bits, 2.0, float(self.bits))
        check_choice("group_size", self.group_size, GROUP_SIZES)
        if self.group_size and (self.mode != "ptq" or self.activation_bits):
            raise bad_value("group_size", self.group_size, "0 unless mode is 'ptq' with weights only "
                            f"(activation_bits 0); got mode {self.mode!r}, activation_bits {self.activation_bits}")
        self._check_rounding()
        check_choice("grid", self.grid, GRIDS)
        if self.grid == "auto":
            return
        if self.mode in ("fp16", "bf16") or not self.symmetric:
            raise bad_value("grid", self.grid, "'auto': fp16/bf16 weights have no integer grid" if self.symmetric else
                            "'auto': asymmetric weights have no signed grid (their zero point places the range)")
        if self.mode in ("static", "dynamic") and self.grid != "restricted":
            raise bad_value("grid", self.grid, f"'restricted' or 'auto' for mode {self.mode!r}: ONNX Runtime rounds "
                            "int8 weights onto -127..127")

    def _check_rounding(self) -> None:
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_range("gptq_damp", self.gptq_damp, 1e-4, 1.0)
        check_choice("act_order", self.act_order, (True, False))
        if self.rounding == "nearest":
            for name, default in (("gptq_damp", GPTQ_DAMP), ("act_order", True)):
                if getattr(self, name) != default:
                    raise bad_value(name, getattr(self, name), f"{default} unless rounding is 'gptq'")
            return
        if self.mode != "ptq":
            why = {"fp16": "16-bit floats have no integer grid", "bf16": "16-bit floats have no integer grid",
                   "static": "ONNX Runtime rounds the int8 weights again itself",
                   "dynamic": "ONNX Runtime rounds the int8 weights again itself",
                   "qat": "training moves the weights after any rounding",
                   "mixed": "its bit-widths are chosen from round-to-nearest's measured loss"}[self.mode]
            raise bad_value("rounding", self.rounding, f"'nearest' for mode {self.mode!r} ({why}); GPTQ is for "
                            "post-training quantisation of weights, mode 'ptq'")
        if self.calibration_samples < GPTQ_MIN_SAMPLES:
            raise bad_value("calibration_samples", self.calibration_samples,
                            f"at least {GPTQ_MIN_SAMPLES} with rounding 'gptq' (the Hessian of each layer's inputs)")

    @property
    def weight_grid(self) -> str:
        """The grid the weights use: 'full' or 'restricted' (symmetric integer weights), '' (none: fp16/bf16 or
        asymmetric, whose zero point places the range)."""
        if self.mode in ("fp16", "bf16") or not self.symmetric:
            return ""
        if self.grid != "auto":
            return self.grid
        if self.mode in ("static", "dynamic"):
            return "restricted"
        return "full" if self.rounding == "gptq" else "closest"

    @property
    def full_grid(self) -> bool:
        return self.weight_grid == "full"

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        # fields that came later: recipes without them keep their JSON and cache keys
        for name, default in (("group_size", 0), ("rounding", "nearest"), ("gptq_damp", GPTQ_DAMP),
                              ("act_order", True), ("grid", "auto")):
            if d[name] == default:
                d.pop(name)
        return d

    def canonical(self) -> QuantizeConfig:
        """A grid named as the mode's own is the mode's own."""
        if self.grid != "auto" and self.grid == dataclasses.replace(self, grid="auto").weight_grid:
            return dataclasses.replace(self, grid="auto")
        return self

    def revision(self) -> int:
        # 2: symmetric integer weights on the full signed grid; 3: each channel on the grid that rounds it closer
        return {"full": 2, "closest": 3}.get(self.weight_grid, 1)

    def training_epochs(self) -> int:
        return self.finetune_epochs

    @property
    def act_bits(self) -> int:
        if self.mode in ("static", "dynamic") and self.activation_bits == 0:
            return 8
        return self.activation_bits

    def label(self) -> str:
        if self.mode in ("fp16", "bf16"):
            return self.mode
        wa = f"W{self.bits}" + (f"A{self.act_bits}" if self.act_bits else "")
        return (f"{wa} {self.mode}" + (" GPTQ" if self.rounding == "gptq" else "")
                + (f" groups of {self.group_size}" if self.group_size else ""))

    def deploy(self, keep_float: Sequence[str] = ()) -> Deploy:
        """The int8 ONNX Runtime model this step deploys as (static and dynamic modes)."""
        return Deploy(mode=self.mode, per_channel=self.per_channel, symmetric=self.symmetric,
                      calibration=self.calibration, calibration_samples=self.calibration_samples,
                      keep_float=list(keep_float))

    def words(self) -> str:
        """'8-bit weights and activations (static int8)', '4-bit weights only (post-training)'."""
        if self.mode in ("fp16", "bf16"):
            return f"16-bit floats ({self.mode})"
        if self.mode == "static":
            return "8-bit weights and activations (static int8)"
        if self.mode == "dynamic":
            return "8-bit weights, activations at run time (dynamic int8)"
        what = f"{self.bits}-bit weights and activations" if self.act_bits else f"{self.bits}-bit weights only"
        how = {"ptq": "post-training", "qat": "quantisation-aware training", "mixed": "mixed precision"}[self.mode]
        if self.rounding == "gptq":
            how += ", error-compensating rounding (GPTQ)"
        groups = f", a scale per {self.group_size} inputs" if self.group_size else ""
        return f"{what} ({how}{groups}{self._grid_words()})"

    def _grid_words(self) -> str:
        codes = 1 << self.bits
        if self.mode == "mixed":  # each layer has its own bit-width
            return {"full": ", every code of each grid", "restricted": ", each grid less its lowest code",
                    "closest": ", each channel on the grid that rounds it closer", "": ""}[self.weight_grid]
        return {"full": f", all {codes} codes", "restricted": f", {codes - 1} of {codes} codes (symmetric)",
                "closest": f", each channel on {codes} or {codes - 1} codes, whichever rounds it closer",
                "": ""}[self.weight_grid]

    @classmethod
    def controls(cls) -> tuple[Control, ...]:
        return (
            Control("bits", "fp32", BIT_OPTIONS, off="fp32", label="Bit-width", slider=True,
                    help="Bits per weight: 2 to 8 on an integer grid, fp16/bf16 halves, fp32 leaves the weights alone.",
                    words=BIT_WORDS, sweep=("fp32", "fp16", "8", "4"), skip_near=("bf16",),
                    choices=("fp32", "fp16", "8", "6", "4", "3", "2"), aliases={"32": "fp32", "16": "fp16"}),
            Control("quant_mode", "auto", PAGE_MODES, enabled=_integer, label="Scheme", words=MODE_WORDS),
            Control("quant_acts", False, enabled=lambda c, card: _integer(c, card) and _mode(c) in ("ptq", "qat"),
                    label="Quantise activations too (not only weights)"),
            Control("symmetric", True, enabled=_integer, label="Symmetric (no zero point)"),
            Control("per_channel", True, enabled=_integer, label="A scale per output channel"),
            # group-wise scales are for weights-only post-training quantisation
            Control("group_size", 0, GROUP_SIZES, enabled=lambda c, card: _integer(c, card) and _mode(c) == "ptq"
                    and not c["quant_acts"], label="Group-wise scales for Linear layers",
                    words={0: "off (one scale per row)", **{g: f"a scale per {g} inputs of each row"
                                                           for g in GROUP_SIZES if g}},
                    help="weights-only quantisation: each Linear layer's row gets a scale for every group of "
                         "consecutive inputs, as GPTQ and AWQ store 4-bit transformers"),
            Control("rounding", "nearest", ROUNDINGS, enabled=lambda c, card: _integer(c, card) and _mode(c) == "ptq",
                    label="Rounding of the weights",
                    words={"nearest": "nearest (round each weight)", "gptq": "error-compensating (GPTQ)"},
                    help="GPTQ rounds each layer's weights one input at a time and moves the weights not yet "
                         f"rounded to make up for the error, measured on {GPTQ_PAGE_SAMPLES} training images; "
                         "far more accurate at 2-4 bits, seconds slower"),
            # activation ranges are calibrated; weights-only quantisation needs none
            Control("calibration", "minmax", CALIBRATIONS, enabled=lambda c, card: _integer(c, card) and (
                _mode(c) == "static" or (_mode(c) in ("ptq", "qat") and bool(c["quant_acts"]))),
                    label="Calibration of activation ranges",
                    help="only where activations are quantised: weights-only quantisation needs no calibration"),
            Control("qat_epochs", 2, lo=1, hi=50, step=1, enabled=_qat, label="QAT epochs"),
            Control("learn_ranges", True, enabled=_qat, label="QAT learns activation ranges",
                    help="on: each activation range is trained with the weights (learned step size, LSQ); "
                         "off: the calibrated ranges stay fixed and are measured again after training"),
        )

    def check_place(self, before: tuple[StepConfig, ...], after: tuple[StepConfig, ...]) -> None:
        if self.rounding == "gptq" and any(step.kind == "cluster" for step in before):
            raise ValueError("rounding='gptq' cannot follow clustering: a clustered layer's weights must stay on its "
                             "shared values, which GPTQ would move; allowed: rounding 'nearest' after clustering")

    def deploys(self) -> Deploy | None:
        if self.mode not in ("static", "dynamic"):
            return None
        if self.layers != "all":
            raise ValueError(f"quantize layers={self.layers!r} is not available for an ONNX model, whose layers the "
                             "explorer cannot name; allowed: 'all'")
        return self.deploy()

    @classmethod
    def from_controls(cls, controls: Controls, card: Card, before: tuple[StepConfig, ...]) -> QuantizeConfig | None:
        c, bits = controls, controls["bits"]
        if bits == "fp32":
            return None
        if card.get("format") == "onnx":
            mode = quant_mode(bits, c["quant_mode"])
            if bits != "8" or mode not in ("static", "dynamic"):
                asked = f"bits={bits}" if bits in ("fp16", "bf16") else f"bits={bits} with mode {mode!r}"
                raise ValueError(f"{asked} is not available for {card['name']}: only 8 bits with mode static or "
                                 "dynamic (ONNX Runtime's int8) apply to an ONNX model")
            return cls(bits=8, mode=mode, per_channel=c["per_channel"], calibration=c["calibration"])
        if bits in ("fp16", "bf16"):
            return cls(mode=bits, bits=16)
        mode = quant_mode(bits, c["quant_mode"])
        acts = int(bits) if c["quant_acts"] and mode in ("ptq", "qat") else 0
        group = c["group_size"] if mode == "ptq" and not acts else 0
        gptq = mode == "ptq" and c["rounding"] == "gptq"
        return cls(bits=int(bits), mode=mode, activation_bits=acts, symmetric=c["symmetric"], group_size=group,
                   per_channel=c["per_channel"], calibration=c["calibration"],
                   rounding="gptq" if gptq else "nearest", calibration_samples=GPTQ_PAGE_SAMPLES if gptq else 256,
                   finetune_epochs=c["qat_epochs"] if mode == "qat" else 0,
                   learn_ranges=c["learn_ranges"] or mode != "qat", lr=1e-3 if mode == "qat" else 1e-4)

    def to_controls(self) -> dict[str, Any] | None:
        if (self.gptq_damp, self.act_order, self.canonical().grid) != (GPTQ_DAMP, True, "auto"):
            return None  # the page offers GPTQ with its paper's settings and each mode's own grid
        if self.mode in ("fp16", "bf16"):
            return {"bits": self.mode}
        auto = self.mode == quant_mode(str(self.bits), "auto") and not self.activation_bits
        return {"bits": str(self.bits), "quant_mode": "auto" if auto else self.mode,
                "quant_acts": bool(self.activation_bits), "symmetric": self.symmetric,
                "per_channel": self.per_channel, "calibration": self.calibration,
                "qat_epochs": self.finetune_epochs or 2, "learn_ranges": self.learn_ranges,
                "group_size": self.group_size, "rounding": self.rounding}

    def columns(self) -> dict[str, Any]:
        return {"bits": self.bits, "scheme": self.words()}

    @classmethod
    def blank_columns(cls) -> dict[str, Any]:
        return {"bits": 32, "scheme": UNQUANTISED}


BIT_OPTIONS = ("2", "3", "4", "5", "6", "7", "8", "fp16", "bf16", "fp32")
# the bit-width control's values in words, as the Sweep tab and the tables say them (none, or how many bits where)
BIT_WORDS = {"fp32": "none (fp32)", "fp16": "16-bit floats (fp16)", "bf16": "16-bit brain floats (bf16)",
             "8": "8-bit weights and activations (static int8)",
             **{str(b): f"{b}-bit weights only" for b in range(2, 8)}}
# auto: the usual scheme for the bit-width, static int8 (weights and activations, ONNX Runtime's int8 path)
# at 8 bits and post-training weights-only below; the others as named
PAGE_MODES = ("auto", "ptq", "static", "dynamic", "qat")
MODE_WORDS = {"auto": "the usual one for the bit-width: static int8 at 8 bits, weights only below",
              "ptq": "post-training (PTQ): weights rounded once, no training",
              "static": "static int8: weights and activations, activation ranges calibrated",
              "dynamic": "dynamic int8: activation ranges measured at run time",
              "qat": "quantisation-aware training (QAT): fine-tuned with the rounding in the loop"}


def bits_control(bits: int) -> str:
    """A bit-width as a number (the command line's and the tables' 32, 16, 8...) as the bit-width control says it."""
    return {32: "fp32", 16: "fp16"}.get(bits, str(bits))


def quant_mode(bits: str, mode: str) -> str:
    """The mode a bit-width and the page's mode control stand for ('auto' resolved)."""
    if mode != "auto":
        return mode
    return "static" if bits == "8" else "ptq"


def _integer(c: Controls, card: Card | None) -> bool:
    return c["bits"] not in ("fp32", "fp16", "bf16")


def _qat(c: Controls, card: Card | None) -> bool:
    return _integer(c, card) and _mode(c) == "qat"


def _mode(c: Controls) -> str:
    return quant_mode(c["bits"], c["quant_mode"])
