"""Post-training weight quantisation beside a peer: the explorer's round-to-nearest (on its old restricted grid, its
full grid, and its default: each channel on whichever of the two rounds it closer) and its GPTQ, against Brevitas'
round-to-nearest and Brevitas' GPTQ (`brevitas.graph.gptq.gptq_mode`),
on the committed Fashion-MNIST baselines, the same 10,000 test images and the same 1,024 calibration images from the
training split. Each top-1 with its 95% Wilson interval, each method's seconds, and the paired difference of the
explorer's GPTQ against Brevitas' on the same images (Newcombe's interval, exact McNemar).

Brevitas stays out of requirements.txt: install it into its own environment that sees the project's packages, so
that torch is not installed twice, then run this script with that environment's python:
  python3.11 -m venv /tmp/peers
  echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/peers/lib/python3.11/site-packages/explorer-base.pth
  /tmp/peers/bin/pip install -r bench/requirements-peers.txt
  /tmp/peers/bin/python bench/peers_ptq.py            # writes docs/results/peers_ptq.md (+ .json)
PEERS_PTQ_MODELS=lenet5,resnet8 narrows the models (default: lenet5, resnet8 and vit where their baselines exist).
"""

from __future__ import annotations

import copy
import os
import time

import common as C
import numpy as np

from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe

NAME = "peers_ptq"
CALIBRATION = 1024  # the peers used 1,024 training images; the explorer draws the same ones (seed 0)
# (label, bits, activation bits, layers); ViT's are its Linear layers only, as the issue measured them
SETTINGS = {
    "lenet5": [("W4", 4, 0, "all"), ("W3", 3, 0, "all"), ("W2", 2, 0, "all"), ("W4A8", 4, 8, "all")],
    "resnet8": [("W4", 4, 0, "all"), ("W3", 3, 0, "all"), ("W2", 2, 0, "all"), ("W4A8", 4, 8, "all")],
    "vit": [("W2 Linear", 2, 0, "linear"), ("W3 Linear", 3, 0, "linear")],
}
C.DATASET.update({m: "fashion-mnist" for m in SETTINGS})
# the targets: (model, setting, what, threshold in %, or points below fp32 when `within`)
TARGETS = [("lenet5", "W3", 90.4, False), ("lenet5", "W2", 77.5, False), ("resnet8", "W3", 91.4, False),
           ("resnet8", "W4A8", 0.6, True), ("vit", "W2 Linear", 87.3, False)]
GPTQ_SECONDS_TARGET = 30.0  # GPTQ on ResNet-8, per setting


# ---------------------------------------------------------------- the explorer's rows: its own Recipe -> RunResult


def ours(model: str, bits: int, acts: int, layers: str, seed: int = 0, **kw) -> dict:
    """The explorer's RunResult (accuracy measured on the model rebuilt from the packed file), untimed: this bench
    compares accuracy and compression seconds, not latency."""
    step = QuantizeConfig(bits=bits, activation_bits=acts, layers=layers, calibration_samples=CALIBRATION, **kw)
    recipe = Recipe(model=model, dataset=C.dataset(model), steps=(step,), seed=seed)
    t = time.perf_counter()
    res = C.cache().get_or_run(recipe, latency=False)
    C.log(f"  {time.perf_counter() - t:6.1f}s  {model:<8} {step.label()} {kw}")
    if res.get("status") != "ok":
        raise SystemExit(f"run failed: {model} {step.label()}: {res.get('error')}")
    path = C.cache().artifact_path(res["key"], "predictions.npy")
    if path is None:
        raise SystemExit(f"the cache entry {res['key']} has no predictions")
    report = res["compression"]["quantize"][-1]
    return {"top1": res["accuracy"]["top1"], "ci": res["accuracy_ci"]["top1"], "pred": np.load(path),
            "seconds": (report.get("gptq") or {}).get("seconds", report["seconds"]),
            "step_seconds": report["seconds"], "baseline": res["baseline_accuracy"]["top1"], "grid": report["grid"]}


# ---------------------------------------------------------------- Brevitas


def _subset(model: str) -> int | None:
    from explorer.run.runner import finetune_samples

    return finetune_samples(Recipe(model=model, dataset=C.dataset(model)))


def calibration_images(model: str, seed: int = 0):
    """The calibration images the explorer's run of a recipe with this seed draws: its training split as the runner
    gives it to the steps (the card's stratified subset of a large data set), then 1,024 of them."""
    return C.data_for(model).with_train_subset(_subset(model), seed).calibration(CALIBRATION, seed=seed)


