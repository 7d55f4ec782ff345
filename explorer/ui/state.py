"""The page's controls as plain data: defaults, the Recipe they stand for, and the URL query string that
mirrors them so a view can be shared and reopened exactly. Pure functions, no Streamlit."""

from __future__ import annotations

from typing import Any

from explorer.recipe import Recipe

BIT_OPTIONS = ["2", "3", "4", "5", "6", "7", "8", "fp16", "bf16", "fp32"]
CLUSTER_OPTIONS = ["off", "2", "4", "8", "16", "32", "64", "128", "256"]
GRANULARITIES = ["unstructured", "channel", "block", "nm"]
CRITERIA = ["l1", "l2", "geometric_median"]
SCOPES = ["global", "layer"]
SCHEDULES = ["oneshot", "iterative", "gradual"]
QUANT_MODES = ["ptq", "static", "dynamic", "qat"]
CALIBRATIONS = ["minmax", "percentile", "entropy"]

DEFAULTS: dict[str, Any] = {
    "baseline": "digits_cnn-digits",
    "sparsity": 0.5, "granularity": "unstructured", "criterion": "l1", "scope": "global", "schedule": "oneshot",
    "prune_epochs": 2,
    "bits": "fp32", "quant_mode": "ptq", "quant_acts": False, "symmetric": True, "per_channel": True,
    "calibration": "minmax", "qat_epochs": 2, "learn_ranges": True,
    "clusters": "off", "cluster_finetune": False,
    "distill": False, "student_width": 0.5, "distill_epochs": 15,
    "lowrank": False, "rank_ratio": 0.25, "bn_adapt": True,
}

_TYPES = {k: type(v) for k, v in DEFAULTS.items()}
_CHOICES = {"bits": BIT_OPTIONS, "clusters": CLUSTER_OPTIONS, "granularity": GRANULARITIES, "criterion": CRITERIA,
            "scope": SCOPES, "schedule": SCHEDULES, "quant_mode": QUANT_MODES, "calibration": CALIBRATIONS}
_RANGES = {"sparsity": (0.0, 0.99), "prune_epochs": (0, 50), "qat_epochs": (1, 50), "student_width": (0.125, 1.0),
           "distill_epochs": (1, 100), "rank_ratio": (0.05, 1.0)}


