"""Quantisation: fp16/bf16, uniform k-bit (2-8) post-training quantisation of weights and optionally
activations, static int8 with calibration, dynamic int8, quantisation-aware training with a
straight-through estimator, and mixed precision chosen from measured per-layer sensitivity.

The PyTorch model keeps float tensors whose values sit exactly on the integer grid (fake
quantisation): its accuracy is the quantised model's accuracy, and the packed format stores the
integer codes. The int8 modes also record the ONNX Runtime path (`state.deploy`) that the
measurement step exports, so int8 gets real bytes and real speed, not only simulated accuracy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from explorer.compress import gptq, qmath
from explorer.compress.base import (
    Compressed,
    CompressionState,
    Context,
    QuantRecord,
    clone,
    codebook_weight,
    compressible,
    finetune,
    record,
    register_step,
)
from explorer.compress.mixed import choose_bits
from explorer.compress.quantize_config import CALIBRATIONS, MODES, QuantizeConfig  # noqa: F401

# ---------------------------------------------------------------- activations

PreHook = Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]  # a forward pre-hook that replaces the inputs


def _act_hook(lo: float, hi: float, bits: int, dynamic: bool) -> PreHook:
    scale, zp = qmath.qparams(torch.tensor([lo]), torch.tensor([hi]), bits, symmetric=False)

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if dynamic:  # ranges measured on each input at run time, as dynamic quantisation does
            s, z = qmath.qparams(x.detach().min().reshape(1), x.detach().max().reshape(1), bits, symmetric=False)
        else:
            s, z = scale, zp
        return (qmath.fake_quantize(x, s, z, bits, symmetric=False), *args[1:])

    hook.explorer_act_quant = True  # type: ignore[attr-defined]  # the marker remove_activation_quant looks for
    return hook


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _LearnedActQuant(nn.Module):
    """An activation range [lo, hi] learned during QAT, as LSQ and LSQ+ learn step sizes (Esser et al.
    2020, Bhalgat et al. 2020): the forward pass is exactly the deployed asymmetric quantiser of that
    range (qmath.qparams: the range spans zero, the zero point is rounded); rounding passes gradients
    straight through, so the range learns from the loss how much reach to trade for resolution, where a
    calibrated min-max range keeps every outlier at any cost. Each bound is learned in log space,
    lo0 * exp(GAIN * u): Adam moves a parameter by about lr per step whatever its scale, and ranges run
    from 1 to 20 here, so the gain turns lr=1e-3 into relative moves of a few percent per step."""

    GAIN = 30.0

    def __init__(self, lo: float, hi: float, bits: int):
        super().__init__()
        self.lo0, self.hi0 = min(float(lo), 0.0), max(float(hi), 0.0)
        self.u, self.v = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
        self.qmax = 2 ** bits - 1

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo0 * torch.exp(self.GAIN * self.u), self.hi0 * torch.exp(self.GAIN * self.v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds()
        s = torch.clamp((hi - lo) / self.qmax, min=1e-8)
        z = torch.clamp(_round_ste(-lo / s), 0, self.qmax)
        return (torch.clamp(_round_ste(x / s) + z, 0, self.qmax) - z) * s

    def range(self) -> list[float]:
        lo, hi = self.bounds()
        return [lo.item(), hi.item()]


def _attach_learned(model: nn.Module, spec: dict[str, Any]) -> dict[str, _LearnedActQuant]:
    """Learnable quantisers on the inputs of the spec's layers, as submodules (so the optimiser sees them)."""
    quantisers: dict[str, _LearnedActQuant] = {}
    for name, (lo, hi) in spec["ranges"].items():
        layer = model.get_submodule(name)
        q = quantisers[name] = _LearnedActQuant(lo, hi, spec["bits"])
        layer.explorer_act_quant = q

        def hook(module: nn.Module, args: tuple[Any, ...], _q: _LearnedActQuant = q) -> tuple[Any, ...]:
            return (_q(args[0]), *args[1:])

        hook.explorer_act_quant = True  # type: ignore[attr-defined]  # the marker remove_activation_quant looks for
        layer.register_forward_pre_hook(hook)
    return quantisers


def _detach_learned(model: nn.Module, quantisers: dict[str, _LearnedActQuant]) -> dict[str, Any]:
    """The learned ranges; the quantiser submodules go (their hooks go with remove_activation_quant)."""
    for name in quantisers:
        del model.get_submodule(name).explorer_act_quant
    return {name: q.range() for name, q in quantisers.items()}


