"""The measurement issue's targets on the embedded digits baselines (one thread, batch 256):

1. latency: a recipe at least 8x faster than the fp32 PyTorch eager baseline with at most 1 point of top-1
   lost; its MACs, and how close it runs to the core's int8 MAC throughput;
2. size: a packed artifact at least 50x smaller than the fp32 file with at most 1 point lost;
3. side by side: the baseline quantised directly with ONNX Runtime's quantize_static, so the explorer's int8
   path is seen to be at least as accurate and as fast.

Each target is searched over a small set of recipes per model; every candidate is reported, met or not.

Run: .venv/bin/python bench/targets.py   (writes docs/results/targets.md; runs from the run cache, latency
timed again head to head on every run)
"""

from __future__ import annotations

import common as C

from explorer.compress.cluster import ClusterConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.run.controls import grid_point

NAME = "targets"
SPEEDUP, MAX_LOSS, SIZE_RF = 8.0, 1.0, 50.0
SAME_SPEED = 1.05  # "as fast": within 5%, the spread of repeated medians on this shared machine
MACS_PER_CYCLE = 64  # one 512-bit VPDPBUSD per cycle: 16 lanes x 4 u8*s8 products (Zen 4 runs it as 2 x 256 bit)
# channel-pruning candidates per model: (ratio, fine-tune epochs, lr); ratio = share of channels removed
CHANNEL = {"digits_cnn": ((0.5, 20, 1e-2), (0.6, 20, 1e-2), (0.65, 30, 1e-2), (0.7, 30, 1e-2)),
           "vgg13": ((0.5, 5, 1e-3), (0.6, 5, 1e-3), (0.7, 5, 1e-3), (0.8, 10, 1e-3))}


def size_candidates(model: str) -> list[tuple[str, Recipe]]:
    """Unstructured sparsity (with channel pruning first on the small model) + clustering or k-bit."""
    def g(s, e, lr):
        return PruneConfig(sparsity=s, schedule="gradual", finetune_epochs=e, lr=lr)

    def ch(r, e, lr):
        return PruneConfig(granularity="channel", sparsity=r, finetune_epochs=e, lr=lr)

    if model == "vgg13":
        steps = [(g(0.95, 5, 1e-3), ClusterConfig(clusters=16)), (g(0.97, 5, 1e-3), QuantizeConfig(bits=4)),
                 (g(0.98, 10, 1e-3), QuantizeConfig(bits=4))]
    else:
        steps = [(g(0.95, 20, 1e-2), ClusterConfig(clusters=16)),
                 (ch(0.5, 20, 1e-2), g(0.8, 20, 1e-2), ClusterConfig(clusters=8)),
                 (ch(0.6, 20, 1e-2), g(0.9, 20, 1e-2), ClusterConfig(clusters=4))]
    return [(Recipe(model=model, steps=s).label(), Recipe(model=model, steps=s)) for s in steps]


def channel(model: str, ratio: float, epochs: int, lr: float, int8: bool) -> Recipe:
    steps = [PruneConfig(granularity="channel", sparsity=ratio, finetune_epochs=epochs, lr=lr)]
    if int8:
        steps.append(QuantizeConfig(mode="static", bits=8))
    return Recipe(model=model, steps=tuple(steps))


def clock_ghz() -> float:
    with open("/proc/cpuinfo") as f:
        mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    return (mhz[0] if mhz else 0.0) / 1000


def nchwc(path: str, model: str) -> str:
    """How many convolutions ONNX Runtime runs on its NCHWc direct kernels (node names ending in _nchwc);
    the others fall back to im2col + GEMM (FusedConv), which multiplies the padding too."""
    convs = [r for r in C.ort_profile(path, C.batch_input(model), runs=3) if r["op"] in C.CONV_OPS]
    return f"{sum(r['node'].endswith('_nchwc') for r in convs)}/{len(convs)}"


