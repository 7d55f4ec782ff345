"""The CUDA latency path, checked on a machine with a GPU (CI has none): every CUDA engine times, speed-ups
come from the same interleaved rounds as on the CPU, a model against itself shows no measurable change,
and a whole run records its CUDA figures. Writes its findings as JSON (argument: the output file)."""

from __future__ import annotations

import json
import sys
import time

import torch

from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.measure.speedup import measure_latency
from explorer.models.baselines import load_baseline
from explorer.run.runner import run_recipe

CUDA = ("torch_cuda_fp32", "torch_cuda_fp16", "torch_cuda_bf16")


def main(out: str) -> int:
    found: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)
                   if torch.cuda.is_available() else None, "checks": []}
    problems = []
    for name in ("digits_cnn-digits", "vgg13-digits"):
        model, card = load_baseline(f"models/{name}.safetensors")
        shape = tuple(card["arch_kwargs"].get("input_shape") or (card["arch_kwargs"]["in_channels"],
                                                                  card["arch_kwargs"]["image_size"],
                                                                  card["arch_kwargs"]["image_size"]))
        t = time.perf_counter()
        lat = measure_latency(model, shape, reference=model, budget_s=0.3, gpu=True)
        row = {"model": name, "seconds": round(time.perf_counter() - t, 2), "engines": {}}
        for engine in CUDA:
            for b in ("b1", "b256"):
                e, s = lat["engines"][engine][b], lat["speedup"].get(engine, {}).get(b)
                row["engines"][f"{engine} {b}"] = {k: e.get(k) for k in ("available", "median_ms", "ci_ms", "reason")} \
                    | {"self_speedup": s}
                if not e.get("available"):
                    problems.append(f"{name} {engine} {b}: {e.get('reason')}")
                elif not s or not s["ci"][0] <= 1.0 <= s["ci"][1]:
                    problems.append(f"{name} {engine} {b}: the model against itself gave {s}")
        found["checks"].append(row)
    res = run_recipe(Recipe(model="vgg13", steps=(PruneConfig(granularity="channel", sparsity=0.5,
                                                              finetune_epochs=0),)))
    found["run"] = {"label": res["label"], "hardware_gpu": res["hardware"]["gpu"],
                    "latency": {e: res["latency"][e] for e in CUDA},
                    "speedup": {e: res["speedup"].get(e) for e in CUDA}}
    for e in CUDA:
        if not res["latency"][e]["b256"].get("available"):
            problems.append(f"run {e}: {res['latency'][e]['b256'].get('reason')}")
    found["problems"] = problems
    with open(out, "w") as f:
        json.dump(found, f, indent=1)
    print(json.dumps({"gpu": found["gpu"], "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check.json"))
