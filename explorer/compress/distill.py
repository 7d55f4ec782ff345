"""Knowledge distillation (Hinton, Vinyals and Dean, 2015): a smaller zoo model, the student, is trained
on the teacher's softened outputs as well as the labels (seed 002's third technique).

The student is a new architecture, so `state.info["architecture"]` names it for the packer. Seed 004's
question "can a smaller dense model with a similar number of parameters give similar performance?"
needs a control: `train_dense_control` trains a width-matched model from scratch the same way, with
labels only, so a benchmark can tell what the teacher's soft targets add.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from explorer.compress.base import (
    MAX_STEP_EPOCHS,
    Card,
    Compressed,
    CompressionState,
    Context,
    Control,
    Controls,
    StepConfig,
    record,
    register_step,
    require_shapes_free,
)
from explorer.core.data import DataBundle
from explorer.core.errors import bad_value, check_choice, check_range
from explorer.core.train import Progress, TrainConfig, fit, seed_everything
from explorer.core.zoo import count_params, create_model, list_models, model_entry

WIDTH_RANGE = (0.0625, 4.0)  # what create_model accepts


@dataclass(frozen=True)
class DistillConfig(StepConfig):
    kind: ClassVar[str] = "distill"
    one_record: ClassVar[bool] = True
    page_order: ClassVar[int] = 10
    section: ClassVar[tuple[int, str, bool]] = (4, "Distillation and low-rank", False)
    trains_anew: ClassVar[bool] = True

    student: str = "digits_cnn"
    width: float = 0.5  # student width multiplier; ignored for architectures without one
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) loss; 1 - alpha goes to the labels
    epochs: int = 30
    lr: float = 2e-3

    def __post_init__(self) -> None:
        check_choice("student", self.student, list_models())
        check_range("width", self.width, *WIDTH_RANGE)
        check_range("temperature", self.temperature, 1.0, 20.0)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("epochs", self.epochs, 1, MAX_STEP_EPOCHS, integer=True)
        check_range("lr", self.lr, 1e-7, 10.0)

    def structural(self) -> bool:
        return True  # a new, smaller architecture

    def label(self) -> str:
        return f"distil -> {self.student} x{self.width:g}"

    def words(self) -> str:
        return f"distil into a {self.student} at width {self.width:g}"

    @classmethod
    def controls(cls) -> tuple[Control, ...]:
        on = lambda c, card: bool(c["distill"])
        return (Control("distill", False, off=False, label="Distil into a small CNN", help=(
                    "Trains a student network with the explorer's small convolutional architecture (the one its "
                    "digits model uses, sized to this data set's images and classes), at the width below, to match "
                    "this model's outputs (Hinton et al., \"Distilling the Knowledge in a Neural Network\", 2015). "
                    "Whether it is faster depends on the model it replaces: compare the latency tiles.")),
                Control("student_width", 0.5, lo=0.125, hi=1.0, step=0.125, enabled=on, label="Student width",
                        slider=True),
                Control("distill_epochs", 15, lo=1, hi=100, step=1, enabled=on, label="Distillation epochs"))

    def check_place(self, before: tuple[StepConfig, ...], after: tuple[StepConfig, ...]) -> None:
        if any(isinstance(s, DistillConfig) for s in before):
            raise ValueError("distils again: a recipe can distil into one student only")

    @classmethod
    def from_controls(cls, controls: Controls, card: Card, before: tuple[StepConfig, ...]) -> DistillConfig | None:
        if not controls["distill"]:
            return None
        return cls(student="digits_cnn", width=controls["student_width"], epochs=controls["distill_epochs"])

    def to_controls(self) -> dict[str, Any]:
        return {"distill": True, "student_width": self.width, "distill_epochs": self.epochs}

    def training_epochs(self) -> int:
        return self.epochs


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y); T^2 keeps the soft
    term's gradients on the same scale as the hard term's whatever T is (Hinton et al., sec. 2)."""
    t = temperature
    hard = F.cross_entropy(student_logits, targets)
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                    reduction="batchmean", log_target=True)
    return alpha * t * t * soft + (1 - alpha) * hard


def takes_width(arch: str) -> bool:
    return "width" in inspect.signature(model_entry(arch).factory).parameters


