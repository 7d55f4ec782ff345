"""One way to run a configuration: Recipe -> compress -> pack -> unpack -> measure -> RunResult.

Two stages so sweeps can parallelise the heavy part and time latency one run at a time:
`prepare` compresses, packs, rebuilds the model from the packed bytes, measures accuracy on that
rebuilt model, exports ONNX (fp32 and int8) and reads every size from the files it wrote into
`workdir`; `time_run` reads the artifacts back from `workdir` and measures latency and memory.
The UI, CLI, sweeps, tests and benchmarks all come through here; nothing here prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.artifact import pack as packing
from explorer.compress.base import CompressionState, Deploy
from explorer.compress.pipeline import compress
from explorer.compress.recipe import Recipe, check_finetune_samples
from explorer.core import scratch, settings
from explorer.core.data import DataBundle
from explorer.core.errors import first_line
from explorer.core.paths import user_file
from explorer.core.preprocessing import read_given
from explorer.core.train import Progress, compute_threads, evaluate
from explorer.core.version import SCHEMA_VERSION
from explorer.measure import compute, size
from explorer.measure.accuracy import save_predictions, uncertainty
from explorer.measure.hardware import hardware
from explorer.measure.layers import emptied_layers, layer_table
from explorer.measure.onnx_export import ExportError, deploy_int8, export_onnx, onnx_accuracy
from explorer.measure.speedup import measure_latency
from explorer.models import feeding
from explorer.models.baselines import baseline_data, card_path, load_baseline, read_card, sha256_file, versions
from explorer.run import collapse, scheduler, sharpen, timing
from explorer.run.onnx import prepare_onnx, time_onnx
from explorer.run.result import FILES, UNTIMED, Accuracy, Collapse, Onnx, OnnxModel, RunResult


def threads() -> int:
    return int(settings.get("EXPLORER_THREADS"))


def train_threads() -> int:
    """Torch threads for compression, fine-tuning and evaluation (EXPLORER_TRAIN_THREADS, default 1). Part
    of a run's key: float sums split over another number of threads round differently, and fine-tuning
    amplifies that into other accuracies (0.3 points on vgg13), so the page, the CLI and a sweep's
    one-thread workers must all compute a recipe with the same count to show the same figures."""
    return int(settings.get("EXPLORER_TRAIN_THREADS"))


def eval_workers() -> int:
    """Threads that score test images side by side (EXPLORER_EVAL_WORKERS, default 2). Not part of a run's
    key: each batch is computed as in one thread, so the figures are the same for any count
    (explorer.core.train.predict_logits); a page's run uses the core the paused landscape leaves idle. Never
    more than the cores the scheduler may use."""
    return min(int(settings.get("EXPLORER_EVAL_WORKERS")), scheduler.cores())


def latency_budget_s() -> float:
    return float(settings.get("EXPLORER_LATENCY_BUDGET_S"))


def run_key(recipe: Recipe) -> str:
    """Hash of what determines the result: the baseline's bytes, the data and split seed (in the
    recipe), the canonical recipe JSON, the preprocessing the model's user gave (in its card) and the schema
    version. A recipe that names its model (sha256, preprocessing) is refused here, in one line, where the file
    is another model."""
    path = recipe.checkpoint_path
    user_file(path, "checkpoint", hint=f" (model {recipe.model!r} on {recipe.dataset!r}); train it with "
                                       f"`python -m explorer train --model {recipe.model} --dataset {recipe.dataset}`")
    mtime = path.stat().st_mtime_ns
    digest, card = _sha(str(path), mtime), _card_facts(str(path), mtime)
    _check_identity(recipe, path, digest, card)
    if recipe.sha256 is not None and recipe.finetune_samples == card.finetune_samples:
        # a travelling recipe states the card's recommendation (explorer.models.travel): the same run as the page's,
        # which leaves it to the card (only recipes that name their weights, all newer than this rule, are mapped)
        recipe = dataclasses.replace(recipe, finetune_samples=None)
    h = hashlib.sha256()
    h.update(digest.encode())
    h.update(recipe.canonical_json().encode())
    h.update(f"schema={SCHEMA_VERSION};train_threads={train_threads()}".encode())
    if revised := [f"{i}:{step.revision()}" for i, step in enumerate(recipe.steps) if step.revision() != 1]:
        h.update(f";revisions={','.join(revised)}".encode())  # a fixed technique: its old runs are stale
    if recipe.finetune_samples is None and (n := finetune_samples(recipe)) is not None:
        h.update(f";finetune_samples={n}".encode())  # the card's recommendation decides what the run computes
    if card.given:  # the same file fed otherwise is another model (cards without it keep their keys)
        h.update(f";preprocessing={json.dumps(card.given, sort_keys=True)}".encode())
    return h.hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What a model's card says that decides a run or names the model: read once per version of the card."""

    finetune_samples: int | None = None
    given: dict[str, Any] = dataclasses.field(default_factory=dict)
    source_sha256: str | None = None