def latency_target(model: str, base: dict) -> tuple[str, list[C.Check], dict]:
    b_top1 = base["accuracy"]["top1"]
    entries = {"baseline eager fp32": ("torch", C.unpacked(base)),
               "baseline ORT fp32": ("ort", C.artifact(base, "model.onnx")),
               "baseline ORT int8": ("ort", C.artifact(base, "model.int8.onnx"))}
    cands = []  # (label, engine, deployed top-1, result, entry key)
    for ratio, epochs, lr in CHANNEL[model]:
        fp = C.run(channel(model, ratio, epochs, lr, False), latency=True)
        i8 = C.run(channel(model, ratio, epochs, lr, True), latency=True)
        desc = f"channel {ratio:.0%}, {epochs} ep, lr {lr:g}"
        entries[f"{desc} fp32"] = ("ort", C.artifact(fp, "model.onnx"))
        entries[f"{desc} int8"] = ("ort", C.artifact(i8, "model.int8.onnx"))
        cands.append((desc, "ORT fp32", fp["onnx"]["fp32"]["accuracy"]["top1"], fp, f"{desc} fp32"))
        cands.append((f"{desc} -> static int8", "ORT int8", i8["onnx"]["int8"]["accuracy"]["top1"], i8, f"{desc} int8"))
    h = C.head_to_head(entries, C.batch_input(model))
    eager = h["baseline eager fp32"]["median_ms"]
    ref = "baseline eager fp32"
    rows = [["baseline", "PyTorch eager fp32", C.pct(b_top1), C.pts(0), "", f"{base['macs']:,}", "", C.ms(eager),
             "1.0x", ""],
            ["baseline", "ORT fp32", C.pct(base["onnx"]["fp32"]["accuracy"]["top1"]), C.pts(0), "",
             f"{base['macs']:,}", nchwc(C.artifact(base, "model.onnx"), model),
             C.ms(h["baseline ORT fp32"]["median_ms"]), C.speedup_text(C.speedup(h, ref, "baseline ORT fp32")), ""],
            ["baseline", "ORT int8", C.pct(base["onnx"]["int8"]["accuracy"]["top1"]),
             C.pts(base["onnx"]["int8"]["accuracy"]["top1"] - b_top1), "", f"{base['macs']:,}", "",
             C.ms(h["baseline ORT int8"]["median_ms"]), C.speedup_text(C.speedup(h, ref, "baseline ORT int8")), ""]]
    scored = []
    for desc, engine, top1, res, key in cands:
        ms, sp = h[key]["median_ms"], C.speedup(h, ref, key)
        # accuracy: the engine's own top-1 within the point, and the rebuilt model 95% sure within it
        sure = C.loses_at_most(res, MAX_LOSS) == "PASS" and top1 - b_top1 >= -MAX_LOSS
        ok = sp["ci"][0] >= SPEEDUP and sure
        scored.append((desc, engine, top1, res, key, ms, ok, sp, sure))
        blocked = nchwc(C.artifact(res, "model.onnx"), model) if engine == "ORT fp32" else ""
        rows.append([desc, engine, C.pct(top1), C.pts(top1 - b_top1), C.delta(res), f"{res['macs']:,}", blocked,
                     C.ms(ms), C.speedup_text(sp), "yes" if ok else "no"])
    tab = C.table(["recipe", "engine", "top-1 (engine)", "delta (engine)", "delta of the rebuilt model (paired 95% CI)",
                   "MACs/image", "fp32 convs on NCHWc kernels", "batch 256 ms", "speed-up (95% CI)", "meets"],
                  rows, "llrrrrrrrl")
    within = [s for s in scored if s[8]]
    best = min(within, key=lambda s: s[5]) if within else None
    best_i8 = min((s for s in within if s[1] == "ORT int8"), key=lambda s: s[5], default=None)
    best_fp = min((s for s in within if s[1] == "ORT fp32"), key=lambda s: s[5], default=None)
    check = C.Check(f"{model}: 95% sure of >= {SPEEDUP:g}x lower latency than fp32 eager and of <= {MAX_LOSS:g} point "
                    "lost", bool(best and best[6]),
                    f"best 95% sure within 1 point: {best[0]} on {best[1]}, {C.speedup_text(best[7])}" if best else
                    "no candidate is 95% sure within 1 point on this test set",
                    f"fp32 eager baseline {eager:.3f} ms at batch 256")
    return tab, [check], {"best": best, "best_i8": best_i8, "best_fp": best_fp, "eager": eager, "h2h": h}


