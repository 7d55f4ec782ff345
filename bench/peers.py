"""Peers on the same models: ONNX Runtime's quantize_static and quantize_dynamic applied directly to the
exported fp32 baseline, and torch.nn.utils.prune global magnitude pruning with the same fine-tuning, beside
the explorer's own rows: accuracy, size and latency on the same test split with the same timing code.

Run: .venv/bin/python bench/peers.py   (writes docs/results/peers.md; explorer rows from the run cache, peer
artifacts kept in the bench cache, every latency timed again head to head on each run)
"""

from __future__ import annotations

import common as C

from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.run.controls import grid_point

NAME = "peers"
SPARSITY = (0.5, 0.9)
FINETUNE_EPOCHS, FINETUNE_LR = 2, 1e-3  # the explorer's default grid point: PruneConfig's lr, 2 epochs
EXPLORER_STATIC = ("explorer", "static int8 (`grid_point(bits=8)`)")
PEER_STATIC = ("onnxruntime", "`quantize_static` defaults")


def torch_pruned(model: str, sparsity: float) -> tuple[dict, str]:
    """torch.nn.utils.prune.global_unstructured (L1) over every conv and linear weight, then
    explorer.core.train.fit with the TrainConfig the explorer's fine-tuning uses, then prune.remove."""
    import copy

    import torch
    import torch.nn.utils.prune as tprune
    from torch import nn

    from explorer.core.train import TrainConfig, evaluate, fit
    from explorer.measure.size import gzip_file, write_checkpoint
    from explorer.models.baselines import baseline_path, load_baseline

    def make(folder):
        base_model, _ = load_baseline(baseline_path(model, C.dataset(model)))
        m = copy.deepcopy(base_model)
        data = C.data_for(model)
        params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
        fit(m, data.train, TrainConfig(epochs=FINETUNE_EPOCHS, lr=FINETUNE_LR, seed=0, weight_decay=0.0))
        for mod, name in params:
            tprune.remove(mod, name)
        m.eval()
        file_bytes = write_checkpoint(m, folder / "peer.safetensors")
        neg = sum(int(((mod.weight == 0) & torch.signbit(mod.weight)).sum()) for mod, _ in params)
        return {"top1": evaluate(m, data.test)["top1"], "file_bytes": file_bytes, "negative_zeros": neg,
                "gzip_bytes": gzip_file(folder / "peer.safetensors", folder / "peer.safetensors.gz")}

    params = {"model": model, "sparsity": sparsity, "epochs": FINETUNE_EPOCHS, "lr": FINETUNE_LR,
              "torch": torch.__version__, "baseline": C.sha_of(baseline_path(model, C.dataset(model))),
              "torch_threads": C.TORCH_THREADS, "v": 2}
    res, folder = C.memo("peer-torch-prune", params, make)
    return res, str(folder / "peer.safetensors")


def load_checkpoint(model: str, path: str):
    from explorer.core.zoo import create_model
    from explorer.models.baselines import load_into, load_state_dict_file

    return load_into(create_model(model, **C.card(model)["arch_kwargs"]), load_state_dict_file(path), path)


