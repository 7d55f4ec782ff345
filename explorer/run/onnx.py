"""Runs for an ONNX baseline (an uploaded ONNX, TorchScript or exported-program model): the figures that
apply without PyTorch layers: accuracy with ONNX Runtime, sizes of real files, ONNX Runtime's int8
quantisation and latency. Every other figure says why it is not there."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from explorer.compress.base import Deploy
from explorer.compress.recipe import Recipe
from explorer.core.engines import ORT_CPU_INT8, TORCH_CPU, batch_key
from explorer.core.figures import Accuracy, Onnx, OnnxModel
from explorer.core.version import SCHEMA_VERSION
from explorer.measure import size
from explorer.measure.accuracy import save_predictions, uncertainty
from explorer.measure.latency import unavailable
from explorer.measure.onnx_export import deploy_int8, onnx_accuracy
from explorer.models import feeding
from explorer.models.baselines import baseline_data, read_card, versions
from explorer.run.result import RunResult

FILES = {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx", "gzip": "model.onnx.gz", "zstd": "model.onnx.zst",
         "predictions": "predictions.npy"}


def check_steps(recipe: Recipe, reason: str) -> Deploy | None:
    """The one step an ONNX baseline takes: int8 static or dynamic quantisation with ONNX Runtime."""
    if len(recipe.steps) > 1:
        raise ValueError(f"an ONNX model takes one int8 quantisation step at most: {reason}")
    if not recipe.steps:
        return None
    step = recipe.steps[0]
    deploy = step.deploys()  # the technique says what, if anything, it deploys as in ONNX Runtime
    if deploy is None:
        raise ValueError(f"{step.kind} {step.label()!r} is not available for an ONNX model: {reason}")
    return deploy


def _layers(path: Path) -> list[dict[str, Any]]:
    import onnx
    from onnx import numpy_helper

    rows = []
    for t in onnx.load(str(path)).graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.ndim < 2:
            continue
        nz = int(np.count_nonzero(arr))
        rows.append({"layer": t.name, "type": "initializer", "shape": "x".join(map(str, arr.shape)),
                     "params": int(arr.size), "nonzero": nz, "sparsity": 1 - nz / max(arr.size, 1),
                     "distinct": int(np.unique(arr).size), "bits": arr.dtype.itemsize * 8, "clusters": None,
                     "packed_bytes": None, "macs": None})
    return rows


def prepare_onnx(recipe: Recipe, workdir: Path, key: str) -> RunResult:
    t0 = time.perf_counter()
    card = read_card(recipe.checkpoint_path)
    reason = card.get("unsupported_reason", "the model is ONNX")
    deploy = check_steps(recipe, reason)
    data = baseline_data(card)
    shutil.copyfile(recipe.checkpoint_path, workdir / FILES["onnx"])
    x, y = data.test.x.numpy(), data.test.y.numpy()
    base = onnx_accuracy(workdir / FILES["onnx"], x, y, with_predictions=True)
    public = {k: v for k, v in base.items() if k != "pred"}
    onnx = Onnx(fp32=OnnxModel(available=True, bytes=(workdir / FILES["onnx"]).stat().st_size, accuracy=public),
                int8=OnnxModel(available=False, reason="no int8 step in the recipe"))
    model_file, acc = FILES["onnx"], base
    if deploy:
        calib = data.calibration(min(deploy.calibration_samples, len(data.train)), seed=recipe.seed).numpy()
        onnx["int8"] = deploy_int8(workdir / FILES["onnx"], workdir / FILES["onnx_int8"], deploy, calib, x, y,
                                   feeding.onnx_metadata(card, data))
        acc = onnx_accuracy(workdir / FILES["onnx_int8"], x, y, with_predictions=True)
        model_file = FILES["onnx_int8"]
    save_predictions(workdir / FILES["predictions"], acc["pred"])
    sizes = {"state_dict_bytes": None, "file_bytes": (workdir / model_file).stat().st_size,
             "gzip_bytes": size.gzip_file(workdir / model_file, workdir / FILES["gzip"]),
             "zstd_bytes": size.zstd_file(workdir / model_file, workdir / FILES["zstd"]), "packed_bytes": None,
             "onnx_bytes": onnx["fp32"]["bytes"], "onnx_int8_bytes": onnx["int8"].get("bytes")}
    base_file = recipe.checkpoint_path.stat().st_size
    base_sizes = {"file_bytes": base_file, "gzip_bytes": size.gzip_file(recipe.checkpoint_path, workdir / "b.gz"),
                  "zstd_bytes": size.zstd_file(recipe.checkpoint_path, workdir / "b.zst")}
    layers = _layers(workdir / model_file)
    unc = uncertainty(acc, base, data.test.y)  # key by key: mypy refuses a TypedDict unpacked by **
    params = sum(r["params"] for r in layers)
    nonzero = sum(r["nonzero"] for r in layers)
    return RunResult(
        schema=SCHEMA_VERSION, status="ok", key=key, recipe=recipe.to_dict(), label=recipe.label(),
        model=recipe.model, dataset=recipe.dataset, test_samples=len(data.test), format="onnx",
        unsupported_reason=reason, accuracy=Accuracy(top1=acc["top1"], top3=acc["top3"], top5=acc["top5"], loss=None),
        accuracy_source=f"ONNX Runtime on {model_file}",
        baseline_accuracy=Accuracy(top1=base["top1"], top3=base["top3"], top5=base["top5"], loss=None),
        accuracy_delta=acc["top1"] - base["top1"], accuracy_ci=unc["accuracy_ci"], vs_baseline=unc["vs_baseline"],
        onnx=onnx,
        sparsity=1 - nonzero / max(params, 1), params=card.get("params", params),
        baseline_params=card.get("params", params), nonzero_params=nonzero, macs=None,
        macs_nonzero_theoretical=None, size=sizes, baseline_size=base_sizes, size_check=None,
        reduction_factor=size.reduction_factors({k: v for k, v in sizes.items() if isinstance(v, int)
                                                 and k != "state_dict_bytes"}, base_file, base_sizes),
        theoretical=None, layers=layers, histograms={}, compression={}, notes=[reason], memory={},
        timings={"total_prepare": round(time.perf_counter() - t0, 3), "steps": []}, versions=versions(),
        input_shape=list(data.input_shape), preprocessing=feeding.fed(data, feeding.given_of(card)),
        baseline_sha256=card.get("sha256") or "")


def time_onnx(result: RunResult, workdir: Path, threads: int, budget_s: float,
              between_rounds: Callable[[float], None] | None = None) -> RunResult:
    """ONNX Runtime latency of the run's files, each timed in interleaved rounds with the baseline's ONNX model
    in the same engine (its fp32 file; its int8 made with ONNX Runtime's default settings)."""
    from explorer.measure.speedup import measure_latency
    from explorer.run import timing

    t = time.perf_counter()
    recipe = Recipe.from_dict(result["recipe"])
    own = not recipe.steps
    base = {} if own else timing.baseline_onnx(recipe)
    int8 = workdir / FILES["onnx_int8"]
    lat = measure_latency(None, tuple(result["input_shape"]), onnx_fp32=str(workdir / FILES["onnx"]),
                          onnx_int8=str(int8) if int8.is_file() else None, threads=threads, budget_s=budget_s,
                          gpu=False, onnx_reason=None, is_baseline=own, reference_onnx_fp32=base.get("fp32"),
                          reference_onnx_int8=base.get("int8"), reference_reason=base.get("reason"),
                          reference_times=timing.reference_times(recipe, threads), between_rounds=between_rounds)
    reason = result.get("unsupported_reason", "ONNX model")
    for b in lat["batches"]:
        lat["engines"].setdefault(TORCH_CPU, {})[batch_key(b)] = unavailable(f"no PyTorch model: {reason}")
        if not int8.is_file():
            lat["engines"].setdefault(ORT_CPU_INT8, {})[batch_key(b)] = unavailable("no int8 step in the recipe")
    timing.update_reference(recipe, threads, lat)
    out = timing.apply(result, lat)
    out["timings"] = {**out["timings"], "latency": round(time.perf_counter() - t, 3)}
    return out