def throughput(model: str, pick, base: dict) -> tuple[str, float | None]:
    """MACs x 256 / latency of the best int8 candidate against the core's int8 MAC peak, per layer too."""
    if pick is None:
        return f"No int8 candidate on {model} stays within a point.", None
    desc, _, _, res, key, ms = pick[:6]
    ghz = clock_ghz()
    peak = MACS_PER_CYCLE * ghz  # GMAC/s
    model_net = C.unpacked(res)
    work = C.layer_work(model_net, C.input_shape(model))
    dense, valid = sum(w["macs"] for w in work), sum(w["valid_macs"] for w in work)
    rate = dense * 256 / ms / 1e6
    times = C.per_layer_times(C.artifact(res, "model.int8.onnx"), C.batch_input(model), work)
    rows = [[w["layer"], w["in_hw"], f"{w['cin']}->{w['cout']}", f"{w['macs']:,}", C.ms(t),
             "n/a" if not t else f"{w['macs'] * 256 / t / 1e6:.0f}",
             "n/a" if not t else f"{w['macs'] * 256 / t / 1e6 / peak:.0%}"] for w, t in zip(work, times, strict=True)]
    in_layers = sum(t for t in times if t)
    bwork = C.layer_work(C.unpacked(base), C.input_shape(model))
    btimes = C.per_layer_times(C.artifact(base, "model.int8.onnx"), C.batch_input(model), bwork)
    top = max((w["macs"] * 256 / t / 1e6 for w, t in zip(bwork, btimes, strict=True) if t), default=0.0)
    text = (f"Best int8 recipe on {model}: {desc}, {dense:,} MACs per image as the explorer counts them "
            f"({res['macs']:,} in its RunResult; {valid:,} of them on data rather than padding), "
            f"{ms:.3f} ms for a batch of 256: {rate:.1f} GMAC/s. Peak int8 throughput of one core, assumed: "
            f"{MACS_PER_CYCLE} u8 x s8 MACs per cycle (one 512-bit VPDPBUSD per cycle: 16 lanes x 4 products; "
            f"Zen 4 splits it into two 256-bit halves on its two vector multiply pipes, Intel cores with two "
            f"512-bit FMA ports would reach 128) x {ghz:.2f} GHz ('cpu MHz' in /proc/cpuinfo, the nominal clock "
            f"the hypervisor reports; boost can be higher) = {peak:.0f} GMAC/s. The whole model runs at "
            f"{rate / peak:.0%} of that; the conv and gemm kernels take {in_layers:.3f} of the {ms:.3f} ms "
            f"(ONNX Runtime's profiler), the rest is quantise/dequantise, layout transposes, pooling and call "
            "overhead. As a check on the peak estimate, the fastest layer of the unpruned baseline's int8 model "
            f"runs at {top:.0f} GMAC/s ({top / peak:.0%} of it): the clock can run above the nominal one, so read "
            "the percentages as upper bounds. Per layer:")
    tab = C.table(["layer", "input", "channels", "MACs/image", "int8 ms", "GMAC/s", "of peak"], rows, "lllrrrr")
    return text + "\n\n" + tab, (times[0] / ms if times[0] else None)


