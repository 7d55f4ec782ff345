"""Shared helpers for the bench scripts: the cache every figure comes from, markdown tables, number
formats, claim checks, a JSON memo for the few figures computed outside the explorer (peers, seed 004's
dense controls), and the section writer.

Every bench script imports this module first: it puts the repository on sys.path and points the run
cache at cache/bench (unless EXPLORER_CACHE_DIR is already set), so benchmark runs never mix with a
user's UI cache and a second run reads the same RunResults a user would see.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("EXPLORER_CACHE_DIR", str(ROOT / "cache" / "bench"))
os.environ.setdefault("EXPLORER_LANDSCAPE", "0")  # no background work beside a benchmark (live.py runs its own)
os.environ.setdefault("EXPLORER_CACHE_MAX_MB", "8192")  # the bench cache holds every run; never evict mid-report
RESULTS = ROOT / "docs" / "results"
# One intra-op thread for compression and fine-tuning: on a 2-core machine shared with others, torch's
# default (one thread per core) stalls whenever another process holds a core (2 epochs of vgg13 took
# 1.4 s to 39 s); the sweep's workers run with one thread each for the same reason.
TORCH_THREADS = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
MODELS = ("digits_cnn", "vgg13")
DATASET = {"digits_cnn": "digits", "vgg13": "digits", "lenet5": "fashion-mnist", "resnet8": "fashion-mnist"}


def dataset(model: str) -> str:
    """The data set of the one committed baseline of `model` the bench uses."""
    return DATASET[model]


def fashion_models() -> tuple[str, ...]:
    """The Fashion-MNIST LeNet-5 for the seeds' tables, where the data set is on this machine."""
    from explorer.core.data import available

    return ("lenet5",) if available("fashion-mnist") else ()
SEED001 = "seed 001 (Ishtiaq et al., section IV tables)"
SEED000 = "seed 000 (Ashtekar & Dalvi, Figure 1)"
SEED002 = "seed 002 (lecture slides, 'PTQ vs QAT - ResNet18 on Imagenet' table)"

_stats = {"hits": 0, "misses": 0, "t0": time.perf_counter()}


def _set_threads() -> None:
    import torch

    torch.set_num_threads(TORCH_THREADS)


_set_threads()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- runs through the explorer


def cache():
    from explorer.run.cache import RunCache

    return RunCache()


def run(recipe, *, label: str | None = None, latency: bool = False) -> dict:
    """The RunResult a user would get for `recipe` (RunCache.get_or_run); a failed run stops the script.

    With BENCH_REMEASURE=1 and `latency`, the stored artifacts are timed again (runner.time_run, the
    explorer's own latency code) so a re-run on an idle machine refreshes latency without recomputing."""
    t = time.perf_counter()
    res = cache().get_or_run(recipe)
    hit = bool((res.get("cache") or {}).get("hit"))
    _stats["hits" if hit else "misses"] += 1
    log(f"  {'hit ' if hit else 'ran '} {time.perf_counter() - t:6.1f}s  {recipe.model:<10} {label or recipe.label()}")
    if res.get("status") != "ok":
        raise SystemExit(f"run failed: {recipe.model} {recipe.label()}: {res.get('error')}")
    if latency and hit and remeasure():
        key = res["key"]
        if key not in _retimed:
            from explorer.run.runner import time_run

            _retimed[key] = time_run(res, cache().root / key)
        res = {**_retimed[key], "cache": res["cache"]}
    return res


def remeasure() -> bool:
    return os.environ.get("BENCH_REMEASURE") == "1"


_retimed: dict[str, dict] = {}


def baseline(model: str) -> dict:
    from explorer.compress.recipe import Recipe

    return run(Recipe(model=model, dataset=dataset(model)), label="baseline")


def card(model: str) -> dict:
    from explorer.models.baselines import baseline_path, read_card

    return read_card(baseline_path(model, dataset(model)))


def data_for(model: str):
    from explorer.models.baselines import baseline_data

    return baseline_data(card(model))


def lat(res: dict, engine: str, batch: int = 256) -> float | None:
    """Median ms of an engine at a batch size, or None where the engine was not available."""
    v = (res.get("latency") or {}).get(engine, {}).get(f"b{batch}", {})
    return v.get("median_ms") if v.get("available") else None


def compress_seconds(res: dict) -> float:
    return float(res["timings"]["compress"])


def nonzero_weights(res: dict) -> int:
    return res["nonzero_params"]


def threads() -> int:
    from explorer.run.runner import threads as t

    return t()


def hardware_line() -> str:
    from explorer.measure.hardware import describe, hardware

    return describe(hardware(threads()))


