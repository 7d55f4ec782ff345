"""Plain words for what the explorer shows: a recipe, a quantisation scheme, an engine, a figure. The page,
the report and the command line speak to an ML engineer and their stakeholders, so abbreviations are
spelt out here and the short forms kept for tooltips. A step's own words are its technique's (StepConfig.words,
explorer.compress.recipe.recipe_words); this module holds the words every part shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
UNQUANTISED = "fp32 (no quantisation)"  # the scheme of a run with no quantisation step

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
    "Collapsed": "a run whose model guesses: its top-1 cannot be told from chance, its fine-tuning loss stayed at "
                 "that of a uniform guess, or a layer lost every weight. Its figures are no trade-off: it is marked "
                 "with a cross on the charts' lower edge and never picked as the sweet spot.",
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
                   "codes, codebooks, fp16), compressed. Load it back with explorer.unpack (bytes in, a PyTorch "
                   "module out as .model).",
    "Reduction factor": "how many times smaller a file is than the baseline's uncompressed fp32 checkpoint file "
                        "(the .safetensors file the model was trained into): the one reference for every "
                        "'times smaller' on this page.",
    "AD x RF": "accuracy delta (points) times reduction factor, standardised across the runs compared: the "
               "score of Ishtiaq et al., \"Model Compression\". It rewards little loss for much compression but "
               "is relative to the runs shown.",
    "Speed-up": "the baseline's time over this model's, both timed in the same interleaved rounds so a change in "
                "the machine's load hits both; 'within noise' where its 95% interval holds 1.",
}


def engine(name: str, batch: str | int | None = None) -> str:
    """'onnxruntime_cpu_int8', 'b256' -> 'ONNX Runtime, int8, batch of 256'."""
    words = ENGINES.get(name, name)
    if batch is None:
        return words
    n = str(batch).lstrip("b")
    return f"{words}, batch of {n}" if n != "1" else f"{words}, one image"


def count(n: object, noun: str, plural: str | None = None) -> str:
    """'1 run', '3 runs', '10,000 test images': a count with its noun in the right number."""
    shown = f"{n:,}" if isinstance(n, int) else str(n)
    return f"{shown} {noun if n == 1 else plural or noun + 's'}"


def size_reference(result: Mapping[str, Any]) -> str:
    """What every "times smaller" on the page, the command line and the summaries divides by, named: the
    baseline's uncompressed fp32 checkpoint file (plain text: callers escape it for their markup)."""
    recipe = result.get("recipe") or {}
    file = str(recipe.get("checkpoint") or f"{recipe.get('model', result.get('model'))}-"
               f"{recipe.get('dataset', result.get('dataset'))}.safetensors").replace("\\", "/").rsplit("/", 1)[-1]
    return f"the baseline's fp32 checkpoint file ({file})"


def byte_size(n: int) -> str:
    """A size in bytes as a person reads it: 812 B, 23.4 KiB, 1.25 MiB."""
    return f"{n:,} B" if n < 1024 else f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"