def size_target(model: str, base: dict) -> tuple[str, list[C.Check], tuple | None]:
    from explorer.artifact.pack import tensor_report

    file_b = base["baseline_size"]["file_bytes"]
    rows, best = [], None
    for label, r in size_candidates(model):
        res = C.run(r)
        packed = res["size"]["packed_bytes"]
        blob = open(C.artifact(res, "model.xpk"), "rb").read()
        payload = sum(int(t["bytes"]) for t in tensor_report(blob))
        rf, delta = file_b / packed, res["accuracy_delta"]
        sure = C.loses_at_most(res, MAX_LOSS) == "PASS"
        ok = rf >= SIZE_RF and sure
        if sure and (best is None or rf > best[1]):
            best = (label, rf, delta, ok)
        rows.append([label, C.top1(res), C.delta(res), f"{res['sparsity']:.1%}", f"{packed:,}",
                     f"{packed - payload:,}", f"{rf:.1f}x", f"{file_b / payload:.1f}x", "yes" if ok else "no"])
    tab = C.table(["recipe", "top-1 (95% CI)", "delta (paired 95% CI)", "weight sparsity", "packed B",
                   "of which header B", "RF vs fp32 file", "RF of the tensor sections alone", "meets"], rows,
                  "lrrrrrrrl")
    budget = file_b / SIZE_RF
    headers = [int(r[5].replace(",", "")) for r in rows]
    if not (best and best[3]):
        tab += (f"\n\n{SIZE_RF:g}x needs at most {budget:,.0f} B. The packed file's header (plain JSON: the "
                "architecture, any layers that changed shape, and each tensor's encoding) takes "
                f"{min(headers):,}-{max(headers):,} B of that here, {min(headers) / budget:.0%} or more of the "
                "whole budget, so on a model this small the tensor sections alone reach the factor (last-but-one "
                "column) while the file does not. A compressed or binary header would close most of the gap.")
    check = C.Check(f"{model}: packed >= {SIZE_RF:g}x smaller than the fp32 file, 95% sure of <= {MAX_LOSS:g} point "
                    "lost", bool(best and best[3]),
                    f"best 95% sure within 1 point: {best[1]:.1f}x ({best[0]})" if best else
                    "no candidate is 95% sure within 1 point on this test set",
                    f"fp32 file {file_b:,} B; Deep Compression: 35x-49x")
    return tab, [check], best


def side_by_side(model: str, base: dict) -> tuple[list[str], C.Check]:
    ours = C.run(grid_point(model, bits=8), latency=True)
    peer, peer_path = C.ort_quantized(model, base, "static")
    h = C.head_to_head({"explorer": ("ort", C.artifact(ours, "model.int8.onnx")),
                        "quantize_static": ("ort", peer_path)}, C.batch_input(model))
    acc_e, acc_p = ours["onnx"]["int8"]["accuracy"]["top1"], peer["top1"]
    ms_e, ms_p = h["explorer"]["median_ms"], h["quantize_static"]["median_ms"]
    sp = C.speedup(h, "quantize_static", "explorer")  # above 1: the explorer's int8 model is faster
    row = [model, C.pct(acc_e), C.pct(acc_p), C.ms(ms_e), C.ms(ms_p), C.speedup_text(sp),
           f"{ours['size']['onnx_int8_bytes']:,}", f"{peer['bytes']:,}"]
    check = C.Check(f"{model}: explorer int8 at least as accurate and as fast as quantize_static",
                    acc_e >= acc_p and sp["ci"][1] >= 1 / SAME_SPEED,
                    f"top-1 {C.pct(acc_e)} vs {C.pct(acc_p)}; {ms_e:.3f} vs {ms_p:.3f} ms, speed ratio "
                    f"{C.speedup_text(sp)}", f"as fast = the interval of the speed ratio reaches {1 / SAME_SPEED:.2f}")
    return row, check