def _brevitas_layers(model, bits: int, acts: int, layers: str):
    """A copy of the model with each chosen Conv2d/Linear swapped for Brevitas' QuantConv2d/QuantLinear: per-channel
    signed weights of `bits` bits (Brevitas' default narrow range, scale max|w| / (2^(b-1) - 1)), and with `acts`
    an 8-bit asymmetric per-tensor quantiser on each layer's input (Brevitas' ShiftedUint8ActPerTensorFloat, the
    counterpart of the explorer's asymmetric activation ranges), floats everywhere else. The weight scales are
    parameters initialised from the weights' statistics, as Brevitas' own PTQ examples build them for GPTQ: with
    scales recomputed from each call's weights (Int8WeightPerChannelFloat as it ships), GPTQ's one-column slices
    get a scale of their own and come back unrounded, so Brevitas' GPTQ changed nothing (brevitas 0.13.4)."""
    import brevitas.nn as qnn
    from brevitas.core.scaling import ParameterFromStatsFromParameterScaling
    from brevitas.quant import Int8WeightPerChannelFloat, ShiftedUint8ActPerTensorFloat
    from torch import nn

    from explorer.compress.base import compressible

    m = copy.deepcopy(model).eval()
    act = {"input_quant": ShiftedUint8ActPerTensorFloat, "input_bit_width": acts} if acts else {}
    for name, mod in compressible(m, layers):
        owner, _, attr = name.rpartition(".")
        parent = m.get_submodule(owner) if owner else m
        weights = Int8WeightPerChannelFloat.let(scaling_impl=ParameterFromStatsFromParameterScaling)
        common = {"bias": mod.bias is not None, "weight_quant": weights, "weight_bit_width": bits,
                  "return_quant_tensor": False, **act}
        if isinstance(mod, nn.Conv2d):
            q = qnn.QuantConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride,
                                padding=mod.padding, dilation=mod.dilation, groups=mod.groups, **common)
        else:
            q = qnn.QuantLinear(mod.in_features, mod.out_features, **common)
        q.load_state_dict(mod.state_dict(), strict=False)
        setattr(parent, attr, q.eval())
    return m


def brevitas_rows(model: str, bits: int, acts: int, layers: str, seed: int = 0) -> dict:
    """Brevitas' round-to-nearest and GPTQ (act_order on, as the explorer's default; 1% dampening, its default),
    from the same calibration images; predictions on the test split."""
    import brevitas
    import torch

    from explorer.core.train import evaluate
    from explorer.models.baselines import baseline_path, load_baseline

    def make(folder):
        from brevitas.graph.calibrate import calibration_mode
        from brevitas.graph.gptq import gptq_mode

        base, _ = load_baseline(baseline_path(model, C.dataset(model)))
        data = C.data_for(model)
        x = calibration_images(model, seed)
        batches = [x[i:i + 256] for i in range(0, len(x), 256)]
        out = {}
        for method in ("rtn", "gptq"):
            t = time.perf_counter()
            m = _brevitas_layers(base, bits, acts, layers)
            with torch.no_grad():
                m(batches[0])  # the weight scales are set from the weights on the first call
                if acts:
                    with calibration_mode(m):
                        for b in batches:
                            m(b)
                if method == "gptq":
                    with gptq_mode(m, act_order=True, use_quant_activations=bool(acts)) as g:
                        for _ in range(g.num_layers):
                            for b in batches:
                                g.model(b)
                            g.update()
            seconds = time.perf_counter() - t
            acc = evaluate(m, data.test, with_predictions=True)
            np.save(folder / f"{method}.npy", np.asarray(acc["pred"]))
            out[method] = {"top1": acc["top1"], "seconds": round(seconds, 2)}
        return out

    params = {"model": model, "bits": bits, "acts": acts, "layers": layers, "calibration": CALIBRATION,
              "subset": _subset(model), "seed": seed,
              "brevitas": brevitas.__version__, "torch": torch.__version__, "threads": C.TORCH_THREADS,
              "baseline": C.sha_of(baseline_path(model, C.dataset(model))), "v": 3}
    res, folder = C.memo("peer-brevitas-ptq", params, make)
    return {k: {**v, "pred": np.load(folder / f"{k}.npy")} for k, v in res.items()}


# ---------------------------------------------------------------- the table


def _wilson(top1: float, n: int) -> tuple[float, float]:
    from explorer.core.stats import wilson

    return wilson(round(top1 * n / 100), n)


def cell(top1: float, ci, seconds: float | None = None) -> str:
    s = f"{top1:.2f}% ({ci[0]:.2f}-{ci[1]:.2f})"
    return s if seconds is None else f"{s}, {seconds:.1f} s"


