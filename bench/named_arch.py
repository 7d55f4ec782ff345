"""Every technique on a timm and a torchvision architecture added by name from its weights alone.

Each architecture is built by its library (timm's `create_model`, torchvision's `get_model`, random weights, nothing
downloaded), trained briefly on the digits so that accuracy means something, saved as safetensors and added the
way a user adds theirs (`add-model --arch timm:<name>`). Then every technique runs on it through the run cache, as
the page runs it; a technique that cannot apply says why, in the explorer's own words.

Run: .venv/bin/python bench/named_arch.py   (writes docs/results/named_arch.md)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import common as C

from explorer.compress.bnadapt import BNAdaptConfig
from explorer.compress.cluster import ClusterConfig
from explorer.compress.distill import DistillConfig
from explorer.compress.lowrank import LowRankConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe

NAME = "named_arch"
ARCHS = ("timm:test_resnet", "torchvision:shufflenet_v2_x0_5")
EPOCHS = 15
TECHNIQUES = [
    ("50% unstructured pruning", (PruneConfig(sparsity=0.5),)),
    ("50% channels removed (Torch-Pruning's graph)", (PruneConfig(granularity="channel", sparsity=0.5),)),
    # the page's 2:4 (PruneConfig.from_controls): inner layers, the first convolution sees one grey channel
    ("2:4 semi-structured pruning (inner layers, as the page does)",
     (PruneConfig(granularity="nm", sparsity=0.5, layers="inner"),)),
    ("block pruning 50%", (PruneConfig(granularity="block", sparsity=0.5),)),
    ("int8 weights", (QuantizeConfig(bits=8),)),
    ("int4 weights", (QuantizeConfig(bits=4),)),
    ("int8 weights and activations (static)", (QuantizeConfig(bits=8, activation_bits=8),)),
    ("16 clusters per layer", (ClusterConfig(clusters=16),)),
    ("low-rank 0.25", (LowRankConfig(rank_ratio=0.25),)),
    ("distillation into digits_cnn (half width, 5 epochs)", (DistillConfig(student="digits_cnn", epochs=5),)),
    ("50% unstructured, then BatchNorm adaptation", (PruneConfig(sparsity=0.5), BNAdaptConfig())),
]


def added(arch: str, folder: Path) -> dict:
    """The architecture trained for EPOCHS on the digits, saved as safetensors and added like a user's file."""
    import torch
    from safetensors.torch import save_file

    from explorer.core.data import load_dataset
    from explorer.core.train import TrainConfig, fit, seed_everything
    from explorer.core.zoo import create_model
    from explorer.models import user

    data = load_dataset("digits")
    seed_everything(0)
    model = create_model(arch, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    fit(model, data.train, TrainConfig(epochs=EPOCHS))
    path = folder / f"{arch.replace(':', '_')}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.set_num_threads(C.TORCH_THREADS)
    return user.add_model(path, arch=arch, dataset="digits")  # the same file again: the model added before


def outcome(recipe: Recipe) -> tuple[dict | None, str, bool]:
    """The RunResult, or None, the line that says why the technique did not run, and whether that line is the
    explorer's own refusal (said before any work) rather than a failure inside a library."""
    try:
        res = C.cache().get_or_run(recipe)
    except ValueError as e:
        return None, str(e), True
    hit = bool((res.get("cache") or {}).get("hit"))
    C._stats["hits" if hit else "misses"] += 1
    if res.get("status") != "ok":
        return None, str(res.get("error") or res.get("status")), False
    C.log(f"  {'hit ' if hit else 'ran '} {recipe.model} {recipe.label()}")
    return res, "", False


def main() -> None:
    rows, ran, refused, total = [], 0, 0, 0
    # one folder for the added models across runs: the same weights at the same path read their runs from the cache
    tmp = Path(tempfile.gettempdir()) / "explorer-bench-named-arch"
    tmp.mkdir(exist_ok=True)
    os.environ["EXPLORER_USER_MODELS"] = str(tmp / "user")
    for arch in ARCHS:
        card = added(arch, tmp)
        rows.append([f"**{arch}** as added", C.pct(card["accuracy"]["top1"]), "", "", "",
                     f"{card['params']:,} parameters, {EPOCHS} epochs on the digits"])
        for label, steps in TECHNIQUES:
            res, why, said = outcome(Recipe(model=arch, dataset="digits", checkpoint=card["path"], steps=steps))
            total += 1
            if res is None:
                refused += said
                rows.append([label, "refused, in one line" if said else "failed", "", "", "", why.replace("|", "/")])
                continue
            ran += 1
            lat = ((res.get("latency") or {}).get("onnxruntime_cpu_fp32") or {}).get("b256") or {}
            timed = (f"{C.ms(lat['median_ms'])} ({C.ms(lat['ci_ms'][0])}-{C.ms(lat['ci_ms'][1])})"
                     if lat.get("available") else "not timed")
            rows.append([label, C.top1(res), C.pts(res["accuracy_delta"]), C.nbytes(res["size"]["packed_bytes"]),
                         timed, "ran; ONNX exported" if res["size"].get("onnx_bytes") else "ran; no ONNX export"])
    tab = C.table(["technique", "top-1 (95% interval)", "change, points", "packed file, bytes",
                   "ONNX Runtime fp32, batch 256, ms (95% interval of the median)", "notes"], rows)
    body = ("Two architectures named from their libraries, each added from a safetensors file of its weights "
            "(`add-model --arch timm:test_resnet`, `--arch torchvision:shufflenet_v2_x0_5`; the colour stem of "
            "the torchvision model is built for one channel). Every technique ran through the run cache, as the "
            "page runs it; accuracy is on the 359 test images of the digits, measured on the model rebuilt from "
            "the packed file. Each run's latency is timed on its own, on a machine shared with other work: compare "
            "speed only within a row's interval, and side by side (the page's speed-up) for claims.\n\n"
            "Where a technique cannot apply, the explorer says so in one line before any work. Channel removal on "
            "ShuffleNet is such a limit: its channel shuffle (a reshape that interleaves the channels of two "
            "branches) is what Torch-Pruning's dependency graph cannot follow (Torch-Pruning issue 14, open since "
            "2020), so the graph cannot tell which layers share a channel. 2:4 runs on the inner layers, as the page "
            "asks for it (the first convolution sees the one grey channel: no group of 4), and leaves ShuffleNet's "
            "depthwise convolutions dense, with a note: each of their filters sees one input channel, so there are "
            "no 4 to keep 2 of (NVIDIA's automatic sparsity tool, apex ASP, skips such shapes too). Pruning rows are "
            "one-shot, with no fine-tuning (a recipe's default; the page fine-tunes 2 epochs unless told otherwise), "
            "so 50% channel removal leaves test_resnet at chance: removing a channel equals zeroing the BatchNorms "
            "that feed it (checked on this model, every group of coupled layers), so the right channels go; what is "
            "lost is the channels themselves, in a network whose feature maps are 1x1 from its second stage on for "
            "8x8 digits, ranked by the L1 norm of convolution weights, which BatchNorm makes a weak guide.\n\n" + tab)
    checks = [C.Check("a torchvision and a timm architecture added by name from weights, run through every "
                      "technique: all run, or say why", ran + refused == total,
                      f"{ran} of {total} ran, {refused} refused in one line, {total - ran - refused} failed",
                      "a refusal's reason is in the table")]
    C.write_section(NAME, "Every technique on architectures named from timm and torchvision", body, latency=True,
                    checks=checks, facts={"ran": ran, "refused": refused, "total": total})


if __name__ == "__main__":
    main()
