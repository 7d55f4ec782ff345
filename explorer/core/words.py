"""Plain words for what the explorer shows: a recipe, a quantisation scheme, an engine, a figure. The page,
the report and the command line speak to an ML engineer and their stakeholders, so abbreviations are
spelt out here and the short forms kept for tooltips. Pure functions of recipe JSON (step dicts)."""

from __future__ import annotations

from collections.abc import Sequence

from explorer.core.engines import (
    ORT_CPU_FP32,
    ORT_CPU_INT8,
    ORT_CUDA_FP32,
    TORCH_CPU,
    TORCH_CUDA_BF16,
    TORCH_CUDA_FP16,
    TORCH_CUDA_FP32,
)

ENGINES = {TORCH_CPU: "PyTorch on the CPU, fp32", ORT_CPU_FP32: "ONNX Runtime, fp32",
           ORT_CPU_INT8: "ONNX Runtime, int8", TORCH_CUDA_FP32: "PyTorch on the GPU, fp32",
           TORCH_CUDA_FP16: "PyTorch on the GPU, fp16", TORCH_CUDA_BF16: "PyTorch on the GPU, bf16",
           ORT_CUDA_FP32: "ONNX Runtime on the GPU, fp32"}
GRANULARITY = {"unstructured": "single weights", "channel": "whole channels", "block": "4x4 blocks of weights",
               "nm": "2 of every 4 weights (2:4)", "heads": "attention heads", "neurons": "MLP neurons"}
SCHEDULE = {"oneshot": "at once", "iterative": "in rounds", "gradual": "gradually"}

GLOSSARY = {
    "Top-1": "the share of test images whose most likely class is the right one. Its 95% interval (Wilson's) "
             "says how far the true figure could be from this one, given how many test images there are.",
    "Change vs the baseline": "top-1 of the compressed model minus the baseline's, in points, on the same test "
                              "images; its paired 95% interval and the exact McNemar test count the images one "
                              "model gets right and the other wrong. Within noise: the interval holds 0.",
    "Sparsity": "the share of weights that are zero. Unstructured sparsity zeroes single weights: the file "
                "shrinks (stored sparse) but dense kernels run as fast as before. Channel pruning removes whole "
                "filters: the model becomes smaller and faster. 2:4 zeroes two of every four weights, a pattern "
                "some GPUs (sparse tensor cores) run faster.",
    "PTQ": "post-training quantisation: weights (and optionally activations) rounded to a k-bit grid once, "
           "without training.",
    "QAT": "quantisation-aware training: fine-tuning with the rounding in the forward pass, so the weights learn "
           "to live on the grid.",
    "Static and dynamic int8": "int8 weights and activations in ONNX Runtime: static calibrates activation "
                               "ranges on training images beforehand, dynamic measures them on every input.",
    "Clustering": "k-means weight sharing: each layer keeps a few distinct values and stores an index per "
                  "weight (Deep Compression).",
    "MACs": "multiply-accumulate operations per image, the usual measure of a model's arithmetic.",
    "Packed .xpk": "the explorer's own file: each tensor in its cheapest exact encoding (sparse indices, k-bit "
                   "codes, codebooks, fp16), compressed. Load it back with explorer.artifact.pack.unpack.",
    "Reduction factor": "how many times smaller a file is than the uncompressed (fp32) checkpoint.",
    "AD x RF": "accuracy delta (points) times reduction factor, standardised across the runs compared: the "
               "score of Ishtiaq et al., \"Model Compression\". It rewards little loss for much compression but "
               "is relative to the runs shown.",
    "Speed-up": "the baseline's time over this model's, both timed in the same interleaved rounds so a change in "
                "the machine's load hits both; 'no measurable change' where its 95% interval holds 1.",
}


def scheme(step: dict | None) -> str:
    """A quantisation step in words: '8-bit weights and activations (static int8)'; fp32 for none."""
    if not step:
        return "fp32 (no quantisation)"
    mode, bits = step.get("mode"), step.get("bits")
    acts = step.get("activation_bits") or (8 if mode in ("static", "dynamic") else 0)
    if mode in ("fp16", "bf16"):
        return f"16-bit floats ({mode})"
    if mode == "static":
        return "8-bit weights and activations (static int8)"
    if mode == "dynamic":
        return "8-bit weights, activations at run time (dynamic int8)"
    what = f"{bits}-bit weights and activations" if acts else f"{bits}-bit weights only"
    how = {"ptq": "post-training", "qat": "quantisation-aware training", "mixed": "mixed precision"}.get(mode, mode)
    return f"{what} ({how})"


def scheme_of(steps: Sequence[dict]) -> str:
    return scheme(next((s for s in steps if s.get("kind") == "quantize"), None))


def step_words(step: dict) -> str:
    kind = step.get("kind")
    if kind == "prune":
        target = 0.5 if step.get("granularity") == "nm" else step.get("sparsity", 0)
        epochs = step.get("finetune_epochs", 0)
        tune = f", fine-tuned {epochs} epoch{'s' if epochs != 1 else ''}" if epochs else ""
        return (f"prune {target:.0%} of the {GRANULARITY.get(step.get('granularity'), step.get('granularity'))} "
                f"{SCHEDULE.get(step.get('schedule'), '')}{tune}").replace("  ", " ")
    if kind == "quantize":
        return scheme(step)
    if kind == "cluster":
        return f"share {step.get('clusters')} values per layer (clustering)"
    if kind == "lowrank":
        energy = step.get("energy")
        return (f"low-rank factorisation keeping {energy:.0%} of the energy" if energy else
                f"low-rank factorisation at {step.get('rank_ratio', 0):g} of the rank")
    if kind == "distill":
        return f"distil into a {step.get('student')} at width {step.get('width', 1):g}"
    if kind == "bn_adapt":
        return "BatchNorm statistics re-measured"
    return str(kind)


def recipe_words(recipe) -> str:
    """A whole recipe in words, steps in order; 'the baseline, uncompressed' for none."""
    steps = recipe.to_dict()["steps"] if hasattr(recipe, "to_dict") else recipe.get("steps", [])
    return ", then ".join(step_words(s) for s in steps) or "the baseline, uncompressed"


def engine(name: str, batch: str | int | None = None) -> str:
    """'onnxruntime_cpu_int8', 'b256' -> 'ONNX Runtime, int8, batch of 256'."""
    words = ENGINES.get(name, name)
    if batch is None:
        return words
    n = str(batch).lstrip("b")
    return f"{words}, batch of {n}" if n != "1" else f"{words}, one image"


def count(n, noun: str, plural: str | None = None) -> str:
    """'1 run', '3 runs', '10,000 test images': a count with its noun in the right number."""
    shown = f"{n:,}" if isinstance(n, int) else str(n)
    return f"{shown} {noun if n == 1 else plural or noun + 's'}"
