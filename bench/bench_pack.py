"""Packed sizes and pack/unpack time for the committed baselines: `python bench/bench_pack.py`.

For each baseline: the fp32 baseline itself, 90% unstructured pruning + 4-bit weights, and 95% pruning +
16 clusters (one-shot, no fine-tuning: sizes do not depend on accuracy). Bytes are len() of the packed
blob; the reduction factor is the fp32 safetensors file's size over them. Every unpacked model is
checked bit for bit against the compressed one before a figure is printed.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from explorer.artifact.pack import pack, tensor_report, theoretical_bits, unpack  # noqa: E402
from explorer.compress import compress  # noqa: E402
from explorer.compress.base import CompressionState  # noqa: E402
from explorer.compress.cluster import ClusterConfig  # noqa: E402
from explorer.compress.prune import PruneConfig  # noqa: E402
from explorer.compress.quantize import QuantizeConfig  # noqa: E402
from explorer.models.baselines import load_baseline  # noqa: E402

BASELINES = ("models/digits_cnn-digits.safetensors", "models/vgg13-digits.safetensors")
VARIANTS = {
    "baseline fp32": [],
    "90% unstructured + 4-bit": [PruneConfig(sparsity=0.9), QuantizeConfig(bits=4)],
    "95% unstructured + 16 clusters": [PruneConfig(sparsity=0.95), ClusterConfig(clusters=16)],
}
REPEATS = 3


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.is_floating_point() else t


def _median_seconds(fn, repeats: int = REPEATS):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    print(f"# packed-format benchmark  cpu={platform.processor() or platform.machine()}  "
          f"torch threads={torch.get_num_threads()}  torch={torch.__version__}  median of {REPEATS} runs")
    header = (f"{'model':<10} {'variant':<32} {'file B':>10} {'packed B':>10} {'reduction':>9} {'theory B':>9} "
              f"{'pack s':>7} {'unpack s':>8}  encodings")
    print(header)
    print("-" * len(header))
    for path in BASELINES:
        model, card = load_baseline(ROOT / path)
        arch = {"name": card["architecture"], "kwargs": card["arch_kwargs"]}
        file_bytes = (ROOT / path).stat().st_size
        for label, steps in VARIANTS.items():
            if steps:
                res = compress(model, steps, None)
                m, state = res.model, res.state
            else:
                m, state = model, CompressionState()
            pack_s, blob = _median_seconds(lambda m=m, state=state, arch=arch: pack(m, state, arch))
            unpack_s, out = _median_seconds(lambda blob=blob: unpack(blob))
            ref, got = m.state_dict(), out.model.state_dict()
            if not all(torch.equal(_bits(ref[k]), _bits(got[k])) for k in ref):
                raise SystemExit(f"{path} {label}: the unpacked model differs from the packed one")
            kinds = sorted({f"{r['encoding']}/{r['layout']}" for r in tensor_report(blob)
                            if r["name"].endswith("weight") and len(r["shape"]) > 1})
            theory = theoretical_bits(m, state)["total_bytes"]
            print(f"{card['architecture']:<10} {label:<32} {file_bytes:>10,} {len(blob):>10,} "
                  f"{file_bytes / len(blob):>8.1f}x {theory:>9,} {pack_s:>7.3f} {unpack_s:>8.3f}  {', '.join(kinds)}")


if __name__ == "__main__":
    main()