def model_section(model: str) -> tuple[str, dict]:
    from explorer.core.stats import vs_baseline

    data = C.data_for(model)
    y, n = data.test.y.numpy(), len(data.test)
    rows, figures = [], {}
    fp32 = None
    for label, bits, acts, layers in SETTINGS[model]:
        old = ours(model, bits, acts, layers, grid="restricted")
        full = ours(model, bits, acts, layers, grid="full")
        rtn = ours(model, bits, acts, layers)  # the default: each channel on the grid that rounds it closer
        gptq = ours(model, bits, acts, layers, rounding="gptq")
        peer = brevitas_rows(model, bits, acts, layers)
        fp32 = gptq["baseline"]
        for r in peer.values():
            r["ci"] = _wilson(r["top1"], n)
        paired = vs_baseline(peer["gptq"]["pred"], gptq["pred"], y)  # ours minus Brevitas', same images
        same = vs_baseline(peer["rtn"]["pred"], old["pred"], y)
        lo, hi = paired["delta_ci"]
        rows.append([label, cell(old["top1"], old["ci"]), cell(full["top1"], full["ci"]),
                     cell(rtn["top1"], rtn["ci"], rtn["step_seconds"]),
                     cell(gptq["top1"], gptq["ci"], gptq["seconds"]),
                     cell(peer["rtn"]["top1"], peer["rtn"]["ci"], peer["rtn"]["seconds"]),
                     cell(peer["gptq"]["top1"], peer["gptq"]["ci"], peer["gptq"]["seconds"]),
                     f"{gptq['top1'] - peer['gptq']['top1']:+.2f} ({lo:+.2f} to {hi:+.2f}), p={paired['p_value']:.3g}",
                     f"{same['baseline_only'] + same['run_only']}"])
        figures[label] = {"ours_rtn_restricted": old["top1"], "ours_rtn_full": full["top1"], "ours_rtn": rtn["top1"],
                          "ours_gptq": gptq["top1"],
                          "ours_gptq_ci": gptq["ci"], "ours_gptq_s": gptq["seconds"],
                          "brevitas_rtn": peer["rtn"]["top1"],
                          "brevitas_gptq": peer["gptq"]["top1"], "brevitas_gptq_s": peer["gptq"]["seconds"],
                          "paired_ci": [lo, hi], "fp32": fp32}
    ci = _wilson(fp32, n)
    head = (f"### {model} (fp32 {cell(fp32, ci)}, {n:,} test images)\n\n")
    tab = C.table(["setting", "ours RTN, restricted grid (before)", "ours RTN, full grid",
                   "ours RTN, closer grid per channel (default)", "ours GPTQ", "Brevitas RTN", "Brevitas GPTQ",
                   "ours GPTQ - Brevitas GPTQ, points (paired 95%)",
                   "images where our old RTN and Brevitas RTN disagree"], rows, "lrrrrrrrr")
    return head + tab, figures


def spread(model: str, label: str, seeds: range) -> tuple[str, dict]:
    """One setting again with other draws of the 1,024 calibration images (the recipe's seed), the explorer's GPTQ and
    Brevitas' on the same images each time: how much of a gap to a target is the draw's."""
    from explorer.core.stats import vs_baseline

    _, bits, acts, layers = next(s for s in SETTINGS[model] if s[0] == label)
    y = C.data_for(model).test.y.numpy()
    rows, ours_all, theirs_all = [], [], []
    for seed in seeds:
        mine = ours(model, bits, acts, layers, seed=seed, rounding="gptq")
        peer = brevitas_rows(model, bits, acts, layers, seed=seed)["gptq"]
        lo, hi = vs_baseline(peer["pred"], mine["pred"], y)["delta_ci"]
        ours_all.append(mine["top1"])
        theirs_all.append(peer["top1"])
        rows.append([str(seed), cell(mine["top1"], mine["ci"], mine["seconds"]),
                     cell(peer["top1"], _wilson(peer["top1"], len(y)), peer["seconds"]),
                     f"{mine['top1'] - peer['top1']:+.2f} ({lo:+.2f} to {hi:+.2f})"])
    rows.append(["mean", f"{np.mean(ours_all):.2f}% (range {min(ours_all):.2f}-{max(ours_all):.2f})",
                 f"{np.mean(theirs_all):.2f}% (range {min(theirs_all):.2f}-{max(theirs_all):.2f})",
                 f"{np.mean(ours_all) - np.mean(theirs_all):+.2f}"])
    tab = C.table(["calibration draw (seed)", "ours GPTQ", "Brevitas GPTQ", "ours - Brevitas, points (paired 95%)"],
                  rows, "lrrr")
    return (f"### {model} {label}: other draws of the calibration images\n\n{tab}",
            {"ours": ours_all, "brevitas": theirs_all})


