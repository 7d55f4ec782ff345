"""Fashion-MNIST (10,000 test images): the targets on the LeNet-5 baseline at 95% paired confidence, channel
pruning of the residual baseline (ResNet-8) at 25/50/75%, and how long a cold slider move takes on both.

1. size: a packed file at least 40x smaller than the fp32 checkpoint, 95% sure to lose at most 1 point
   (Deep Compression reports 39x for LeNet-5 on the easier MNIST);
2. latency: at least 5x lower than the baseline's own ONNX Runtime fp32 model at batch 256 on one thread
   (the peer a user gets by simply exporting), 95% sure on both the speed-up and the accuracy;
3. ResNet-8 channel pruning: parameters, MACs, latency and top-1 before and after; the pruned model exports
   to ONNX and ONNX Runtime's top-1 matches PyTorch's;
4. a cold slider run (the page's default configuration, fine-tuning included, ONNX export and latency
   included) on each baseline, timed in a fresh cache.

Skipped, with the reason, where the data set is not on this machine.
Run: .venv/bin/python bench/fashion.py   (writes docs/results/fashion.md)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import common as C

from explorer.compress.cluster import ClusterConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe

NAME = "fashion"
DATASET = "fashion-mnist"
SIZE_RF, SPEEDUP, MAX_LOSS = 40.0, 5.0, 1.0
COLD_S = {"lenet5": 60.0, "resnet8": 120.0}


ALL_IMAGES = 60_000  # the target searches fine-tune on the whole training split, not the page's subset
RESNET_IMAGES = 10_000  # ResNet-8 costs 22x LeNet-5's MACs: a stratified sixth of the split, 5 epochs


def recipe(model: str, *steps, finetune_samples: int | None = None) -> Recipe:
    return Recipe(model=model, dataset=DATASET, steps=tuple(steps), finetune_samples=finetune_samples)


def gradual(s: float, epochs: int, lr: float = 1e-3) -> PruneConfig:
    return PruneConfig(sparsity=s, schedule="gradual", finetune_epochs=epochs, lr=lr)


# Deep Compression's order: prune gradually with fine-tuning, then share weights (centroids fine-tuned) or
# quantise; the packed file needs about 94% sparsity at 4 bits to be 40x smaller than LeNet-5's fp32 file
# the milder recipes first, so the table also shows what a user can take home within the point
SIZE_CANDIDATES = [
    (gradual(0.8, 10), ClusterConfig(clusters=16, finetune_epochs=2)),
    (gradual(0.85, 15), ClusterConfig(clusters=16, finetune_epochs=2)),
    (gradual(0.9, 15), ClusterConfig(clusters=16, finetune_epochs=2)),
    (gradual(0.9, 15), QuantizeConfig(bits=4)),
    (gradual(0.93, 20), ClusterConfig(clusters=16, finetune_epochs=2)),
    (gradual(0.95, 25), ClusterConfig(clusters=16, finetune_epochs=2)),
]


def channel(ratio: float, epochs: int, lr: float = 1e-3) -> PruneConfig:
    """The same share of every layer's channels: what a latency target wants (a global ranking may spend the
    ratio on the cheap fully connected layers and leave the convolutions, where the MACs are, nearly whole)."""
    return PruneConfig(granularity="channel", sparsity=ratio, scope="layer", finetune_epochs=epochs, lr=lr)


LATENCY_CANDIDATES = [(0.3, 10), (0.4, 10), (0.5, 10), (0.6, 15), (0.7, 20)]


def size_section(base: dict) -> tuple[str, C.Check, dict]:
    file_b = base["baseline_size"]["file_bytes"]
    rows, best = [], None
    for steps in SIZE_CANDIDATES:
        res = C.run(recipe("lenet5", *steps, finetune_samples=ALL_IMAGES))
        rf = file_b / res["size"]["packed_bytes"]
        sure = C.loses_at_most(res, MAX_LOSS)
        ok = rf >= SIZE_RF and sure == "PASS"
        if sure == "PASS" and (best is None or rf > best[1]):
            best = (res["label"], rf, res)
        rows.append([res["label"], C.top1(res), C.delta(res), sure, f"{res['sparsity']:.1%}",
                     f"{res['size']['packed_bytes']:,}", f"{rf:.1f}x", "yes" if ok else "no"])
        if ok:
            break
    tab = C.table(["recipe", "top-1 (95% CI)", "change, points (paired 95% CI)", "within 1 point",
                   "weight sparsity", "packed B", "RF vs fp32 file", "meets"], rows, "lrrlrrrl")
    if not (best and best[1] >= SIZE_RF):
        tab += ("\n\nWhy it falls short: on Fashion-MNIST, LeNet-5's 61,706 weights have little slack. Past about "
                "90% sparsity each further step costs points that fine-tuning does not win back, and the packed "
                f"file must stay under {file_b / SIZE_RF:,.0f} B for {SIZE_RF:g}x. Deep Compression's 39x was on "
                "MNIST, where LeNet-5 sits near 99% and loses little when pruned hard.")
    check = C.Check(f"lenet5 (Fashion-MNIST): packed >= {SIZE_RF:g}x smaller than the fp32 file, 95% sure of <= "
                    f"{MAX_LOSS:g} point lost", bool(best and best[1] >= SIZE_RF),
                    f"{best[1]:.1f}x ({best[0]}), {C.delta(best[2])}" if best else
                    "no candidate 95% sure within 1 point",
                    f"fp32 file {file_b:,} B; Deep Compression: 39x on MNIST")
    return tab, check, {"rf": round(best[1], 1), "recipe": best[0], "delta": round(best[2]["accuracy_delta"], 2),
                        "delta_ci": best[2]["vs_baseline"]["delta_ci"], "target": SIZE_RF} if best else {}


def latency_section(base: dict) -> tuple[str, C.Check, dict]:
    entries = {"baseline ORT fp32": ("ort", C.artifact(base, "model.onnx")),
               "baseline ORT int8": ("ort", C.artifact(base, "model.int8.onnx"))}
    cands = []
    for ratio, epochs in LATENCY_CANDIDATES:
        for int8 in (False, True):
            steps = [channel(ratio, epochs)] + ([QuantizeConfig(mode="static", bits=8)] if int8 else [])
            res = C.run(recipe("lenet5", *steps, finetune_samples=ALL_IMAGES))
            kind = "int8" if int8 else "fp32"
            key = f"{res['label']} ORT {kind}"
            entries[key] = ("ort", C.artifact(res, f"model{'.int8' if int8 else ''}.onnx"))
            cands.append((key, kind, res))
    h = C.head_to_head(entries, C.batch_input("lenet5"))
    ref = "baseline ORT fp32"
    rows = [["baseline", "ORT fp32", C.top1(base), "", f"{base['macs']:,}", C.ms(h[ref]["median_ms"]), "1.0x", ""],
            ["baseline", "ORT int8", C.pct(base["onnx"]["int8"]["accuracy"]["top1"]), "", f"{base['macs']:,}",
             C.ms(h["baseline ORT int8"]["median_ms"]), C.speedup_text(C.speedup(h, ref, "baseline ORT int8")), ""]]
    best = None
    for key, kind, res in cands:
        sp = C.speedup(h, ref, key)
        engine_top1 = res["onnx"][kind]["accuracy"]["top1"]
        sure = C.loses_at_most(res, MAX_LOSS) == "PASS" and engine_top1 - base["accuracy"]["top1"] >= -MAX_LOSS
        ok = sure and sp["ci"][0] >= SPEEDUP
        if sure and (best is None or sp["ratio"] > best[1]["ratio"]):
            best = (key, sp, res)
        rows.append([res["label"], f"ORT {kind}", f"{C.pct(engine_top1)} (rebuilt model {C.delta(res)})", "",
                     f"{res['macs']:,}", C.ms(h[key]["median_ms"]), C.speedup_text(sp), "yes" if ok else "no"])
    tab = C.table(["recipe", "engine", "top-1 of the engine (change of the model rebuilt from the packed file, "
                   "paired 95% CI)", "", "MACs/image", "batch 256 ms",
                   "speed-up over the baseline's ORT fp32 (95% CI)", "meets"], rows, "llrrrrrl")
    int8 = C.speedup(h, ref, "baseline ORT int8")
    if int8["ci"][1] < 1:
        ops = {}
        for node in C.ort_profile(entries["baseline ORT int8"][1], C.batch_input("lenet5"), runs=5):
            ops[node["op"]] = ops.get(node["op"], 0.0) + node["ms"]
        total = sum(ops.values()) or 1.0
        top = ", ".join(f"{op} {ms / total:.0%}" for op, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:4])
        tab += (f"\n\nWhy int8 does not help here: ONNX Runtime's int8 model of the baseline runs at "
                f"{C.speedup_text(int8)} the speed of its fp32 model on this CPU. Its own profiler splits the int8 "
                f"model's time as {top}: LeNet-5's layers are small (6 and 16 channels), so the work around the "
                "integer arithmetic is not paid back. The speed must come from removing MACs, and LeNet-5 has few "
                "to remove before its accuracy goes.")
    met = bool(best and best[1]["ci"][0] >= SPEEDUP)
    check = C.Check(f"lenet5 (Fashion-MNIST): >= {SPEEDUP:g}x lower latency than its own ONNX Runtime fp32 at batch "
                    f"256, 95% sure, and 95% sure of <= {MAX_LOSS:g} point lost", met,
                    f"{best[0]}: {C.speedup_text(best[1])}" if best else "no candidate 95% sure within 1 point",
                    "one thread, batch 256, timed head to head in interleaved rounds")
    return tab, check, {"speedup": best[1]["ratio"], "speedup_ci": best[1]["ci"], "recipe": best[0],
                        "target": SPEEDUP} if best else {}


def resnet_section() -> tuple[str, list[C.Check]]:
    from explorer.measure.onnx_export import onnx_accuracy

    base = C.run(recipe("resnet8"), label="baseline")
    entries = {"baseline": ("torch", C.unpacked(base))}
    runs = []
    for ratio in (0.25, 0.5, 0.75):
        res = C.run(recipe("resnet8", channel(ratio, 5), finetune_samples=RESNET_IMAGES))
        entries[f"{ratio:.0%}"] = ("torch", C.unpacked(res))
        entries[f"{ratio:.0%} ORT"] = ("ort", C.artifact(res, "model.onnx"))
        runs.append((ratio, res))
    entries["baseline ORT"] = ("ort", C.artifact(base, "model.onnx"))
    h = C.head_to_head(entries, C.batch_input("resnet8"))
    data = C.data_for("resnet8")
    rows = [["baseline", f"{base['params']:,}", f"{base['macs']:,}", C.top1(base), "",
             C.ms(h["baseline"]["median_ms"]), "1.0x", C.ms(h["baseline ORT"]["median_ms"]),
             C.pct(base["onnx"]["fp32"]["accuracy"]["top1"])]]
    checks, agree = [], []
    for ratio, res in runs:
        k = f"{ratio:.0%}"
        ort_top1 = onnx_accuracy(C.artifact(res, "model.onnx"), data.test.x.numpy(), data.test.y.numpy())["top1"]
        agree.append(abs(ort_top1 - res["accuracy"]["top1"]) <= 0.05)
        rows.append([f"channel {k}, 5 epochs on {res['finetune_samples']:,} images", f"{res['params']:,}",
                     f"{res['macs']:,}", C.top1(res), C.delta(res), C.ms(h[k]["median_ms"]),
                     C.speedup_text(C.speedup(h, "baseline", k)), C.ms(h[f"{k} ORT"]["median_ms"]), C.pct(ort_top1)])
    tab = C.table(["ResNet-8", "parameters", "MACs/image", "top-1 (95% CI)", "change (paired 95% CI)",
                   "PyTorch b256 ms", "speed-up (95% CI)", "ORT fp32 b256 ms", "ORT top-1"], rows, "lrrrrrrrr")
    checks.append(C.Check("resnet8: channel-pruned models keep their residual additions consistent and run in ONNX "
                          "Runtime with PyTorch's top-1", all(agree),
                          ", ".join(f"{r:.0%}: ORT {a}" for (r, _), a in zip(runs, agree, strict=True)),
                          "Torch-Pruning's dependency graph prunes the channels meeting at each skip together"))
    checks.append(C.within_check("resnet8 channel 25%", runs[0][1], 1,
                                 f"5 epochs on {runs[0][1]['finetune_samples']:,} images"))
    return tab, checks


def cold_runs() -> tuple[str, list[C.Check], dict]:
    """The page's default configuration (explorer.app.ui.state) on each baseline, in a fresh cache: the data set
    already in memory, as it is in the page's process once a model is open (its load is timed apart)."""
    from explorer.app import service
    from explorer.app.ui import state
    from explorer.models.baselines import baseline_data
    from explorer.run import runner
    from explorer.run.cache import RunCache

    rows, checks, facts = [], [], {}
    cards = {c["name"]: c for c in service.list_baselines()}
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("lenet5", "resnet8"):
            card = cards[f"{model}-{DATASET}"]
            r = state.to_recipe(state.DEFAULTS, card)
            t = time.perf_counter()
            baseline_data(card)
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            res = RunCache(Path(tmp) / model).get_or_run(r)
            total = time.perf_counter() - t
            tm = res["timings"]
            rows.append([model, r.label(), f"{res['finetune_samples']:,}", C.secs(load_s), C.secs(tm["compress"]),
                         C.secs(tm.get("export_and_sizes")), C.secs(tm.get("latency")), C.secs(total),
                         f"{COLD_S[model]:.0f}"])
            note = f"{r.label()}, fine-tuned in one torch thread, scored in {runner.eval_workers()}"
            checks.append(C.Check(f"{model} (Fashion-MNIST): a cold slider run in under {COLD_S[model]:.0f} s on 2 "
                                  "cores", total < COLD_S[model], f"{total:.1f} s", note))
            facts[model] = round(total, 1)
    tab = C.table(["baseline", "configuration (the page's default)", "fine-tuning images", "data load s",
                   "compress + fine-tune s", "export and sizes s", "latency s", "whole run s", "target s"], rows,
                  "llrrrrrrr")
    return tab, checks, facts