def parse_query(params: dict[str, str], baselines: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Controls from a query string; values that do not parse or are out of range are dropped (and
    reported) so a stale link still opens, on the defaults for those controls."""
    out, problems = {}, []
    for key, raw in params.items():
        if key not in DEFAULTS:
            continue
        kind = _TYPES[key]
        try:
            if kind is bool:
                if raw not in ("0", "1", "true", "false"):
                    raise ValueError
                val: Any = raw in ("1", "true")
            elif kind is int:
                val = int(raw)
            elif kind is float:
                val = float(raw)
            else:
                val = str(raw)
        except ValueError:
            problems.append(f"{key}={raw!r} is not a {kind.__name__}")
            continue
        if key in _CHOICES and val not in _CHOICES[key]:
            problems.append(f"{key}={raw!r} must be one of: {', '.join(_CHOICES[key])}")
            continue
        if key == "baseline" and val not in baselines:
            problems.append(f"baseline={raw!r} must be one of: {', '.join(baselines)}")
            continue
        if key in _RANGES and not (_RANGES[key][0] <= val <= _RANGES[key][1]):
            problems.append(f"{key}={raw!r} must be in [{_RANGES[key][0]}, {_RANGES[key][1]}]")
            continue
        out[key] = val
    return out, problems


def to_query(controls: dict[str, Any]) -> dict[str, str]:
    """The baseline, and what differs from the defaults, so links stay short and open the same model on
    every machine (the default model depends on which data sets a machine has)."""
    q = {}
    for k, v in controls.items():
        if k in DEFAULTS and (v != DEFAULTS[k] or k == "baseline"):
            q[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    return q


def to_recipe(c: dict[str, Any], card: dict) -> Recipe:
    """The recipe the controls stand for: distil -> low-rank -> prune -> cluster -> BatchNorm adaptation ->
    quantise. Invalid combinations raise ValueError from the technique configs, which the page shows as
    an error."""
    from explorer.compress.bnadapt import BNAdaptConfig
    from explorer.compress.cluster import ClusterConfig
    from explorer.compress.distill import DistillConfig
    from explorer.compress.lowrank import LowRankConfig
    from explorer.compress.prune import PruneConfig
    from explorer.compress.quantize import QuantizeConfig

    if card.get("format") == "onnx":
        return _onnx_recipe(c, card)
    steps: list[Any] = []
    if c["distill"]:
        steps.append(DistillConfig(student="digits_cnn", width=c["student_width"], epochs=c["distill_epochs"]))
    if c["lowrank"]:
        # the inner layers: factorising the 10-class head or the first conv costs accuracy for few weights
        steps.append(LowRankConfig(rank_ratio=c["rank_ratio"], layers="inner", finetune_epochs=2))
    if c["sparsity"] > 0:
        g = c["granularity"]
        kw = {"granularity": g, "criterion": c["criterion"], "scope": c["scope"], "schedule": c["schedule"],
              "finetune_epochs": c["prune_epochs"], "sparsity": c["sparsity"]}
        if g == "nm":
            kw["layers"] = "inner"
        steps.append(PruneConfig(**kw))
    if c["clusters"] != "off":
        steps.append(ClusterConfig(clusters=int(c["clusters"]), finetune_epochs=1 if c["cluster_finetune"] else 0))
    if c["bn_adapt"] and card.get("batchnorm") and steps and not c["distill"]:  # the student has no BatchNorm
        steps.append(BNAdaptConfig())
    bits = c["bits"]
    if bits in ("fp16", "bf16"):
        steps.append(QuantizeConfig(mode=bits, bits=16))
    elif bits != "fp32":
        mode = c["quant_mode"]
        acts = int(bits) if c["quant_acts"] else 0
        steps.append(QuantizeConfig(bits=int(bits), mode=mode, activation_bits=acts, symmetric=c["symmetric"],
                                    per_channel=c["per_channel"], calibration=c["calibration"],
                                    finetune_epochs=c["qat_epochs"] if mode == "qat" else 0,
                                    learn_ranges=c["learn_ranges"] or mode != "qat",
                                    lr=1e-3 if mode == "qat" else 1e-4))
    # the committed baselines sit where Recipe looks by default; others are named by their path
    default = card.get("name") == f"{card['architecture']}-{card['dataset']}"
    return Recipe(model=card["architecture"], dataset=card["dataset"], checkpoint=None if default else card["path"],
                  seed=0, steps=tuple(steps))


def _onnx_recipe(c: dict[str, Any], card: dict) -> Recipe:
    """An ONNX model takes only ONNX Runtime's int8 quantisation; any other control is refused with the reason."""
    from explorer.compress.quantize import QuantizeConfig

    reason = card.get("unsupported_reason", "the model is ONNX")
    used = [name for name, on in (("pruning", c["sparsity"] > 0), ("clustering", c["clusters"] != "off"),
                                  ("distillation", c["distill"]), ("low-rank", c["lowrank"])) if on]
    if used:
        raise ValueError(f"{', '.join(used)} not available for {card['name']}: {reason}. Set sparsity to 0 and "
                         "clusters to off.")
    steps: tuple = ()
    if c["bits"] != "fp32":
        if c["bits"] != "8" or c["quant_mode"] not in ("static", "dynamic"):
            raise ValueError(f"bits={c['bits']} with mode {c['quant_mode']!r} is not available for {card['name']}: "
                             "only 8 bits with mode static or dynamic (ONNX Runtime's int8) apply to an ONNX model")
        steps = (QuantizeConfig(bits=8, mode=c["quant_mode"], per_channel=c["per_channel"],
                                calibration=c["calibration"]),)
    return Recipe(model="onnx", dataset=card["dataset"], checkpoint=card["path"], seed=0, steps=steps)
