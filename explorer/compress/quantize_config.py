"""The quantisation step's config: what a recipe's {"kind": "quantize", ...} step asks for, validated. Kept apart
from the quantisers (quantize.py, mixed.py) so both can name the type without importing each other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from explorer.compress.base import LAYER_CHOICES, MAX_STEP_EPOCHS, Deploy, StepConfig
from explorer.core.errors import bad_value, check_choice, check_range

MODES = ("fp16", "bf16", "ptq", "static", "dynamic", "qat", "mixed")
CALIBRATIONS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class QuantizeConfig(StepConfig):
    kind: ClassVar[str] = "quantize"

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

    def __post_init__(self):
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
        return f"{wa} {self.mode}"

    def deploy(self, keep_float: Sequence[str] = ()) -> Deploy:
        """The int8 ONNX Runtime model this step deploys as (static and dynamic modes)."""
        return Deploy(mode=self.mode, per_channel=self.per_channel, symmetric=self.symmetric,
                      calibration=self.calibration, calibration_samples=self.calibration_samples,
                      keep_float=list(keep_float))
