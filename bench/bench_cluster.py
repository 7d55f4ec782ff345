"""Time kmeans_1d: 1,000,000 normal values into 256 clusters on 2 threads, median of 5 runs.

Run: python bench/bench_cluster.py   (prints the figure and the hardware it was measured on)
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.compress.cluster import kmeans_1d

N, K, RUNS, THREADS = 1_000_000, 256, 5, 2


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    torch.set_num_threads(THREADS)
    x = torch.randn(N, generator=torch.Generator().manual_seed(0))
    kmeans_1d(x[:10_000], 16)  # warm-up: first-call allocations and lazy imports
    for init in ("kmeans++", "linear", "random"):
        times = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            cent, assign = kmeans_1d(x, K, init=init, seed=0)
            times.append(time.perf_counter() - t0)
        inertia = float(((x.double() - cent.double()[assign]) ** 2).sum())
        print(f"kmeans_1d n={N:,} k={K} init={init:<8} median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {RUNS} runs), {len(cent)} centroids, "
              f"inertia {inertia:.2f}")
    print(f"hardware: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"python {platform.python_version()} on {platform.system()}")


if __name__ == "__main__":
    main()