@functools.lru_cache(maxsize=64)
def _card_facts(path: str, mtime_ns: int) -> CardFacts:
    try:
        card = read_card(path)
    except ValueError:
        return CardFacts()
    where = f"baseline card {str(card_path(path))!r}"
    n = card.get("finetune_samples")
    if n is not None:  # a card edited by hand or written by an older `train --finetune-samples -5`
        check_finetune_samples(n, where=where)
    return CardFacts(finetune_samples=n, given=read_given(card.get("preprocessing"), where),
                     source_sha256=(card.get("source") or {}).get("sha256"))


def _check_identity(recipe: Recipe, path: Path, digest: str, card: CardFacts) -> None:
    """A recipe that names its weights (sha256) or its preprocessing runs only on that model."""
    named = f"the recipe's model {recipe.baseline!r}" if recipe.baseline else "the recipe's model"
    wanted = {d for d in (recipe.sha256, recipe.source_sha256) if d}
    if wanted and not wanted & {digest, card.source_sha256}:
        raise ValueError(f"checkpoint {str(path)!r} holds other weights than {named}: its sha256 is {digest[:16]}..., "
                         f"the recipe's {sorted(wanted)[0][:16]}...; the figures would be another model's")
    stated = recipe.preprocessing()
    if (wanted or stated) and stated != card.given:
        hint = f" ({feeding.flags(stated)})" if stated else ""
        raise ValueError(f"{named} is fed {feeding.given_words(stated)}, but the model at {str(path)!r} is fed "
                         f"{feeding.given_words(card.given)}: add its file again as the recipe says{hint}")


# how often the resident set is sampled during the compression stage (seconds): at 2 ms the sampler's wake-ups
# slowed the default fine-tuning by a third; the kernel's high-water mark catches a new peak at any interval
TRAIN_RSS_INTERVAL_S = 0.05


def finetune_samples(recipe: Recipe) -> int | None:
    """Training images fine-tuning uses: the recipe's own figure, else the baseline card's recommendation
    (large data sets, where full epochs would keep a slider move waiting minutes), else all (None)."""
    if recipe.finetune_samples is not None:
        return recipe.finetune_samples
    return _card_facts(str(recipe.checkpoint_path), recipe.checkpoint_path.stat().st_mtime_ns).finetune_samples


@functools.lru_cache(maxsize=32)
def _sha(path: str, mtime_ns: int) -> str:
    return sha256_file(path)


_scores: dict[tuple[Any, ...], Future[Any]] = {}
_scores_lock = threading.Lock()


def _baseline_scores(path: Path, data: DataBundle) -> Future[Any]:
    """The baseline's accuracy and predictions on its test split (every run of a model needs them; on 10,000
    images they take seconds), kept in memory per checkpoint file. The first run of a model starts them as a
    task of the scheduler, at the run's priority, on a copy of the baseline read from its file, so they are
    scored while the compression and fine-tuning (one core) go on, and pause like the run for its timing;
    later runs find them done."""
    key = (str(path), path.stat().st_mtime_ns, train_threads(), data.name, data.root, len(data.test))
    with _scores_lock:
        fut = _scores.get(key)
        if fut is not None and not (fut.done() and fut.exception() is not None):
            return fut
        if len(_scores) > 8:
            _scores.clear()
        fut = _scores[key] = scheduler.start_task(_score, path, data, name="explorer-baseline-scores")
        return fut


def _score(path: Path, data: DataBundle) -> dict[str, Any]:
    return evaluate(load_baseline(path)[0], data.test, with_predictions=True)


@functools.lru_cache(maxsize=8)
def _baseline_sizes(path: str, mtime_ns: int) -> dict[str, Any]:
    """The fp32 baseline's own file, gzip and zstd sizes: the denominators of the reduction factors."""
    with scratch.folder("baseline-sizes") as tmp:
        return {"file_bytes": Path(path).stat().st_size, "gzip_bytes": size.gzip_file(path, tmp / "b.gz"),
                "zstd_bytes": size.zstd_file(path, tmp / "b.zst")}


