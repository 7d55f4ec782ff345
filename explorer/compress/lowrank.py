"""Low-rank factorisation: truncated SVD of Linear layers and of Conv2d kernels reshaped to matrices.

Unlike unstructured pruning this is real compression: each factorised layer becomes two smaller dense
layers (a rank-r projection, then a 1x1 / Linear expansion), so parameters, file size and dense
latency all shrink. A layer whose factors would not be smaller than the original is left alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from explorer.compress.base import (
    LAYER_CHOICES,
    MAX_STEP_EPOCHS,
    Card,
    Compressed,
    Context,
    Control,
    Controls,
    Layer,
    StepConfig,
    clone,
    compressible,
    finetune,
    record,
    register_step,
    require_shapes_free,
)
from explorer.core.errors import bad_value, check_choice, check_range


@dataclass(frozen=True)
class LowRankConfig(StepConfig):
    kind: ClassVar[str] = "lowrank"
    one_record: ClassVar[bool] = True
    page_order: ClassVar[int] = 20
    section: ClassVar[tuple[int, str, bool]] = (4, "Distillation and low-rank", False)

    rank_ratio: float = 0.25  # kept rank = max(1, round(rank_ratio * full rank))
    energy: float = 0.0  # > 0: smallest rank keeping this fraction of sum(s^2); replaces rank_ratio
    layers: str = "linear"
    finetune_epochs: int = 0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        r = self.rank_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:  # also rejects NaN
            raise bad_value("rank_ratio", r, "a number in (0, 1]")
        check_range("energy", self.energy, 0.0, 1.0)
        check_choice("layers", self.layers, LAYER_CHOICES)
        check_range("finetune_epochs", self.finetune_epochs, 0, MAX_STEP_EPOCHS, integer=True)
        check_range("lr", self.lr, 1e-7, 10.0)

    def structural(self) -> bool:
        return True  # each factorised layer becomes two smaller ones

    def label(self) -> str:
        return f"low-rank {self.energy:.0%} energy" if self.energy else f"low-rank {self.rank_ratio:g}"

    def words(self) -> str:
        return (f"low-rank factorisation keeping {self.energy:.0%} of the energy" if self.energy else
                f"low-rank factorisation at {self.rank_ratio:g} of the rank")

    @classmethod
    def controls(cls) -> tuple[Control, ...]:
        return (Control("lowrank", False, off=False, label="Low-rank (SVD) of the inner layers"),
                Control("rank_ratio", 0.25, lo=0.05, hi=1.0, step=0.05, enabled=lambda c, card: bool(c["lowrank"]),
                        label="Rank ratio", slider=True))

    @classmethod
    def from_controls(cls, controls: Controls, card: Card, before: tuple[StepConfig, ...]) -> LowRankConfig | None:
        if not controls["lowrank"]:
            return None
        # the inner layers: factorising the classifier or the first conv costs accuracy for few weights
        return cls(rank_ratio=controls["rank_ratio"], layers="inner", finetune_epochs=2)

    def to_controls(self) -> dict[str, Any]:
        return {"lowrank": True, "rank_ratio": self.rank_ratio}

    def training_epochs(self) -> int:
        return self.finetune_epochs


# ---------------------------------------------------------------- maths on plain tensors


def svd_factors(w2d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with w2d ~= B @ A, A (rank, in), B (out, rank); sqrt(s) goes to each side so both factors
    have similar scales (better conditioned for fine-tuning and for later quantisation)."""
    if w2d.ndim != 2:
        raise ValueError(f"svd_factors needs a 2-D matrix, got shape {tuple(w2d.shape)}")
    full = min(w2d.shape)
    check_range("rank", rank, 1, full, integer=True)
    # float64: at full rank the product must reproduce the weight to well within float32 rounding
    u, s, vh = torch.linalg.svd(w2d.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = root[:, None] * vh[:rank]
    b = u[:, :rank] * root[None, :]
    return a.to(w2d.dtype), b.to(w2d.dtype)


def energy_kept(singular_values: torch.Tensor, rank: int) -> float:
    s2 = singular_values.double().pow(2)
    total = s2.sum().item()
    return 1.0 if total == 0 else s2[:rank].sum().item() / total


def choose_rank(singular_values: torch.Tensor, rank_ratio: float, energy: float = 0.0) -> int:
    """Rank to keep for these singular values (sorted descending, as torch.linalg.svdvals gives them)."""
    full = int(singular_values.numel())
    if full == 0:
        raise ValueError("choose_rank needs at least one singular value")
    if energy > 0:
        s2 = singular_values.double().pow(2)
        total = s2.sum()
        if total == 0:  # an all-zero weight carries no energy: one component is as good as all
            return 1
        cum = torch.cumsum(s2, 0) / total
        # cum[-1] may round to just under 1.0, so clamp: asking for all the energy means full rank
        return min(full, int(torch.searchsorted(cum, torch.tensor([energy], dtype=cum.dtype)).item()) + 1)
    return min(full, max(1, int(round(rank_ratio * full))))


# ---------------------------------------------------------------- module surgery


class Factorized(nn.Sequential):
    """A layer replaced by two: a rank-r projection without bias, then the expansion with the original
    bias. Plain torch layers, so ONNX export, quantisation and pruning see ordinary Linear/Conv2d."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__(first, second)

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_features if isinstance(first, nn.Linear) else cast(nn.Conv2d, first).out_channels

    @classmethod
    def shaped_like(cls, layer: Layer, rank: int) -> Factorized:
        """Uninitialised factors for `layer` at `rank` (also what a packer needs to rebuild the model)."""
        w = layer.weight
        kw: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
        has_bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            return cls(nn.Linear(layer.in_features, rank, bias=False, **kw),
                       nn.Linear(rank, layer.out_features, bias=has_bias, **kw))
        if isinstance(layer, nn.Conv2d) and layer.groups == 1:
            # torch types a convolution's sizes tuple[int, ...] and Conv2d's arguments tuple[int, int]
            first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride,  # type: ignore[arg-type]
                              padding=layer.padding, dilation=layer.dilation,  # type: ignore[arg-type]
                              bias=False, padding_mode=layer.padding_mode, **kw)
            return cls(first, nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias, **kw))
        raise ValueError(f"cannot factorise {type(layer).__name__} with groups={getattr(layer, 'groups', None)}")

    @classmethod
    def from_layer(cls, layer: Layer, rank: int) -> Factorized:
        out = cls.shaped_like(layer, rank)
        first, second = cast(Layer, out[0]), cast(Layer, out[1])  # shaped_like makes two of the layer's kind
        w = layer.weight.detach()
        a, b = svd_factors(w.reshape(w.shape[0], -1), rank)
        with torch.no_grad():
            first.weight.copy_(a.reshape(first.weight.shape))
            second.weight.copy_(b.reshape(second.weight.shape))
            if layer.bias is not None:
                assert second.bias is not None  # shaped_like gives the second factor the layer's bias
                second.bias.copy_(layer.bias.detach())
        return out


def factorized_params(layer: Layer, rank: int) -> int:
    w = layer.weight
    bias = 0 if layer.bias is None else layer.bias.numel()
    return rank * (w[0].numel() + w.shape[0]) + bias


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `name` (e.g. "features.3") by setting it on its parent."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def restructure(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """A copy of `model` with the layers in `ranks` replaced by empty factors of those ranks, so a
    state_dict saved after `apply` loads into it strictly (the packer's rebuild step)."""
    out = clone(model)
    for name, rank in ranks.items():
        # a name the low-rank step recorded is a Conv2d or Linear; anything else is refused by shaped_like
        set_module(out, name, Factorized.shaped_like(cast(Layer, out.get_submodule(name)), rank))
    return out


def _describe(layer: Layer) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}->{layer.out_features}"
    return (f"Conv2d {layer.in_channels}->{layer.out_channels} "
            f"{'x'.join(str(k) for k in layer.kernel_size)} groups={layer.groups}")


@register_step(LowRankConfig)
def apply(model: nn.Module, config: LowRankConfig, ctx: Context) -> Compressed:
    state = ctx.state
    require_shapes_free(state, "lowrank")
    new_state = state.copy()
    out = clone(model)
    inside = {f"{n}.{c}" for n, m in out.named_modules() if isinstance(m, Factorized) for c in ("0", "1")}
    records, skipped = [], []
    for name, layer in compressible(out, config.layers):
        if name in inside:  # factorising a factor again would stack ever thinner layers; say so instead
            skipped.append({"name": name, "reason": "already a low-rank factor"})
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            reason = f"grouped/depthwise conv (groups={layer.groups}) has no single matrix to factorise"
            skipped.append({"name": name, "reason": reason})
            new_state.notes.append(f"lowrank: kept {name} ({_describe(layer)}) unchanged: {reason}")
            continue
        w = layer.weight.detach()
        w2d = w.reshape(w.shape[0], -1)
        s = torch.linalg.svdvals(w2d.double())
        rank = choose_rank(s, config.rank_ratio, config.energy)
        before = sum(p.numel() for p in layer.parameters())
        after = factorized_params(layer, rank)
        if after >= before:
            reason = (f"rank {rank} of {len(s)} would need {after} parameters vs {before} now "
                      f"(factorising saves only when rank < {math.ceil(w2d.numel() / sum(w2d.shape))})")
            skipped.append({"name": name, "reason": reason})
            new_state.notes.append(f"lowrank: kept {name} ({_describe(layer)}) unchanged: {reason}")
            continue
        set_module(out, name, Factorized.from_layer(layer, rank))
        records.append({"name": name, "layer": _describe(layer), "full_rank": len(s), "rank": rank,
                        "energy_kept": round(energy_kept(s, rank), 6), "params_before": before,
                        "params_after": after})
    if not records:
        new_state.notes.append(f"lowrank: no {config.layers!r} layer got smaller, so the model is unchanged")
    info = {"config": dataclasses.asdict(config), "layers": records, "skipped": skipped,
            "ranks": {r["name"]: r["rank"] for r in records},
            "params_before": sum(p.numel() for p in model.parameters()),
            "params_after": sum(p.numel() for p in out.parameters())}
    record(new_state, config, info)
    info["finetune"] = finetune(out, dataclasses.replace(ctx, state=new_state), config.finetune_epochs, config.lr,
                                "low-rank factorisation")
    return Compressed(out.train(model.training), new_state)