# ---------------------------------------------------------------- latency, head to head


def input_shape(model: str) -> tuple[int, int, int]:
    kw = card(model)["arch_kwargs"]
    return (kw["in_channels"], kw["image_size"], kw["image_size"])


def batch_input(model: str, batch: int = 256):
    """The input explorer.measure.speedup.measure_latency times with (seeded normal noise)."""
    import torch

    return torch.randn(batch, *input_shape(model), generator=torch.Generator().manual_seed(0))


def artifact(res: dict, name: str) -> str:
    path = cache().artifact_path(res["key"], name)
    if path is None:
        raise SystemExit(f"the cache entry {res['key']} ({res.get('label')}) has no {name}")
    return str(path)


def unpacked(res: dict):
    """The model rebuilt from the run's packed file, as the explorer times it."""
    from explorer.artifact.pack import unpack

    blob = cache().artifact(res["key"], "model.xpk")
    if blob is None:
        raise SystemExit(f"the cache entry {res['key']} ({res.get('label')}) has no intact model.xpk")
    return unpack(blob).model


def head_to_head(entries: dict[str, tuple[str, Any]], x, rounds: int = 10, budget_s: float = 1.5) -> dict[str, dict]:
    """Interleaved latency with the explorer's own timers (measure.latency.interleave: every entry timed in
    every round, there and back), so a change in the machine's load hits every entry alike. Returns, per
    entry, the summary (median, its 95% interval) and the per-round medians that `speedup` pairs up."""
    from explorer.measure.latency import interleave, ort_timer, torch_cpu_timer

    timers = {}
    for name, (kind, obj) in entries.items():
        t = torch_cpu_timer(obj, x, threads()) if kind == "torch" else ort_timer(obj, x.numpy(), threads())
        if isinstance(t, dict):
            raise SystemExit(f"{name}: {t.get('reason')}")
        timers[name] = t
    return interleave(timers, rounds=rounds, budget_s=budget_s)


def speedup(h: dict[str, dict], reference: str, name: str) -> dict:
    """reference's time over name's, from the same interleaved rounds: {"ratio", "ci"} (stats.ratio_of_medians)."""
    from explorer.core.stats import ratio_of_medians

    return ratio_of_medians(h[reference]["round_ms"], h[name]["round_ms"])


def speedup_text(s: dict) -> str:
    lo, hi = s["ci"]
    return f"{s['ratio']:.1f}x ({lo:.1f}-{hi:.1f})" if s["ratio"] >= 10 else f"{s['ratio']:.2f}x ({lo:.2f}-{hi:.2f})"


def ort_profile(path: str, x, runs: int = 20) -> list[dict]:
    """Per-node kernel time of an ONNX model in ONNX Runtime (its own profiler), mean ms per run, in
    execution order."""
    import collections
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads(), 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    total: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            node = e["name"][:-len("_kernel_time")]
            ops.setdefault(node, e["args"].get("op_name", "?"))  # first appearance = execution order
            total[node] += e["dur"]
    return [{"op": ops[n], "node": n, "ms": total[n] / runs / 1000} for n in ops]


CONV_OPS = ("Conv", "FusedConv", "QLinearConv", "ConvInteger")
GEMM_OPS = ("Gemm", "FusedGemm", "QGemm", "MatMul", "MatMulInteger")


def layer_work(model, shape: tuple[int, ...]) -> list[dict]:
    """Per Conv2d/Linear layer in execution order: input side, MACs per image as the explorer counts them
    (every kernel tap) and the MACs that touch real data (taps that fall on zero padding left out)."""
    import torch
    from torch import nn

    rows: list[dict] = []

    def taps(size: int, k: int, s: int, p: int, d: int) -> int:
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        return sum(0 <= o * s - p + i * d < size for o in range(out) for i in range(k))

    def hook(mod, args, out, name):
        x = args[0]
        if isinstance(mod, nn.Conv2d):
            h, w = x.shape[-2:]
            per_tap = mod.in_channels // mod.groups * mod.out_channels
            dense = per_tap * out.shape[-2] * out.shape[-1] * mod.kernel_size[0] * mod.kernel_size[1]
            valid = per_tap * taps(h, mod.kernel_size[0], mod.stride[0], mod.padding[0], mod.dilation[0]) * \
                taps(w, mod.kernel_size[1], mod.stride[1], mod.padding[1], mod.dilation[1])
            rows.append({"layer": name, "kind": "conv", "in_hw": f"{h}x{w}", "cin": mod.in_channels,
                         "cout": mod.out_channels, "macs": int(dense), "valid_macs": int(valid)})
        else:
            rows.append({"layer": name, "kind": "linear", "in_hw": "-", "cin": mod.in_features,
                         "cout": mod.out_features, "macs": mod.in_features * mod.out_features,
                         "valid_macs": mod.in_features * mod.out_features})

    handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return rows