def remove_activation_quant(model: nn.Module) -> nn.Module:
    for mod in model.modules():
        for key, fn in list(mod._forward_pre_hooks.items()):
            if getattr(fn, "explorer_act_quant", False):
                del mod._forward_pre_hooks[key]
    return model


def attach_activation_quant(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    """Quantise the input of each listed layer: fixed calibrated ranges, or per-input ranges when dynamic.
    `spec` is plain data (it travels in the packed file): bits, dynamic, ranges {layer: [lo, hi]}."""
    remove_activation_quant(model)
    if not spec:
        return model
    for name, (lo, hi) in spec["ranges"].items():
        model.get_submodule(name).register_forward_pre_hook(_act_hook(lo, hi, spec["bits"], spec["dynamic"]))
    return model


@torch.no_grad()
def collect_inputs(model: nn.Module, names: list[str], x: torch.Tensor, per_layer_cap: int = 500_000
                   ) -> dict[str, torch.Tensor]:
    """The inputs each named layer sees on x (subsampled past `per_layer_cap` values)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles: list[RemovableHandle] = []
    for n in names:
        def grab(mod: nn.Module, args: tuple[Any, ...], _n: str = n) -> None:
            seen[_n].append(args[0].detach().reshape(-1))
        handles.append(model.get_submodule(n).register_forward_pre_hook(grab, prepend=True))
    model.eval()
    try:
        for i in range(0, len(x), 256):
            model(x[i:i + 256])
    finally:
        for h in handles:
            h.remove()
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for n, parts in seen.items():
        v = torch.cat(parts)
        out[n] = v[torch.randperm(v.numel(), generator=g)[:per_layer_cap]] if v.numel() > per_layer_cap else v
    return out


def calibrate(model: nn.Module, names: list[str], x: torch.Tensor, cfg: QuantizeConfig) -> dict[str, Any]:
    inputs = collect_inputs(model, names, x)
    ranges = {n: list(qmath.calibrated_range(v, cfg.calibration, cfg.percentile, cfg.act_bits))
              for n, v in inputs.items()}
    return {"bits": cfg.act_bits, "dynamic": cfg.mode == "dynamic", "ranges": ranges,
            "method": cfg.calibration, "samples": len(x)}


# ---------------------------------------------------------------- weights


def quantize_weights(model: nn.Module, names: list[str], bits: dict[str, int] | int, cfg: QuantizeConfig,
                     state: CompressionState, rounder: gptq.Rounder | None = None) -> None:
    """Snap each weight onto its grid in place, in the layers' order, and record how (QuantRecord): rounded to
    nearest, or by `rounder` (GPTQ), which sees the model with the weights before this one already snapped. A
    clustered weight keeps its codebook: the centroids are quantised (per tensor), so it keeps at most k distinct
    values."""
    on = cfg.weight_grid or "restricted"  # restricted, full or closest (qmath.GRID_KINDS)
    with torch.no_grad():
        for name in names:
            b = bits[name] if isinstance(bits, dict) else bits
            p = model.get_parameter(name)
            qmin, qmax = qmath.qrange(b, cfg.symmetric)
            keep = state.masks.get(name)
            cb = state.codebooks.get(name)
            # a Linear weight's scales per row and group of inputs (a clustered weight's: one for its centroids)
            group = cfg.group_size if cfg.group_size and p.dim() == 2 and cb is None else 0
            if cb is not None:
                scale, zp, axis = qmath.weight_qparams(cb.centroids, b, cfg.symmetric, per_channel=False, grid=on)
                codes = qmath.quantize(cb.centroids, scale, zp, b, cfg.symmetric)
                cb.centroids.copy_(qmath.dequantize(codes, scale, zp))
                p.copy_(codebook_weight(cb, keep))
            elif group:
                scale, zp = qmath.group_qparams(p, b, cfg.symmetric, group, on)
                grid = (qmath.expand_groups(scale, p.shape[1], group), qmath.expand_groups(zp, p.shape[1], group))
                codes = rounder(name, grid, qmin, qmax, keep) if rounder else \
                    qmath.quantize_groups(p, scale, zp, b, cfg.symmetric, group)
                p.copy_(qmath.dequantize_groups(codes, scale, zp, group))
                axis = 0
            else:
                scale, zp, axis = qmath.weight_qparams(p, b, cfg.symmetric, cfg.per_channel, on)
                rows = p.shape[0] if axis == 0 else 1
                codes = rounder(name, (scale.reshape(rows, 1), zp.reshape(rows, 1)), qmin, qmax, keep) if rounder \
                    else qmath.quantize(p, scale, zp, b, cfg.symmetric, axis)
                p.copy_(qmath.dequantize(codes, scale, zp, axis))
            state.quant[name] = QuantRecord(b, cfg.symmetric, axis, scale.clone(), zp.clone(), group_size=group)


class _FakeQuantWeight(nn.Module):
    """Parametrization for QAT: the forward pass sees the quantised weight, the gradient flows straight
    through to the float weight (STE)."""

    def __init__(self, bits: int, symmetric: bool, per_channel: bool, grid: str):
        super().__init__()
        self.bits, self.symmetric, self.per_channel, self.grid = bits, symmetric, per_channel, grid

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale, zp, axis = qmath.weight_qparams(w, self.bits, self.symmetric, self.per_channel, self.grid)
        return qmath.fake_quantize(w, scale, zp, self.bits, self.symmetric, axis)


def _layer_names(model: nn.Module, cfg: QuantizeConfig) -> tuple[list[str], list[str]]:
    mods = compressible(model, cfg.layers)
    if not mods:
        raise ValueError(f"layers={cfg.layers!r} selects no Conv2d or Linear layer in this model")
    return [n for n, _ in mods], [f"{n}.weight" for n, _ in mods]


def _qat(model: nn.Module, layers: list[str], cfg: QuantizeConfig, ctx: Context) -> dict[str, Any]:
    for n in layers:
        parametrize.register_parametrization(model.get_submodule(n), "weight",
                                             _FakeQuantWeight(cfg.bits, cfg.symmetric, cfg.per_channel,
                                                              cfg.weight_grid or "restricted"))
    try:
        report = finetune(model, ctx, cfg.finetune_epochs, cfg.lr, "quantisation-aware training")
    finally:
        for n in layers:  # keep the float weights; quantize_weights snaps them onto the grid next
            parametrize.remove_parametrizations(model.get_submodule(n), "weight", leave_parametrized=False)
    return report


# ---------------------------------------------------------------- one handler per mode

ModeHandler = Callable[[nn.Module, QuantizeConfig, Context, dict[str, Any]], None]  # quantises the model in place
_MODES: dict[str, ModeHandler] = {}


def _handles(*modes: str) -> Callable[[ModeHandler], ModeHandler]:
    def deco(fn: ModeHandler) -> ModeHandler:
        for m in modes:
            _MODES[m] = fn
        return fn
    return deco


def _calibration(cfg: QuantizeConfig, ctx: Context) -> torch.Tensor:
    data = ctx.need_data("activation quantisation (calibration samples)" if cfg.rounding == "nearest" else
                         "GPTQ (calibration images for each layer's inputs)")
    return data.calibration(min(cfg.calibration_samples, len(data.train)), seed=ctx.seed)


def _fix_activations(model: nn.Module, spec: dict[str, Any] | None, bits: dict[str, int], ctx: Context,
                     info: dict[str, Any]) -> None:
    """What every integer mode ends with: the activation ranges fixed into the model and the state."""
    ctx.state.activations = spec
    attach_activation_quant(model, spec)
    info["layer_bits"] = dict(bits)


@_handles("fp16", "bf16")
def _half(model: nn.Module, cfg: QuantizeConfig, ctx: Context, info: dict[str, Any]) -> None:
    """Every float tensor rounded to half precision (stored in 16 bits, computed in fp32 here)."""
    dtype = torch.float16 if cfg.mode == "fp16" else torch.bfloat16
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(t.to(dtype).float())
                ctx.state.float_format[k] = cfg.mode
    ctx.state.notes.append(f"{cfg.mode} halves the stored weights; compute stays fp32 on a CPU without native "
                           f"{cfg.mode} kernels, so CPU latency does not drop: what a format saves depends on the "
                           "hardware.")


@_handles("ptq")
def _ptq(model: nn.Module, cfg: QuantizeConfig, ctx: Context, info: dict[str, Any]) -> None:
    """Post-training: activation ranges calibrated on the float model, then every weight onto its k-bit grid."""
    layers, weights = _layer_names(model, cfg)
    bits = {w: cfg.bits for w in weights}
    calib = _calibration(cfg, ctx) if cfg.act_bits or cfg.rounding == "gptq" else None
    spec = calibrate(model, layers, calib, cfg) if cfg.act_bits and calib is not None else None
    rounder = None
    if cfg.rounding == "gptq" and calib is not None:
        attach_activation_quant(model, spec)  # GPTQ fits the weights to the inputs the deployed layers see
        rounder = gptq.Rounder(model, calib, cfg.gptq_damp, cfg.act_order)
    quantize_weights(model, weights, bits, cfg, ctx.state, rounder)
    if rounder is not None:
        info["gptq"] = rounder.report()
    _fix_activations(model, spec, bits, ctx, info)


@_handles("mixed")
def _mixed(model: nn.Module, cfg: QuantizeConfig, ctx: Context, info: dict[str, Any]) -> None:
    """Post-training with per-layer bit-widths chosen from measured sensitivity under the bits budget."""
    layers, weights = _layer_names(model, cfg)
    bits, info["sensitivity"] = choose_bits(model, weights, cfg, ctx)
    spec = calibrate(model, layers, _calibration(cfg, ctx), cfg) if cfg.act_bits else None
    quantize_weights(model, weights, bits, cfg, ctx.state)
    _fix_activations(model, spec, bits, ctx, info)


@_handles("static", "dynamic")
def _int8(model: nn.Module, cfg: QuantizeConfig, ctx: Context, info: dict[str, Any]) -> None:
    """Post-training int8, and the ONNX Runtime integer model to deploy it as (`state.deploy`)."""
    _ptq(model, cfg, ctx, info)
    state = ctx.state
    chosen = {n for n, _ in compressible(model, cfg.layers)}
    state.deploy = cfg.deploy(keep_float=[n for n, _ in compressible(model, "all") if n not in chosen])
    if cfg.mode == "static" and cfg.per_channel and not cfg.symmetric:
        state.notes.append("The int8 ONNX model's weights are symmetric although the recipe asks for asymmetric: "
                           "ONNX Runtime quantises per-channel weights symmetrically (its integer convolutions "
                           "take one zero point); the PyTorch figures use the asymmetric grid.")
    if state.deploy.keep_float:
        state.notes.append(f"The int8 ONNX model keeps {', '.join(state.deploy.keep_float)} in fp32, as the "
                           f"recipe's layers={cfg.layers!r} asks.")
    if cfg.mode == "dynamic":
        state.notes.append("Dynamic int8 quantises activations at run time; for convolutions ONNX Runtime uses "
                           "ConvInteger, which is often slower than fp32 on x86 CPUs.")


@_handles("qat")
def _qat_mode(model: nn.Module, cfg: QuantizeConfig, ctx: Context, info: dict[str, Any]) -> None:
    """Quantisation-aware training: fine-tuned with the quantised weights (and activations) in the forward
    pass, activation ranges learned with the weights unless `learn_ranges` is off."""
    layers, weights = _layer_names(model, cfg)
    bits = {w: cfg.bits for w in weights}
    calib = _calibration(cfg, ctx) if cfg.act_bits else None
    spec = calibrate(model, layers, calib, cfg) if calib is not None else None
    learned = cfg.learn_ranges and spec is not None
    quantisers: dict[str, _LearnedActQuant] = {}
    if learned and spec is not None:  # (learned says spec is there; the type checker reads only this)
        quantisers = _attach_learned(model, spec)
    else:
        attach_activation_quant(model, spec)
    info["finetune"] = _qat(model, layers, cfg, ctx)
    if learned and spec is not None:
        spec = {**spec, "ranges": _detach_learned(model, quantisers), "method": "learned (LSQ+)"}
    remove_activation_quant(model)
    quantize_weights(model, weights, bits, cfg, ctx.state)
    if spec and not learned and calib is not None:  # (a spec is there only with calibration images)
        # ranges move during training: calibrate again, on the weights as deployed (on the grid), not
        # on the float weights training kept (at 2 bits most of those become zero)
        spec = calibrate(model, layers, calib, cfg)
    _fix_activations(model, spec, bits, ctx, info)


@register_step(QuantizeConfig)
def apply(model: nn.Module, cfg: QuantizeConfig, ctx: Context) -> Compressed:
    t0 = time.perf_counter()
    model = clone(model).eval()
    state = ctx.state.copy()
    ctx = dataclasses.replace(ctx, state=state)
    info: dict[str, Any] = {"mode": cfg.mode, "bits": cfg.bits, "activation_bits": cfg.act_bits,
                            "rounding": cfg.rounding, "grid": cfg.weight_grid or None}
    _MODES[cfg.mode](model, cfg, ctx, info)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    record(state, cfg, info)
    return Compressed(model, state)