def targets(figures: dict) -> list[C.Check]:
    out = []
    for model, setting, value, within in TARGETS:
        f = figures.get(model, {}).get(setting)
        if f is None:
            out.append(C.Check(f"{model} {setting}", False, "not measured", "its baseline is not on this machine"))
            continue
        lo, hi = f["ours_gptq_ci"]
        goal = f["fp32"] - value if within else value
        claim = (f"{model} {setting} GPTQ within {value} points of fp32 ({goal:.2f}%)" if within
                 else f"{model} {setting} GPTQ >= {value}%")
        passed = f["ours_gptq"] >= goal
        verdict = "PASS" if lo >= goal else "FAIL" if hi < goal else ("PASS (interval straddles)" if passed else
                                                                   "FAIL (interval straddles)")
        out.append(C.Check(claim, passed, f"{f['ours_gptq']:.2f}% ({lo:.2f}-{hi:.2f})",
                           f"Brevitas GPTQ {f['brevitas_gptq']:.2f}%", verdict))
    r = figures.get("resnet8", {})
    if r:
        worst = max(f["ours_gptq_s"] for f in r.values())
        out.append(C.Check(f"GPTQ on ResNet-8 under {GPTQ_SECONDS_TARGET:.0f} s", worst < GPTQ_SECONDS_TARGET,
                           f"at most {worst:.1f} s", f"{C.TORCH_THREADS} torch thread(s)"))
    return out


def main() -> None:
    import importlib.util

    if importlib.util.find_spec("brevitas") is None:
        raise SystemExit("peers_ptq needs Brevitas, which this python lacks: see bench/requirements-peers.txt")
    from explorer.core.data import available
    from explorer.models.baselines import baseline_path

    wanted = os.environ.get("PEERS_PTQ_MODELS", ",".join(SETTINGS)).split(",")
    models = [m for m in wanted if available(C.dataset(m)) and baseline_path(m, C.dataset(m)).is_file()]
    parts = ["The explorer's post-training quantisation beside Brevitas' on the same baselines "
             f"(`models/*-fashion-mnist.safetensors`), the same test images and the same {CALIBRATION:,} calibration "
             "images from the training split (seed 0), no fine-tuning. Weights per output channel, symmetric; W4A8 "
             "adds 8-bit asymmetric per-tensor activations at every quantised layer's input (the explorer: min-max "
             "ranges; Brevitas: its ShiftedUint8ActPerTensorFloat, percentile ranges). The explorer's rows are its "
             "own RunResults (accuracy of the model rebuilt from the packed file); GPTQ is "
             "`{\"rounding\": \"gptq\"}` with its defaults (activation order, 1% dampening). Brevitas "
             f"{_brevitas_version()}: QuantConv2d/QuantLinear with Int8WeightPerChannelFloat at the given bit "
             "width (its narrow range: the restricted grid), then `gptq_mode(act_order=True)`, layer by layer. "
             "Each top-1 with its 95% Wilson interval; seconds are those of the rounding (GPTQ: the GPTQ pass; RTN: "
             f"the whole quantisation step; Brevitas: its calibration and GPTQ) with {C.TORCH_THREADS} torch "
             "thread(s) on a machine shared with other work. The paired column is the explorer's GPTQ minus "
             "Brevitas' on the same images (Newcombe's interval, exact McNemar p); the last column counts the test "
             "images on which the explorer's old round-to-nearest and Brevitas' disagree (0: the same model). Run "
             "with a python that has Brevitas (the script's docstring: a separate environment that sees the "
             "project's packages), not the project's own."]
    figures = {}
    for model in models:
        text, figures[model] = model_section(model)
        parts.append(text)
    if "resnet8" in figures:  # the setting whose target is closest to the draw-to-draw spread
        text, figures["resnet8 W3 spread"] = spread("resnet8", "W3", range(5))
        parts.append(text)
    checks = targets(figures)
    parts.append("### The issue's targets\n\n" + C.checks_table(checks))
    C.write_section(NAME, "Post-training quantisation beside Brevitas: round-to-nearest and GPTQ", "\n\n".join(parts),
                    checks=checks, facts=figures)


def _brevitas_version() -> str:
    import brevitas

    return brevitas.__version__


if __name__ == "__main__":
    main()
