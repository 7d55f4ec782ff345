"""BatchNorm adaptation on vgg13-digits: one-shot techniques without fine-tuning, with and without
re-measuring the BatchNorm statistics afterwards, and what one fine-tuning epoch gives instead.

Run: .venv/bin/python bench/bnadapt.py   (writes docs/results/bnadapt.md; every figure from the run cache)
"""

from __future__ import annotations

import common as C

from explorer.compress.bnadapt import BNAdaptConfig
from explorer.compress.cluster import ClusterConfig
from explorer.compress.lowrank import LowRankConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe

NAME = "bnadapt"
MODEL = "vgg13"
# one-shot, no fine-tuning: (label, the step, the same step with one fine-tuning epoch)
TECHNIQUES = [
    ("2:4 semi-structured (inner layers)", PruneConfig(granularity="nm", sparsity=0.5, layers="inner"),
     PruneConfig(granularity="nm", sparsity=0.5, layers="inner", finetune_epochs=1)),
    ("50% unstructured, per layer (inner)", PruneConfig(sparsity=0.5, scope="layer", layers="inner"),
     PruneConfig(sparsity=0.5, scope="layer", layers="inner", finetune_epochs=1)),
    ("80% unstructured, global", PruneConfig(sparsity=0.8), PruneConfig(sparsity=0.8, finetune_epochs=1)),
    ("50% channels (filters removed)", PruneConfig(granularity="channel", sparsity=0.5),
     PruneConfig(granularity="channel", sparsity=0.5, finetune_epochs=1)),
    ("low-rank 0.25 (inner layers)", LowRankConfig(rank_ratio=0.25, layers="inner"),
     LowRankConfig(rank_ratio=0.25, layers="inner", finetune_epochs=1)),
    ("8 clusters per layer", ClusterConfig(clusters=8), ClusterConfig(clusters=8, finetune_epochs=1)),
]


def main() -> None:
    base = C.baseline(MODEL)["accuracy"]["top1"]
    rows, gains, worst_adapted = [], [], 0.0
    for label, step, tuned in TECHNIQUES:
        plain = C.run(Recipe(model=MODEL, steps=(step,)))
        adapted = C.run(Recipe(model=MODEL, steps=(step, BNAdaptConfig())))
        finetuned = C.run(Recipe(model=MODEL, steps=(tuned,)))
        seconds = adapted["timings"]["steps"][-1]["seconds"]
        gains.append(adapted["accuracy"]["top1"] - plain["accuracy"]["top1"])
        worst_adapted = min(worst_adapted, adapted["accuracy_delta"])
        rows.append([label, C.pct(plain["accuracy"]["top1"]), C.pct(adapted["accuracy"]["top1"]),
                     C.pts(adapted["accuracy_delta"]), C.secs(seconds), C.pct(finetuned["accuracy"]["top1"]),
                     C.secs(C.compress_seconds(finetuned))])
    tab = C.table(["one-shot technique", "top-1", "+ BN adaptation", "delta vs baseline", "adaptation s",
                   "+ 1 fine-tuning epoch instead", "fine-tuning s"], rows)
    body = (f"vgg13-digits (baseline top-1 {C.pct(base)}) has a BatchNorm layer after every convolution. A "
            "one-shot technique without fine-tuning changes what each convolution outputs while every BatchNorm "
            "layer goes on normalising with the statistics it saw before; BatchNorm adaptation "
            "(`{\"kind\": \"bn_adapt\"}`, NNCF's default first step) re-measures them on 1,024 training images in "
            "forward passes, changing no weight. Accuracy is the model rebuilt from the packed file; the "
            "last two columns are the alternative, one epoch of fine-tuning (which re-learns the statistics "
            "too). digits_cnn has no BatchNorm, so there the step changes nothing.\n\n" + tab)
    checks = [C.Check("vgg13: BatchNorm adaptation never lowers one-shot top-1", min(gains) >= 0,
                      f"gains {min(gains):+.2f} to {max(gains):+.2f} points", "adapted minus plain"),
              ]
    C.write_section(NAME, "BatchNorm adaptation after one-shot compression (vgg13)", body, checks=checks,
                    facts={"worst_adapted_delta": round(worst_adapted, 2), "best_gain": round(max(gains), 2)})


if __name__ == "__main__":
    main()
