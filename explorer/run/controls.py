"""The explorer's controls as plain data, and the one function that turns them into a Recipe.

The page's sidebar, its Sweep tab and the command line's sweep grid all build recipes with `build`, so a
bit-width means the same quantisation scheme, the same label and the same cache key everywhere. Controls
that do not apply to a configuration (calibration for weights-only quantisation, the rank ratio while
low-rank is off) are left out of the recipe, so moving them never starts a new run.
"""

from __future__ import annotations

import json
from typing import Any

from explorer.compress.bnadapt import BNAdaptConfig
from explorer.compress.cluster import ClusterConfig
from explorer.compress.distill import DistillConfig
from explorer.compress.lowrank import LowRankConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core.errors import bad_value

BIT_OPTIONS = ["2", "3", "4", "5", "6", "7", "8", "fp16", "bf16", "fp32"]
CLUSTER_OPTIONS = ["off", "2", "4", "8", "16", "32", "64", "128", "256"]
# heads and neurons: a transformer's attention heads or MLP hidden neurons, physically removed (the sparsity is
# their share); for the other granularities the share of weights or channels
GRANULARITIES = ["unstructured", "channel", "block", "nm", "heads", "neurons"]
CRITERIA = ["l1", "l2", "geometric_median"]
SCOPES = ["global", "layer"]
SCHEDULES = ["oneshot", "iterative", "gradual"]
# auto: the usual scheme for the bit-width, static int8 (weights and activations, ONNX Runtime's int8 path)
# at 8 bits and post-training weights-only below; the others as named
QUANT_MODES = ["auto", "ptq", "static", "dynamic", "qat"]
CALIBRATIONS = ["minmax", "percentile", "entropy"]
# weights-only post-training quantisation: 0 keeps per-channel scales; 32/64/128 give each Linear layer a scale
# per row and group of that many inputs (QuantizeConfig.group_size)
GROUP_SIZES = [0, 32, 64, 128]

DEFAULTS: dict[str, Any] = {
    "baseline": "digits_cnn-digits",
    "sparsity": 0.5, "granularity": "unstructured", "criterion": "l1", "scope": "global", "schedule": "oneshot",
    "prune_epochs": 2,
    "bits": "fp32", "quant_mode": "auto", "quant_acts": False, "symmetric": True, "per_channel": True,
    "calibration": "minmax", "qat_epochs": 2, "learn_ranges": True, "group_size": 0,
    "clusters": "off", "cluster_finetune": False,
    "distill": False, "student_width": 0.5, "distill_epochs": 15,
    "lowrank": False, "rank_ratio": 0.25, "bn_adapt": True,
}


def quant_mode(bits: str, mode: str) -> str:
    """The mode a bit-width and the mode control stand for ('auto' resolved)."""
    if mode != "auto":
        return mode
    return "static" if bits == "8" else "ptq"


def relevant(c: dict[str, Any], card: dict | None = None) -> set[str]:
    """The controls that change what a configuration computes; the others are shown disabled, kept out of
    the recipe and out of the share link."""
    keys = {"baseline", "sparsity", "bits", "clusters", "distill", "lowrank"}
    if c["sparsity"] > 0:
        keys |= {"granularity", "criterion", "scope", "schedule", "prune_epochs"}
    if c["bits"] not in ("fp32", "fp16", "bf16"):
        mode = quant_mode(c["bits"], c["quant_mode"])
        keys |= {"quant_mode", "symmetric", "per_channel"}
        if mode in ("ptq", "qat"):
            keys.add("quant_acts")
        if mode == "ptq" and not c["quant_acts"]:
            keys.add("group_size")  # group-wise scales are for weights-only quantisation
        if mode == "static" or (mode in ("ptq", "qat") and c["quant_acts"]):
            keys.add("calibration")  # activation ranges are calibrated; weights-only needs none
        if mode == "qat":
            keys |= {"qat_epochs", "learn_ranges"}
    if c["clusters"] != "off":
        keys.add("cluster_finetune")
    if c["distill"]:
        keys |= {"student_width", "distill_epochs"}
    if c["lowrank"]:
        keys.add("rank_ratio")
    if card is None or card.get("batchnorm"):
        keys.add("bn_adapt")
    return keys