def main() -> None:
    from explorer.core.data import available, how_to_get

    if not available(DATASET):
        C.write_section(NAME, "Fashion-MNIST: targets, residual channel pruning, cold runs",
                        f"Not run: Fashion-MNIST is not on this machine ({how_to_get(DATASET)}).")
        return
    base = C.run(recipe("lenet5"), label="baseline", latency=True)
    parts = [f"The Fashion-MNIST baselines: LeNet-5 at {C.top1(base)} and ResNet-8, on the 10,000 test images. "
             "Every top-1 carries its 95% Wilson interval; every change its paired 95% interval on the same "
             "images; a claim that a run loses at most 1 point passes only when the worst end of that interval "
             "does. Speed-ups are the median of per-round ratios from ten interleaved rounds, with their 95% "
             "interval."]
    tab, size_check, size_facts = size_section(base)
    parts += ["### Size: LeNet-5, packed file against the fp32 checkpoint",
              "Fine-tuned on all 60,000 training images (the page uses the card's stratified subset to answer a "
              "slider move in time); the search stops at the first recipe that meets the target.", tab]
    tab, lat_check, lat_facts = latency_section(base)
    parts += ["### Latency: LeNet-5 against its own ONNX Runtime fp32 model, batch 256, one thread",
              "Channel pruning (whole filters, the same share of every layer, through Torch-Pruning's dependency "
              "graph) with fine-tuning on all 60,000 training images, then optionally static int8 in ONNX "
              "Runtime.", tab]
    tab, res_checks = resnet_section()
    parts += ["### ResNet-8: channel pruning at 25, 50 and 75%",
              f"The same share of every layer's channels; ResNet-8 fine-tunes for 5 epochs on a stratified "
              f"{RESNET_IMAGES:,} of the 60,000 training images (recorded in every RunResult as "
              "`finetune_samples` and shown per row); accuracy is on all 10,000 test images.", tab]
    tab, cold_checks, cold = cold_runs()
    parts += ["### A cold slider move", tab]
    checks = [size_check, lat_check, *res_checks, *cold_checks]
    parts += ["### Claims", C.checks_table(checks), C.summary_line(checks)]
    C.write_section(NAME, "Fashion-MNIST: targets at 95% confidence, residual channel pruning, cold runs",
                    "\n\n".join(parts), latency=True, checks=checks,
                    facts={"size": size_facts, "latency": lat_facts, "cold_s": cold,
                           "baseline_top1": round(base["accuracy"]["top1"], 2)})


if __name__ == "__main__":
    main()