def weight_sparsity(model: torch.nn.Module) -> tuple[int, int]:
    """(weights, zero weights) over Conv and Linear weights: what pruning acts on."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            total += m.weight.numel()
            zeros += m.weight.numel() - int(torch.count_nonzero(m.weight))
    return total, zeros


def _histograms(before: torch.nn.Module, after: torch.nn.Module, bins: int = 40) -> dict[str, Any]:
    """Weight distributions per layer before and after (seed 004 shows AlexNet's), on shared edges."""
    old = dict(before.named_modules())
    out = {}
    for name, m in after.named_modules():
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        w = m.weight.detach().reshape(-1).numpy()
        ref = old.get(name)
        w0 = ref.weight.detach().reshape(-1).numpy() if isinstance(ref, type(m)) else None
        lo = float(min(w.min(), w0.min() if w0 is not None else w.min()))
        hi = float(max(w.max(), w0.max() if w0 is not None else w.max()))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        out[name] = {"edges": [round(float(e), 6) for e in edges], "after": np.histogram(w, edges)[0].tolist(),
                     "before": np.histogram(w0, edges)[0].tolist() if w0 is not None else None}
    return out


def _layers(model: nn.Module, state: CompressionState, report: list[dict[str, Any]],
            macs: compute.Macs) -> list[dict[str, Any]]:
    packed_by_layer: dict[str, int] = {}
    for t in report:
        layer = t["name"].rsplit(".", 1)[0]
        packed_by_layer[layer] = packed_by_layer.get(layer, 0) + int(t["bytes"])
    rows = []
    for r in layer_table(model).to_dict("records"):
        mod = model.get_submodule(r["layer"])
        w = getattr(mod, "weight", None)
        key = f"{r['layer']}.weight"
        q = state.quant.get(key)
        bits = q.bits if q else (16 if key in state.float_format else 32)
        rows.append({**r, "distinct": int(torch.unique(w.detach()).numel()) if isinstance(w, torch.Tensor) else 0,
                     "bits": bits, "clusters": len(state.codebooks[key].centroids) if key in state.codebooks else None,
                     "packed_bytes": packed_by_layer.get(r["layer"], 0), "macs": macs["per_layer"].get(r["layer"], 0)})
    return rows


def _onnx_stage(model: nn.Module, state: CompressionState, data: DataBundle, work: Path,
                recipe: Recipe, metadata: dict[str, str]) -> Onnx:
    """fp32 export and the int8 model: the recipe's own int8 settings where it has an int8 step, else
    ONNX Runtime's default static per-channel int8 (what deploying this variant in int8 would give). Both files
    carry `metadata`: what their input must be."""
    out: dict[str, OnnxModel] = {}
    x, y = data.test.x.numpy(), data.test.y.numpy()
    try:
        export_onnx(model, data.input_shape, work / FILES["onnx"], metadata=metadata)
        scheduler.safe_point()  # export and quantisation are long stretches with no safe point inside
    except ExportError as e:
        why = f"ONNX export failed: {e}"
        return Onnx(fp32=OnnxModel(available=False, reason=why), int8=OnnxModel(available=False, reason=why))
    out["fp32"] = OnnxModel(available=True, bytes=(work / FILES["onnx"]).stat().st_size,
                            accuracy=onnx_accuracy(work / FILES["onnx"], x, y))
    deploy = state.deploy or Deploy.default()
    calib = data.calibration(min(deploy.calibration_samples, len(data.train)), seed=recipe.seed)
    try:
        out["int8"] = deploy_int8(work / FILES["onnx"], work / FILES["onnx_int8"], deploy, calib.numpy(), x, y,
                                  metadata)
        scheduler.safe_point()
    except Exception as e:
        out["int8"] = OnnxModel(available=False, reason=f"ONNX Runtime quantisation failed: {first_line(e)}")
    return Onnx(fp32=out["fp32"], int8=out["int8"])


# receives a RunResult as far as it goes (status "partial", `pending` naming what is still being measured), so
# a page can show accuracy and size while ONNX export and latency timing go on
Partial = Callable[[RunResult], None]


def prepare(recipe: Recipe, workdir: str | os.PathLike[str], *, progress: Progress | None = None,
            partial: Partial | None = None) -> RunResult:
    """Everything but latency: compress, pack, unpack, accuracy of the unpacked model, files and sizes."""
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    key = run_key(recipe)
    card = read_card(recipe.checkpoint_path)
    for field, have, want in (("architecture", card["architecture"], recipe.model),
                              ("dataset", card["dataset"], recipe.dataset)):
        if have != want:
            raise ValueError(f"checkpoint {str(recipe.checkpoint_path)!r} is a {have!r} {field}, not the "
                             f"recipe's {want!r}")
    with scheduler.work():  # at the priority of the thread's caller (a page, the landscape, a sweep)
        if recipe.checkpoint_path.suffix == ".onnx":
            return prepare_onnx(recipe, work, key)
        compute_threads(train_threads())
        return _prepare_torch(recipe, work, key, t0, timings, progress, partial)


def _prepare_torch(recipe: Recipe, work: Path, key: str, t0: float, timings: dict[str, Any],
                   progress: Progress | None, partial: Partial | None = None) -> RunResult:
    baseline, card = load_baseline(recipe.checkpoint_path)
    data = baseline_data(card)
    base_scores = _baseline_scores(recipe.checkpoint_path, data)  # scored beside the compression
    timings["load"] = round(time.perf_counter() - t0, 3)

    t = time.perf_counter()
    tune = data.with_train_subset(finetune_samples(recipe), recipe.seed)  # accuracy stays on the whole test split
    stage = _stages(progress)
    scored_beside = not base_scores.done()  # then the resident set's growth is not the fine-tuning's alone
    res, train_rss = compute.peak_rss_growth(lambda: compress(baseline, recipe, tune, progress=stage("compress"),
                                                             seed=recipe.seed), interval_s=TRAIN_RSS_INTERVAL_S)
    timings["compress"] = round(time.perf_counter() - t, 3)
    timings["steps"] = res.timings

    t = time.perf_counter()
    stage("pack")(0.0, "packing and rebuilding the model from the packed bytes")
    architecture = res.state.info.get("architecture") or {"name": card["architecture"], "kwargs": card["arch_kwargs"]}
    blob = packing.pack(res.model, res.state, architecture)
    (work / FILES["packed"]).write_bytes(blob)
    unpacked = packing.unpack((work / FILES["packed"]).read_bytes()).model
    # compared by name: a technique may leave the state_dict in another order (QAT's parametrization
    # re-registers each weight after its bias), which is the same model
    ref, got = res.model.state_dict(), unpacked.state_dict()
    identical = ref.keys() == got.keys() and all(
        torch.equal(ref[k].view(torch.uint8) if ref[k].is_floating_point() else ref[k],
                    got[k].view(torch.uint8) if got[k].is_floating_point() else got[k]) for k in ref)
    if not identical:
        raise RuntimeError("the packed file does not reproduce the compressed weights bit for bit")
    timings["pack"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    stage("evaluate")(0.0, f"measuring accuracy on {len(data.test):,} test images")
    total, zeros = weight_sparsity(unpacked)
    waited = [0.0]

    def baseline_scores() -> dict[str, Any]:
        t_wait = time.perf_counter()
        out: dict[str, Any] = scheduler.result(base_scores)  # waits without holding up a timing; takes our priority
        waited[0] += time.perf_counter() - t_wait
        return out

    def shown(acc: dict[str, Any], base_acc: dict[str, Any], scored: int | None, fell: Collapse | None) -> None:
        """Accuracy and the packed size exist (of the images scored so far): shown while the rest is measured."""
        if partial is None:
            return
        y = data.test.y[acc["index"]] if scored else data.test.y
        unc = uncertainty(acc, {**base_acc, "pred": base_acc["pred"][acc["index"]]} if scored else base_acc, y)
        first = sharpen.words(scored, len(data.test))
        partial(_marked(fell, RunResult(
            schema=SCHEMA_VERSION, status="partial", key=key,
            pending=(["accuracy"] if scored else []) + ["sizes", "onnx", "latency"],
            recipe=recipe.to_dict(), label=recipe.label(), model=recipe.model, dataset=recipe.dataset,
            test_samples=len(data.test), scored=scored or len(data.test), accuracy=_accuracy(acc),
            baseline_accuracy=_accuracy(base_acc), accuracy_ci=unc["accuracy_ci"], vs_baseline=unc["vs_baseline"],
            accuracy_delta=acc["top1"] - 100.0 * float((base_acc["pred"][acc["index"]] == y).float().mean())
            if scored else acc["top1"] - base_acc["top1"],
            size={"packed_bytes": len(blob)}, baseline_size={"file_bytes": recipe.checkpoint_path.stat().st_size},
            reduction_factor={"vs_fp32_file": {
                "packed_bytes": recipe.checkpoint_path.stat().st_size / max(len(blob), 1)}},
            params=sum(p.numel() for p in unpacked.parameters()), baseline_params=card["params"],
            finetune_samples=len(tune.train), sparsity=zeros / total if total else 0.0,
            notes=list(dict.fromkeys([*res.state.notes, *([first] if first else [])])))))

    acc = sharpen.score(unpacked, data.test, eval_workers(),  # rebuilt from the bytes
                        None if partial is None else lambda seen, k: shown(seen, baseline_scores(), k, None))
    save_predictions(work / FILES["predictions"], acc["pred"])
    base_acc = baseline_scores()
    timings["baseline_scores_wait"] = round(waited[0], 3)
    unc = uncertainty(acc, base_acc, data.test.y)  # key by key: mypy refuses a TypedDict unpacked by **
    fell = collapse.detect(classes=data.num_classes, correct=acc["correct"]["top1"], n=acc["n"],
                           baseline_correct=base_acc["correct"]["top1"], losses=res.state.losses,
                           emptied=emptied_layers(unpacked)) if recipe.steps else None
    shown(acc, base_acc, None, fell)
    timings["evaluate"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    sizes: dict[str, Any] = {"state_dict_bytes": size.state_dict_bytes(unpacked, res.state.float_format)}
    sizes["file_bytes"] = size.write_checkpoint(unpacked, work / FILES["checkpoint"], res.state.float_format)
    sizes["gzip_bytes"] = size.gzip_file(work / FILES["checkpoint"], work / FILES["gzip"])
    sizes["zstd_bytes"] = size.zstd_file(work / FILES["checkpoint"], work / FILES["zstd"])
    sizes["packed_bytes"] = len(blob)
    stage("export")(0.0, "exporting ONNX and quantising it to int8 with ONNX Runtime")
    onnx = _onnx_stage(unpacked, res.state, data, work, recipe, feeding.onnx_metadata(card, data))
    sizes["onnx_bytes"] = onnx["fp32"].get("bytes")
    sizes["onnx_int8_bytes"] = onnx["int8"].get("bytes")
    timings["export_and_sizes"] = round(time.perf_counter() - t, 3)

    mac = compute.macs(unpacked, data.input_shape)
    total, zeros = weight_sparsity(unpacked)
    base_sizes = _baseline_sizes(str(recipe.checkpoint_path), recipe.checkpoint_path.stat().st_mtime_ns)
    layers = _layers(unpacked, res.state, packing.tensor_report(blob), mac)
    density_macs = sum(r["macs"] * (1 - r["sparsity"]) for r in layers)
    timings["total_prepare"] = round(time.perf_counter() - t0, 3)
    return _marked(fell, RunResult(
        schema=SCHEMA_VERSION, status="ok", key=key, recipe=recipe.to_dict(), label=recipe.label(),
        model=recipe.model, dataset=recipe.dataset, test_samples=acc["n"], accuracy=_accuracy(acc),
        accuracy_source="PyTorch model rebuilt from the packed file", baseline_accuracy=_accuracy(base_acc),
        accuracy_delta=acc["top1"] - base_acc["top1"], accuracy_ci=unc["accuracy_ci"], vs_baseline=unc["vs_baseline"],
        onnx=onnx,
        sparsity=zeros / total if total else 0.0, params=sum(p.numel() for p in unpacked.parameters()),
        baseline_params=card["params"], nonzero_params=sum(int(torch.count_nonzero(p)) for p in unpacked.parameters()),
        macs=mac["total"], macs_nonzero_theoretical=int(density_macs), size=sizes, baseline_size=base_sizes,
        size_check=size.check_file_against_tensors(sizes["file_bytes"], sizes["state_dict_bytes"],
                                                   len(unpacked.state_dict())),
        reduction_factor=size.reduction_factors(
            {k: v for k, v in sizes.items() if k != "state_dict_bytes"}, base_sizes["file_bytes"], base_sizes),
        theoretical=packing.theoretical_bits(res.model, res.state), layers=layers,
        histograms=_histograms(baseline, unpacked), compression=_jsonable(res.state.info),
        notes=list(dict.fromkeys(res.state.notes)),
        memory={"finetune_cpu_rss_growth_bytes": None if scored_beside else train_rss},
        timings=timings, versions=versions(), input_shape=list(data.input_shape),
        preprocessing=feeding.fed(data, feeding.given_of(card)),
        baseline_sha256=_sha(str(recipe.checkpoint_path), recipe.checkpoint_path.stat().st_mtime_ns),
        threads={"compress_and_evaluate": train_threads()}, train_samples=len(data.train),
        finetune_samples=len(tune.train)))


def _marked(fell: Collapse | None, result: RunResult) -> RunResult:
    """The run with its collapse verdict; the field is absent where the model did not collapse (as in older runs)."""
    if fell:
        result["collapse"] = fell
    return result


def _accuracy(acc: dict[str, Any]) -> Accuracy:
    return Accuracy(top1=acc["top1"], top3=acc["top3"], top5=acc["top5"], loss=acc["loss"])


STAGES = {"compress": (0.0, 0.6), "pack": (0.6, 0.65), "evaluate": (0.65, 0.7), "export": (0.7, 0.85),
          "latency": (0.85, 1.0)}


def _stages(progress: Progress | None) -> Callable[[str], Progress]:
    """Progress of one stage of a run, mapped into its share of the whole bar, so every phase reports."""
    def stage(name: str) -> Progress:
        lo, hi = STAGES[name]
        furthest = [0.0]  # a stage that starts a part again (timing re-taken under load) never moves the bar back

        def report(fraction: float, message: str) -> None:
            scheduler.safe_point()  # every progress report (each stage, every few fine-tuning steps) is one
            furthest[0] = max(furthest[0], min(max(fraction, 0.0), 1.0))
            if progress is not None:
                progress(lo + (hi - lo) * furthest[0], message)
        return report
    return stage


@scheduler.timing  # the whole stage holds the quiet slot: none of our other work runs beside a timing
def time_run(result: RunResult, workdir: str | os.PathLike[str], *, gpu: bool = True,
             progress: Progress | None = None) -> RunResult:
    """Latency and inference memory of the artifacts in `workdir` (one run at a time: never in parallel).
    Each engine's speed-up is against the baseline in the same engine, timed in the same rounds; the baseline's
    own run is not compared with itself (1.0 by construction)."""
    work = Path(workdir)
    report, what = _stages(progress)("latency"), "timing latency, the baseline in the same rounds"
    report(0.0, what)

    def between_rounds(f: float) -> None:
        scheduler.between_rounds()
        report(f, what)

    if result.get("format") == "onnx":
        return time_onnx(result, work, threads(), latency_budget_s(), between_rounds=between_rounds)
    t = time.perf_counter()
    model = packing.unpack((work / FILES["packed"]).read_bytes()).model
    recipe = Recipe.from_dict(result["recipe"])
    own = not recipe.steps  # the baseline's own run
    reference = None if own else load_baseline(recipe.checkpoint_path)[0]
    base_onnx = {} if own else timing.baseline_onnx(recipe)
    shape = tuple(result["input_shape"])
    onnx = result["onnx"]
    lat = measure_latency(
        model, shape, onnx_fp32=str(work / FILES["onnx"]) if onnx["fp32"].get("available") else None,
        onnx_int8=str(work / FILES["onnx_int8"]) if onnx["int8"].get("available") else None,
        onnx_reason=None if onnx["fp32"].get("available") else onnx["fp32"]["reason"],
        threads=threads(), budget_s=latency_budget_s(), gpu=gpu, reference=reference, is_baseline=own,
        reference_onnx_fp32=base_onnx.get("fp32"), reference_onnx_int8=base_onnx.get("int8"),
        reference_reason=base_onnx.get("reason"), reference_times=timing.reference_times(recipe, threads()),
        between_rounds=between_rounds)
    timing.update_reference(recipe, threads(), lat)
    result = timing.apply(result, lat)
    result["memory"] = {**result.get("memory", {}), **compute.inference_memory(model, shape)}
    result["timings"] = {**result["timings"], "latency": round(time.perf_counter() - t, 3)}
    return result


def run_recipe(recipe: Recipe, *, workdir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
               latency: bool = True, partial: Partial | None = None) -> RunResult:
    """Run `recipe` and return its RunResult. Files go to `workdir` (kept) or a scratch folder (removed)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(scratch.folder("run"))
        stack.enter_context(scheduler.work())  # one piece of work from compression to timing
        result = prepare(recipe, workdir, progress=progress, partial=partial)
        if partial is not None and latency:
            partial({**result, "status": "partial", "pending": ["latency"]})
        if latency:
            result = time_run(result, workdir, progress=progress)
        else:  # stored untimed (result.untimed): timed later from its files, or first by whoever asks for it
            result["hardware"] = hardware(threads())
            result["pending"] = [UNTIMED]
        return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float):
        return round(obj, 6)
    return obj