def main() -> None:
    checks: list[C.Check] = []
    facts: dict = {}
    parts = ["Targets on the embedded digits baselines, one thread, batch 256. Latency is timed head to head "
             "(ten interleaved rounds, there and back; speed-ups are the median of per-round ratios with their 95% "
             "interval, re-timed on every run) against the fp32 "
             "PyTorch eager baseline; the accuracy of a latency candidate is that of the engine timed (the ONNX "
             "Runtime model), against the baseline's PyTorch top-1. Channel pruning removes whole filters "
             "through Torch-Pruning's dependency graph, so the model is smaller and dense: fewer MACs, real speed."]
    side_rows, i8_notes, first_share = [], [], {}
    for model in C.MODELS:
        base = C.run(Recipe(model=model), label="baseline", latency=True)
        tab, ch, info = latency_target(model, base)
        checks += ch
        text, first_share[model] = throughput(model, info["best_i8"], base)
        parts += [f"### Latency, {model}", tab, text]
        h = info["h2h"]
        ratio = h["baseline ORT fp32"]["median_ms"] / h["baseline ORT int8"]["median_ms"]
        i8_notes.append(f"{model}: baseline {ratio:.2f}x; " + ", ".join(
            f"best {kind} candidate 95% sure within a point {C.speedup_text(b[7])} ({b[0]})"
            for kind, b in (("fp32", info["best_fp"]), ("int8", info["best_i8"])) if b))
        best = info["best"]
        facts[f"{model}_latency"] = None if best is None else {
            "recipe": best[0], "engine": best[1], "speedup": best[7]["ratio"], "speedup_ci": best[7]["ci"],
            "delta": round(best[2] - base["accuracy"]["top1"], 2)}
        tab, ch, sbest = size_target(model, base)
        checks += ch
        facts[f"{model}_size"] = None if sbest is None else {"recipe": sbest[0], "rf": round(sbest[1], 1),
                                                             "delta": round(sbest[2], 2)}
        parts += [f"### Size, {model}", tab]
        row, check = side_by_side(model, base)
        side_rows.append(row)
        checks.append(check)
    parts.append(
        "### Which engine wins\n\nStatic int8 over fp32 in ONNX Runtime at batch 256 (fp32 time / int8 time), and "
        "the speed-up over fp32 eager of the best candidate within a point on each engine: "
        + "; ".join(i8_notes) + ". On the vgg13 baseline int8 is slower than fp32: on 8x8 inputs its widest "
        "layers run at 2x2 and 1x1, where ONNX Runtime's fp32 convolution (NCHWc direct kernels) skips the taps "
        "on the zero padding and its int8 convolution multiplies every tap as a per-image matrix-vector product "
        "(per-layer profile in the seed 000 section). On vgg13 channel pruning turns that around: most channel "
        "counts it leaves are not multiples of the NCHWc block, so ONNX Runtime runs those fp32 convolutions as "
        "im2col + GEMM (FusedConv; see the NCHWc column), padding included, and the fp32 advantage is gone; the "
        "int8 kernels do not depend on that alignment. The first layer "
        "(one input channel, 9 MACs per output) runs slowly in int8 whatever the pruning: it takes "
        + ", ".join(f"{v:.0%} of the best int8 candidate's time on {m}" for m, v in first_share.items() if v)
        + ", which is what holds digits_cnn's int8 route back. The explorer could keep pruned channel "
        "counts at multiples of 16 (Torch-Pruning's `round_to`) so that both engines keep their fast kernels.")
    parts += ["### Side by side: the explorer's int8 path against ONNX Runtime's quantize_static",
              "The same baseline quantised directly with `onnxruntime.quantization.quantize_static` (default "
              f"arguments, the same {C.CALIBRATION} calibration images) and the explorer's `grid_point(bits=8)` "
              "static int8 model, timed head to head.",
              C.table(["model", "explorer top-1", "quantize_static top-1", "explorer ms", "quantize_static ms",
                       "quantize_static ms / explorer ms (95% CI)", "explorer int8 B", "quantize_static B"], side_rows),
              "### Targets", C.checks_table(checks), C.summary_line(checks)]
    C.write_section(NAME, "Targets: 8x latency, 50x size, and the explorer's int8 against quantize_static",
                    "\n\n".join(parts), latency=True, checks=checks, facts=facts)


if __name__ == "__main__":
    main()