def build(c: dict[str, Any], card: dict, seed: int = 0) -> Recipe:
    """The recipe the controls stand for, in the order the techniques compose: distil -> low-rank -> prune ->
    cluster -> BatchNorm adaptation -> quantise. Invalid combinations raise ValueError from the technique
    configs, repeating the bad value. `card` is the baseline's card (architecture, dataset, name, path, and
    whether it has BatchNorm)."""
    if card.get("format") == "onnx":
        return _onnx_recipe(c, card)
    steps: list[Any] = []
    if c["distill"]:
        steps.append(DistillConfig(student="digits_cnn", width=c["student_width"], epochs=c["distill_epochs"]))
    if c["lowrank"]:
        # the inner layers: factorising the classifier or the first conv costs accuracy for few weights
        steps.append(LowRankConfig(rank_ratio=c["rank_ratio"], layers="inner", finetune_epochs=2))
    if c["sparsity"] > 0:
        g = c["granularity"]
        kw = {"granularity": g, "criterion": c["criterion"], "scope": c["scope"], "schedule": c["schedule"],
              "finetune_epochs": c["prune_epochs"], "sparsity": c["sparsity"]}
        if g == "nm":  # 2:4 fixes the sparsity at one half; the slider only turns it on
            kw.update(sparsity=0.5, layers="inner")
        steps.append(PruneConfig(**kw))
    if c["clusters"] != "off":
        steps.append(ClusterConfig(clusters=int(c["clusters"]), finetune_epochs=1 if c["cluster_finetune"] else 0))
    if c["bn_adapt"] and card.get("batchnorm") and steps and not c["distill"]:  # the student has no BatchNorm
        steps.append(BNAdaptConfig())
    bits = c["bits"]
    if bits in ("fp16", "bf16"):
        steps.append(QuantizeConfig(mode=bits, bits=16))
    elif bits != "fp32":
        mode = quant_mode(bits, c["quant_mode"])
        acts = int(bits) if c["quant_acts"] and mode in ("ptq", "qat") else 0
        calibration = c["calibration"] if mode == "static" or acts else "minmax"
        group = c["group_size"] if mode == "ptq" and not acts else 0
        steps.append(QuantizeConfig(bits=int(bits), mode=mode, activation_bits=acts, symmetric=c["symmetric"],
                                    group_size=group,
                                    per_channel=c["per_channel"], calibration=calibration,
                                    finetune_epochs=c["qat_epochs"] if mode == "qat" else 0,
                                    learn_ranges=c["learn_ranges"] or mode != "qat",
                                    lr=1e-3 if mode == "qat" else 1e-4))
    # the committed baselines sit where Recipe looks by default; others are named by their path
    default = card.get("name") == f"{card['architecture']}-{card['dataset']}"
    return Recipe(model=card["architecture"], dataset=card["dataset"], checkpoint=None if default else card["path"],
                  seed=seed, steps=tuple(steps))


def _onnx_recipe(c: dict[str, Any], card: dict) -> Recipe:
    """An ONNX model takes only ONNX Runtime's int8 quantisation; any other control is refused with the reason."""
    reason = card.get("unsupported_reason", "the model is ONNX")
    used = [name for name, on in (("pruning", c["sparsity"] > 0), ("clustering", c["clusters"] != "off"),
                                  ("distillation", c["distill"]), ("low-rank", c["lowrank"])) if on]
    if used:
        raise ValueError(f"{', '.join(used)} not available for {card['name']}: {reason}. Set sparsity to 0 and "
                         "clusters to off.")
    steps: tuple = ()
    if c["bits"] != "fp32":
        mode = quant_mode(c["bits"], c["quant_mode"])
        if c["bits"] != "8" or mode not in ("static", "dynamic"):
            raise ValueError(f"bits={c['bits']} with mode {mode!r} is not available for {card['name']}: only 8 bits "
                             "with mode static or dynamic (ONNX Runtime's int8) apply to an ONNX model")
        steps = (QuantizeConfig(bits=8, mode=mode, per_channel=c["per_channel"], calibration=c["calibration"]),)
    return Recipe(model="onnx", dataset=card["dataset"], checkpoint=card["path"], seed=0, steps=steps)