def architecture(arch: str, data: DataBundle, width: float | None) -> dict[str, Any]:
    """What the packer needs to rebuild the model: create_model(name, **kwargs)."""
    kwargs: dict[str, float] = {"num_classes": data.num_classes, "in_channels": data.in_channels,
                                "image_size": data.image_size}
    if width is not None and takes_width(arch):
        kwargs["width"] = width
    return {"name": arch, "kwargs": kwargs}


def train_config(epochs: int, lr: float, seed: int) -> TrainConfig:
    """One recipe for the student and the dense control, so they differ only in the loss."""
    return TrainConfig(epochs=epochs, lr=lr, seed=seed)


def _fresh(arch: dict[str, Any], seed: int) -> nn.Module:
    seed_everything(seed)  # the student's initial weights depend on the run's seed only
    return create_model(arch["name"], **arch["kwargs"])


@register_step(DistillConfig)
def apply(model: nn.Module, config: DistillConfig, ctx: Context) -> Compressed:
    state = ctx.state
    require_shapes_free(state, "distill")
    data = ctx.need_data("distillation")
    teacher = copy.deepcopy(model).eval()  # eval: dropout off and batch-norm statistics frozen
    teacher.requires_grad_(False)
    arch = architecture(config.student, data, config.width)
    student = _fresh(arch, ctx.seed)
    t, alpha = config.temperature, config.alpha

    def loss_fn(_model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, teacher_logits, y, t, alpha)

    hist = fit(student, data.train, train_config(config.epochs, config.lr, ctx.seed), progress=ctx.progress,
               loss_fn=loss_fn)
    teacher_params, student_params = count_params(model), count_params(student)
    # earlier structural steps described the teacher's layers; kept under "teacher" so that nothing
    # reading the top level (the packer) applies them to the student
    new_state = CompressionState(notes=list(state.notes), info={"teacher": copy.deepcopy(state.info)} if state.info
                                 else {})
    new_state.info["architecture"] = arch
    record(new_state, config, {
        "student": config.student, "width": arch["kwargs"].get("width"), "teacher_params": teacher_params,
        "student_params": student_params, "temperature": t, "alpha": alpha, "epochs": config.epochs,
        "lr": config.lr, "seconds": round(hist.seconds, 3), "final_loss": hist.train_loss[-1],
    })
    if "width" not in arch["kwargs"]:
        new_state.notes.append(f"distill: {config.student} has no width multiplier, so width={config.width} "
                               "was not used")
    if student_params >= teacher_params:
        new_state.notes.append(f"distill: the student has {student_params} parameters, not fewer than the "
                               f"teacher's {teacher_params}: this is not compression")
    return Compressed(student, new_state)


# ---------------------------------------------------------------- seed 004's control


def matched_width(arch: str, target_params: int, num_classes: int, in_channels: int, image_size: int) -> float:
    """Width multiplier in [1/16, 4] whose parameter count is closest to `target_params` (by bisection:
    the count only grows with the width, in steps, as channel counts are rounded)."""
    if not takes_width(arch):
        raise bad_value("arch", arch, [m for m in list_models() if takes_width(m)])
    check_range("target_params", target_params, 1, 10**12, integer=True)

    def params(width: float) -> int:
        with torch.device("meta"):  # shapes only: no memory, no initialisation, even at width 4
            return count_params(create_model(arch, num_classes, in_channels, image_size, width=width))

    lo, hi = WIDTH_RANGE
    p_lo, p_hi = params(lo), params(hi)
    if target_params <= p_lo:
        return lo
    if target_params >= p_hi:
        return hi
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        p_mid = params(mid)
        if p_mid == target_params:
            return mid
        if p_mid < target_params:
            lo, p_lo = mid, p_mid
        else:
            hi, p_hi = mid, p_mid
    return lo if target_params - p_lo <= p_hi - target_params else hi


def train_dense_control(arch: str, target_params: int, data: DataBundle, epochs: int, lr: float, seed: int,
                        progress: Progress | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """`arch` at the width matching `target_params`, trained from scratch on labels only, with the
    same training recipe as a distilled student."""
    width = matched_width(arch, target_params, data.num_classes, data.in_channels, data.image_size)
    spec = architecture(arch, data, width)
    model = _fresh(spec, seed)
    hist = fit(model, data.train, train_config(epochs, lr, seed), progress=progress)
    info = {"architecture": spec, "width": width, "params": count_params(model), "target_params": target_params,
            "epochs": epochs, "lr": lr, "seconds": round(hist.seconds, 3), "final_loss": hist.train_loss[-1]}
    return model, info