def model_section(model: str) -> tuple[str, dict]:
    base = C.run(Recipe(model=model, dataset=C.dataset(model)), label="baseline")
    b_top1, file_b = base["accuracy"]["top1"], base["baseline_size"]["file_bytes"]
    static = C.run(grid_point(model, C.dataset(model), bits=8))
    dynamic = C.run(Recipe(model=model, dataset=C.dataset(model), steps=(QuantizeConfig(mode="dynamic", bits=8),)))
    p_static, p_static_path = C.ort_quantized(model, base, "static")
    p_dynamic, p_dynamic_path = C.ort_quantized(model, base, "dynamic")
    rows, entries = [], {"fp32 eager": ("torch", C.unpacked(base)),
                         "fp32 ORT": ("ort", C.artifact(base, "model.onnx"))}
    # (tool, row, top-1, size bytes, size kind, latency entry, engine)
    spec = [("explorer", "fp32 baseline", b_top1, file_b, "safetensors", "fp32 eager", "PyTorch eager"),
            ("explorer", "fp32 baseline", base["onnx"]["fp32"]["accuracy"]["top1"], base["size"]["onnx_bytes"],
             "ONNX", "fp32 ORT", "ONNX Runtime fp32")]
    for tool, label, acc, size, path in (
            (EXPLORER_STATIC[0], EXPLORER_STATIC[1], static["onnx"]["int8"]["accuracy"]["top1"],
             static["size"]["onnx_int8_bytes"], C.artifact(static, "model.int8.onnx")),
            (PEER_STATIC[0], PEER_STATIC[1], p_static["top1"], p_static["bytes"], p_static_path),
            ("explorer", "dynamic int8", dynamic["onnx"]["int8"]["accuracy"]["top1"],
             dynamic["size"]["onnx_int8_bytes"], C.artifact(dynamic, "model.int8.onnx")),
            ("onnxruntime", "`quantize_dynamic` defaults", p_dynamic["top1"], p_dynamic["bytes"], p_dynamic_path)):
        key = f"{tool} {label}"
        entries[key] = ("ort", path)
        spec.append((tool, label, acc, size, "ONNX int8", key, "ONNX Runtime int8"))
    for s in SPARSITY:
        ours = C.run(grid_point(model, C.dataset(model), sparsity=s, finetune_epochs=FINETUNE_EPOCHS))
        peer, peer_path = torch_pruned(model, s)
        entries[f"explorer prune {s}"] = ("torch", C.unpacked(ours))
        entries[f"torch prune {s}"] = ("torch", load_checkpoint(model, peer_path))
        spec.append(("explorer", f"prune {s:.0%} + {FINETUNE_EPOCHS} ep (packed {ours['size']['packed_bytes']:,} B)",
                     ours["accuracy"]["top1"], ours["size"]["gzip_bytes"], "gzip", f"explorer prune {s}",
                     "PyTorch eager"))
        spec.append(("torch.nn.utils.prune", f"`global_unstructured` L1 {s:.0%} + same fit", peer["top1"],
                     peer["gzip_bytes"], "gzip", f"torch prune {s}", "PyTorch eager"))
    h2h = {b: C.head_to_head(entries, C.batch_input(model, b)) for b in (1, 256)}
    for tool, label, acc, size, kind, key, engine in spec:
        rows.append([tool, label, C.pct(acc), C.pts(acc - b_top1), f"{size:,} ({kind})", C.factor(file_b / size),
                     engine, C.ms(h2h[1][key]["median_ms"]), C.ms(h2h[256][key]["median_ms"])])
    tab = C.table(["tool", "variant", "top-1", "delta", "size B", "RF vs fp32 file", "engine", "batch 1 ms",
                   "batch 256 ms"], rows, "lllrrrlrr")
    e_s, p_s = h2h[256][" ".join(EXPLORER_STATIC)], h2h[256][" ".join(PEER_STATIC)]
    facts = {"static_acc": (static["onnx"]["int8"]["accuracy"]["top1"], p_static["top1"]),
             "negative_zeros": torch_pruned(model, SPARSITY[-1])[0]["negative_zeros"],
             "static_ms": (e_s["median_ms"], p_s["median_ms"])}
    return f"### {model}\n\n{tab}", facts


def main() -> None:
    parts = ["Every row on the same test split (359 images) and timed with the same code "
             "(`explorer.measure.latency.torch_cpu` / `onnx_runtime`, one thread), head to head: five "
             "interleaved rounds per batch size, median of the round medians, re-timed on every run of this "
             "script. Peers: `onnxruntime.quantization.quantize_static` (with the same "
             f"{C.CALIBRATION} calibration images the explorer uses) and `quantize_dynamic`, both with their "
             "default arguments, applied to the explorer's fp32 ONNX export of the baseline; "
             "`torch.nn.utils.prune.global_unstructured` with `L1Unstructured` over every conv and linear "
             "weight, then `explorer.core.train.fit` with the explorer's fine-tuning settings "
             f"({FINETUNE_EPOCHS} epochs, AdamW lr {FINETUNE_LR:g}, no weight decay, cosine, batch 64, seed 0). "
             "The explorer's static int8 path differs from ORT's defaults in three settings: it pre-processes "
             "the graph (`quant_pre_process`), quantises weights per channel, and uses unsigned 8-bit "
             "activations."]
    verdict, negs = [], []
    for model in (*C.MODELS, *C.fashion_models()):
        text, f = model_section(model)
        parts.append(text)
        (ea, pa), (em, pm) = f["static_acc"], f["static_ms"]
        negs.append(f"{model} {f['negative_zeros']:,}")
        verdict.append(f"{model}: explorer static int8 {C.pct(ea)} in {em:.3f} ms against quantize_static's "
                       f"{C.pct(pa)} in {pm:.3f} ms at batch 256")
    parts.append("Static int8 head to head: " + "; ".join(verdict) + ". Pruned models run dense in PyTorch eager "
                 "whichever tool zeroed the weights: unstructured sparsity changes the stored size (gzip, packed), "
                 "not dense latency. torch.nn.utils.prune has no sparse storage of its own; its gzip column is "
                 "the same safetensors-plus-gzip measure the explorer reports, and it is larger at the same "
                 "accuracy because `prune.remove` leaves weight_orig * mask, a -0.0 for every negative pruned weight "
                 f"({', '.join(negs)} of them at {SPARSITY[-1]:.0%}): 0x80000000 is another 4-byte word to gzip, "
                 "while the explorer writes +0.0.")
    C.write_section(NAME, "Peers: ONNX Runtime quantisation and torch.nn.utils.prune on the same models",
                    "\n\n".join(parts), latency=True)


if __name__ == "__main__":
    main()