def per_layer_times(path: str, x, work: list[dict], runs: int = 20) -> list[float | None]:
    """ms per run of each layer in `work` (conv and gemm nodes matched in execution order)."""
    prof = ort_profile(path, x, runs)
    convs = [r["ms"] for r in prof if r["op"] in CONV_OPS]
    gemms = [r["ms"] for r in prof if r["op"] in GEMM_OPS]
    if len(convs) != sum(w["kind"] == "conv" for w in work) or len(gemms) != sum(w["kind"] == "linear" for w in work):
        log(f"  {path}: the ONNX Runtime graph does not map one node per layer; per-layer times left out")
        return [None] * len(work)
    out: list[float | None] = []
    for w in work:
        src = convs if w["kind"] == "conv" else gemms
        out.append(src.pop(0) if src else None)
    return out


# ---------------------------------------------------------------- peers: ONNX Runtime's own quantisation

CALIBRATION = 256  # the explorer's default static int8 calibration: 256 training images, seed 0


def ort_peer(fp32_path: str, out_path: str | os.PathLike, mode: str, calibration=None) -> None:
    """onnxruntime.quantization applied directly to the exported fp32 model with its default arguments
    (what a user who calls quantize_static / quantize_dynamic gets): no pre-processing."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(fp32_path, str(out_path))
        return
    name = onnx.load(fp32_path, load_external_data=False).graph.input[0].name
    cal = np.asarray(calibration, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: cal[i:i + 32]} for i in range(0, len(cal), 32)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(fp32_path, str(out_path), Reader())


# ---------------------------------------------------------------- figures computed outside the explorer


def sha_of(path: str | os.PathLike) -> str:
    from explorer.models.baselines import sha256_file

    return sha256_file(path)[:16]


def memo(name: str, params: dict, fn: Callable[[Path], dict]) -> tuple[dict, Path]:
    """fn(folder) once per `params` (which must name everything the result depends on): its JSON result
    and any files it writes into `folder` are kept in the bench cache, so a re-run is fast. Used only
    for figures the explorer does not produce itself (peers, dense controls)."""
    import explorer

    key = json.dumps({**params, "schema": explorer.SCHEMA_VERSION}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = Path(os.environ["EXPLORER_CACHE_DIR"]) / "_bench" / f"{name}-{digest}"
    done = folder / "result.json"
    if done.is_file():
        with contextlib.suppress(ValueError, OSError):
            out = json.loads(done.read_text())
            _stats["hits"] += 1
            return out, folder
    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    out = fn(folder)
    _stats["misses"] += 1
    log(f"  ran  {time.perf_counter() - t:6.1f}s  {name} {params}")
    tmp = folder / f".result.json.{os.getpid()}"
    tmp.write_text(json.dumps(out, indent=1, default=str))
    tmp.replace(done)  # written last: a folder without result.json is recomputed
    return out, folder


def ort_quantized(model: str, base: dict, mode: str) -> tuple[dict, str]:
    """The exported fp32 baseline (the explorer's own model.onnx) quantised by onnxruntime.quantization
    with its defaults; accuracy with explorer.measure.onnx_export.onnx_accuracy on the test split."""
    import onnxruntime

    from explorer.measure.onnx_export import onnx_accuracy

    src = artifact(base, "model.onnx")

    def make(folder):
        data = data_for(model)
        out = folder / f"peer-{mode}.onnx"
        calib = data.calibration(CALIBRATION, seed=0).numpy() if mode == "static" else None
        ort_peer(src, out, mode, calib)
        acc = onnx_accuracy(out, data.test.x.numpy(), data.test.y.numpy())
        return {"top1": acc["top1"], "bytes": out.stat().st_size}

    params = {"model": model, "mode": mode, "onnx": sha_of(src), "ort": onnxruntime.__version__,
              "calibration": CALIBRATION}
    res, folder = memo("peer-ort", params, make)
    return res, str(folder / f"peer-{mode}.onnx")


# ---------------------------------------------------------------- formatting


def pct(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}%"


def pts(x: float | None, nd: int = 2) -> str:
    """Signed points of top-1 (negative = worse than the baseline)."""
    if x is None:
        return "n/a"
    return f"{0.0 if abs(x) < 0.5 * 10 ** -nd else x:+.{nd}f}"  # no "-0.00"


def num(x: float | None, nd: int = 3) -> str:
    """A plain number without the "-0.000" of a tiny negative."""
    if x is None:
        return "n/a"
    return f"{0.0 if abs(x) < 0.5 * 10 ** -nd else x:.{nd}f}"


def nbytes(n: float | None) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def factor(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}x"


def ms(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def secs(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; `align` is one letter per column (l/r/c), default left for the first column
    and right for the rest."""
    rows = [[str(c) for c in r] for r in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- claims


@dataclass
class Check:
    claim: str
    passed: bool
    measured: str
    note: str = ""
    verdict: str = ""  # PASS, FAIL, or TOO FEW IMAGES where the point estimate passes but its interval does not

    def result(self) -> str:
        return self.verdict or ("PASS" if self.passed else "FAIL")


UNRESOLVED = "TOO FEW IMAGES"


def checks_table(checks: Sequence[Check]) -> str:
    return table(["claim", "result", "measured", "note"],
                 [[c.claim, f"**{c.result()}**", c.measured, c.note] for c in checks], "llll")


def summary_line(checks: Sequence[Check]) -> str:
    n = sum(c.passed for c in checks)
    unresolved = sum(c.result() == UNRESOLVED for c in checks)
    tail = (f"; {unresolved} cannot be told apart from the baseline on this test set (too few images for 95% "
            "confidence)" if unresolved else "")
    return f"{n} of {len(checks)} claims pass{tail}."


def top1(res: dict) -> str:
    """Top-1 with its 95% Wilson interval."""
    ci = res.get("accuracy_ci", {}).get("top1")
    t = res["accuracy"]["top1"]
    return pct(t) if not ci else f"{t:.2f}% ({ci[0]:.2f}-{ci[1]:.2f})"


def delta(res: dict) -> str:
    """The top-1 change with its paired 95% interval."""
    vs = res.get("vs_baseline")
    d = res["accuracy_delta"]
    return pts(d) if not vs else f"{pts(d)} ({vs['delta_ci'][0]:+.2f} to {vs['delta_ci'][1]:+.2f})"


def loses_at_most(res: dict, points: float) -> str:
    """PASS when 95% sure the run loses at most `points` (the worst end of its paired interval), FAIL when
    even the point estimate loses more, TOO FEW IMAGES in between: the test set cannot tell."""
    if res["accuracy_delta"] < -points:
        return "FAIL"
    return "PASS" if res["vs_baseline"]["delta_ci"][0] >= -points else UNRESOLVED


def within_check(name: str, res: dict, points: float, note: str = "") -> Check:
    """A 'loses at most P points' claim judged at 95% paired confidence (see loses_at_most)."""
    v = loses_at_most(res, points)
    unit = "point" if points == 1 else "points"
    return Check(f"{name}: 95% sure to lose at most {points:g} {unit}", v == "PASS", delta(res), note, v)


# ---------------------------------------------------------------- sections


def write_section(name: str, title: str, body: str, *, latency: bool = False, checks: Sequence[Check] = (),
                  facts: dict | None = None) -> Path:
    """docs/results/<name>.md: the title, the body, and a footer with the command, date, this script's
    runtime and cache use, and the hardware (for latency figures). Beside it <name>.json holds the
    claims checked and a few headline facts, which run_all.py gathers."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    runtime = time.perf_counter() - _stats["t0"]
    foot = [f"Made by `.venv/bin/python bench/{name}.py` on {dt.date.today().isoformat()} in {runtime:.0f} s "
            f"({_stats['misses']} runs computed, {_stats['hits']} read from the cache `{cache_label()}`)."]
    if latency:
        foot.append(f"Latency: {hardware_line()}; median of repeated calls after warm-up "
                    f"(EXPLORER_THREADS={threads()})"
                    + ("; stored latencies re-timed in this run (BENCH_REMEASURE=1)." if remeasure() else "."))
    text = f"## {title}\n\n{body.strip()}\n\n" + "\n\n".join(f"_{f}_" for f in foot) + "\n"
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    summary = {"name": name, "title": title, "date": dt.date.today().isoformat(), "runtime_s": round(runtime, 1),
               "computed": _stats["misses"], "from_cache": _stats["hits"],
               "checks": [{"claim": c.claim, "passed": c.passed, "measured": c.measured, "note": c.note,
                           "verdict": c.result()} for c in checks], "facts": facts or {}}
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {path.relative_to(ROOT)} ({runtime:.0f} s)")
    return path


def cache_label() -> str:
    p = Path(os.environ["EXPLORER_CACHE_DIR"]).resolve()
    with contextlib.suppress(ValueError):
        return str(p.relative_to(ROOT))
    return str(p)