def grid_point(model: str, dataset: str = "digits", *, sparsity: float = 0.0, bits: int = 32, clusters: int = 0,
               granularity: str = "unstructured", schedule: str = "oneshot", finetune_epochs: int = 2,
               seed: int = 0, bn_adapt: bool = False, checkpoint: str | None = None,
               quant_mode: str = "auto") -> Recipe:
    """A sweep grid's point as the page's controls: bits 32 = none, 16 = fp16, else that integer bit-width
    in the 'auto' scheme (static int8 at 8 bits, weights-only below); clusters 0 = off."""
    names = {32: "fp32", 16: "fp16"}
    if bits not in (*names, *range(2, 9)):
        raise bad_value("bits", bits, (32, 16, 8, 7, 6, 5, 4, 3, 2))
    c = {**DEFAULTS, "sparsity": sparsity, "bits": names.get(bits, str(bits)), "quant_mode": quant_mode,
         "clusters": "off" if not clusters else str(clusters), "granularity": granularity, "schedule": schedule,
         "prune_epochs": finetune_epochs, "bn_adapt": bn_adapt}
    card = {"architecture": model, "dataset": dataset, "batchnorm": bn_adapt,
            "name": f"{model}-{dataset}" if checkpoint is None else checkpoint, "path": checkpoint}
    return build(c, card, seed=seed)


def from_recipe(recipe: dict, card: dict) -> dict[str, Any] | None:
    """The controls that build `recipe` (JSON form) on this baseline, or None where the sidebar cannot express
    it (a hand-written recipe, another learning rate): checked by building them again."""
    c = {**DEFAULTS, "baseline": card["name"], "sparsity": 0.0, "bn_adapt": False}
    for s in recipe.get("steps", []):
        kind = s.get("kind")
        if kind == "distill":
            c.update(distill=True, student_width=s["width"], distill_epochs=s["epochs"])
        elif kind == "lowrank":
            c.update(lowrank=True, rank_ratio=s["rank_ratio"])
        elif kind == "prune":
            c.update(sparsity=s["sparsity"], granularity=s["granularity"], criterion=s["criterion"],
                     scope=s["scope"], schedule=s["schedule"], prune_epochs=s["finetune_epochs"])
        elif kind == "cluster":
            c.update(clusters=str(s["clusters"]), cluster_finetune=s.get("finetune_epochs", 0) > 0)
        elif kind == "bn_adapt":
            c["bn_adapt"] = True
        elif kind == "quantize":
            mode = s["mode"]
            if mode in ("fp16", "bf16"):
                c["bits"] = mode
            else:
                c.update(bits=str(s["bits"]), quant_mode="auto" if mode == quant_mode(str(s["bits"]), "auto") and not
                         s.get("activation_bits") else mode, quant_acts=bool(s.get("activation_bits")),
                         symmetric=s["symmetric"], per_channel=s["per_channel"], calibration=s["calibration"],
                         qat_epochs=s.get("finetune_epochs") or DEFAULTS["qat_epochs"],
                         learn_ranges=s.get("learn_ranges", True), group_size=s.get("group_size", 0))
        else:
            return None
    if not card.get("batchnorm"):
        c["bn_adapt"] = DEFAULTS["bn_adapt"]  # not shown for a model without BatchNorm; keep the default
    try:
        again = build(c, card, seed=recipe.get("seed", 0)).to_dict()
    except ValueError:
        return None
    same = json.dumps(again["steps"], sort_keys=True) == json.dumps(recipe.get("steps", []), sort_keys=True)
    return c if same else None
