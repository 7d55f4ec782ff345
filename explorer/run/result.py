"""The RunResult: what one configuration measured, as plain JSON data with its types written down here.

The JSON contract (docs/ARCHITECTURE.md, and `schema`, explorer.SCHEMA_VERSION) is what the cache stores,
`run --json` prints and every chart reads. The type below says which keys it has, and its parts' types (Accuracy,
Onnx, Latency, ...) are explorer.core.figures', where the measure layer makes them, named here too; a RunResult is
built only in `explorer.run.runner` (PyTorch baselines) and `explorer.run.onnx` (ONNX baselines).
`flatten` turns one into a table row and `results_frame` many into a DataFrame; the latency columns are
named by `explorer.core.engines`.
"""

from __future__ import annotations

import functools
import json
import traceback
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Required, TypedDict, cast

import pandas as pd

from explorer.compress.base import blank_columns, config_from_dict
from explorer.compress.finetune import budget_words, is_control
from explorer.compress.recipe import Recipe, recipe_words
from explorer.core.engines import B1, TORCH_CPU, gain_col, lat_col, reltime_col, speedup_col, state_col

# the figures of a run, named here too for the modules that take them with RunResult
from explorer.core.figures import Accuracy as Accuracy
from explorer.core.figures import Collapse as Collapse
from explorer.core.figures import ControlComparison as ControlComparison
from explorer.core.figures import Latency as Latency
from explorer.core.figures import LatencyFigure as LatencyFigure
from explorer.core.figures import Onnx as Onnx
from explorer.core.figures import OnnxModel as OnnxModel
from explorer.core.figures import PairedComparison as PairedComparison
from explorer.core.figures import Speedup as Speedup
from explorer.core.figures import Speedups as Speedups
from explorer.core.version import SCHEMA_VERSION

# the files a run writes into its folder; the cache keeps the artifacts (packed, ONNX, predictions)
FILES = {"packed": "model.xpk", "checkpoint": "model.safetensors", "gzip": "model.safetensors.gz",
         "zstd": "model.safetensors.zst", "onnx": "model.onnx", "onnx_int8": "model.int8.onnx",
         "predictions": "predictions.npy"}
ARTIFACT_KINDS = ("packed", "onnx", "onnx_int8", "predictions")  # the files the cache keeps of a run
SIZE_KINDS = ("file_bytes", "gzip_bytes", "zstd_bytes", "packed_bytes", "onnx_bytes", "onnx_int8_bytes")


class RunResult(TypedDict, total=False):
    """One configuration, measured. A failed run has `error` (and `traceback`) and no figures; a partial one
    (status "partial", streamed while the run goes on) names what is `pending`."""

    schema: Required[int]
    status: Required[Literal["ok", "failed", "partial"]]
    recipe: Required[dict[str, Any]]  # the Recipe's JSON
    label: Required[str]
    model: Required[str]
    dataset: Required[str]
    key: str  # explorer.run.runner.run_key
    error: str
    traceback: str
    pending: list[str]
    format: Literal["onnx"]  # an ONNX baseline: only the figures that apply without PyTorch layers
    unsupported_reason: str
    # accuracy, measured on the model rebuilt from the packed file
    test_samples: int
    scored: int  # a partial result's test images scored so far (a stratified first part: run.sharpen)
    accuracy: Accuracy
    accuracy_source: str
    baseline_accuracy: Accuracy
    accuracy_delta: float  # points of top-1, negative = worse
    accuracy_ci: dict[str, list[float]]  # Wilson intervals of top1 and top5
    vs_baseline: PairedComparison
    # against the same-budget control where the recipe fine-tunes: added where both runs exist, never stored by a run
    vs_control: ControlComparison
    onnx: Onnx
    # the model
    sparsity: float
    params: int
    baseline_params: int
    nonzero_params: int
    macs: int | None
    macs_nonzero_theoretical: int | None
    layers: list[dict[str, Any]]
    histograms: dict[str, dict[str, Any]]
    compression: dict[str, Any]  # each step's report, by kind
    notes: list[str]
    collapse: Collapse  # present only where the model collapsed: then no view shows its figures as a trade-off
    # sizes of real files, in bytes, and the reduction factors against the fp32 baseline's
    size: dict[str, int | None]
    baseline_size: dict[str, int]
    size_check: dict[str, Any] | None
    reduction_factor: dict[str, dict[str, float]]  # vs_fp32_file and same_kind, per size kind
    theoretical: dict[str, Any] | None
    # speed, timed in interleaved rounds with the baseline (explorer.measure.speedup)
    latency: Latency
    speedup: Speedups  # like for like: against the baseline in the same engine and batch size
    speedup_reference: str
    deployment_gain: Speedups  # ONNX Runtime engines against the baseline as run today, PyTorch fp32 on the CPU
    deployment_reference: str
    baseline_latency: Latency  # the baseline's figures from the same timing rounds as the run's
    timing_quality: dict[str, Any]  # the timing sessions (rounds kept and dropped, CPU share, load) and every check
    latency_threads: int
    hardware: dict[str, Any]
    memory: dict[str, Any]
    # how it was computed
    timings: dict[str, Any]  # seconds per stage
    versions: dict[str, Any]
    input_shape: list[int]
    preprocessing: dict[str, Any]  # what the model was fed: input_size, mean, std, and what its user gave (`given`)
    baseline_sha256: str  # of the weights file the run compressed
    threads: dict[str, int]
    train_samples: int
    finetune_samples: int
    cache: dict[str, Any]  # added when served: {"hit", "key", ...}; never stored


# what every view reads from a successful run without asking whether it is there
OK_NEEDS = ("accuracy", "baseline_accuracy", "accuracy_delta", "test_samples", "size", "baseline_size",
            "reduction_factor")


def _fits(value: Any, hint: Any) -> bool:
    """A shallow check of one field against its annotation: the outer type only (a dict is a dict, a
    TypedDict too), None only where the annotation allows it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (typing.Required, typing.NotRequired):
        return _fits(value, args[0])
    if hint is type(None):
        return value is None
    if typing.is_typeddict(hint):
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


@functools.cache
def _hints() -> dict[str, Any]:
    """RunResult's field annotations, resolved once (the cache checks every entry it lists or serves)."""
    return typing.get_type_hints(RunResult)


def malformed(result: object) -> str | None:
    """What is wrong with a stored run's JSON in its shape (a field missing, or of the wrong type), or None:
    a cache entry whose checksums match can still hold a field the views would fail on."""
    if not isinstance(result, dict):
        return f"it holds {type(result).__name__}, not a run"
    hints = _hints()
    needs = [*RunResult.__required_keys__, *(OK_NEEDS if result.get("status") == "ok" else ())]
    missing = sorted(k for k in needs if k not in result)
    if missing:
        return f"it lacks {', '.join(missing)}"
    wrong = sorted(k for k, v in result.items() if k in hints and not _fits(v, hints[k]))
    return f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} of the wrong type" if wrong else None


def failed(recipe: Recipe, error: BaseException) -> RunResult:
    """A run that failed: recorded with its error, never mistaken for a result."""
    msg = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    return RunResult(schema=SCHEMA_VERSION, status="failed", recipe=recipe.to_dict(), label=recipe.label(),
                     model=recipe.model, dataset=recipe.dataset, error=msg,
                     traceback="".join(traceback.format_exception(error))[-4000:])


def to_json(result: RunResult, indent: int | None = None) -> str:
    """The JSON that is stored and printed: the result without the cache's serving tag."""
    return json.dumps({k: v for k, v in result.items() if k != "cache"}, indent=indent)


# ---------------------------------------------------------------- how every view reads a speed-up

DISTURBED = "timing disturbed: re-timing"
GAVE_UP = "timing disturbed: the machine was too busy"
LATER_RETIMES = 3  # later re-times of a stored run (explorer.run.retime) before its figures stay disturbed
UNCHECKED = "not shown: timed by an earlier version, before speed-ups checked themselves"


@dataclass(frozen=True)
class Speed:
    """A speed-up (or deployment gain) as every view shows it: tiles, tables, charts, the sweet spot, the
    sweep CSV, the report and the summary all read it here, so they agree by construction. `ratio`, `lo`
    and `hi` are None where the figure must not be shown as a number (disturbed, or not timed yet)."""

    state: str  # baseline | faster | slower | within noise | disturbed | pending
    ratio: float | None
    lo: float | None
    hi: float | None
    text: str  # "4.52x faster", "within noise", "timing disturbed: re-timing", "the baseline itself (1.00x)"

    @property
    def shown(self) -> bool:
        return self.ratio is not None


def speed(result: Mapping[str, Any], engine: str, batch: str, figure: str = "speedup") -> Speed:
    """The run's speed-up in `engine` at `batch` against the baseline in the same engine (figure "speedup"), or
    its deployment gain against the baseline in PyTorch fp32 (figure "deployment_gain")."""
    v = (result.get(figure) or {}).get(engine, {}).get(batch)
    if not v:
        text = "timing..." if result.get("status") == "partial" else "not timed yet" if untimed(result) else "n/a"
        return Speed("pending", None, None, None, text)
    status = v.get("status")
    if status == "baseline":
        return Speed("baseline", 1.0, 1.0, 1.0, "the baseline itself (1.00x)")
    if status != "measured":  # disturbed, or a figure from before the checks existed (a schema 4 run in the cache)
        spent = len((result.get("timing_quality") or {}).get("later") or []) >= LATER_RETIMES
        return Speed("disturbed", None, None, None, UNCHECKED if not status else GAVE_UP if spent else DISTURBED)
    ratio, (lo, hi) = v["ratio"], v["ci"]
    if lo <= 1.0 <= hi:
        return Speed("within noise", ratio, lo, hi, "within noise")
    if ratio >= 1:
        return Speed("faster", ratio, lo, hi, f"{ratio:.2f}x faster")
    return Speed("slower", ratio, lo, hi, f"{1 / ratio:.2f}x slower")


def speed_with_interval(sp: Speed) -> str:
    """'4.52x faster (95% interval 4.31x to 4.70x)', or the state in words."""
    if sp.state in ("baseline", "pending", "disturbed") or sp.lo is None:
        return sp.text
    return f"{sp.text} ({sp.ratio:.2f}x, 95% interval {sp.lo:.2f}x to {sp.hi:.2f}x)"


def disturbed_figures(result: Mapping[str, Any]) -> list[str]:
    """The speed figures of a run that failed their checks after every re-time."""
    return list((result.get("timing_quality") or {}).get("disturbed") or [])


UNTIMED = "latency"  # what a stored run measured without its latency has pending


def untimed(result: Mapping[str, Any]) -> bool:
    """Whether a stored run was measured without its latency (a landscape point: its accuracy and sizes first, so
    the curves fill; its timing follows, and whoever asks for the run with its latency times it first)."""
    return result.get("status") == "ok" and UNTIMED in (result.get("pending") or [])


def first_timing(timed: RunResult) -> RunResult:
    """A run stored untimed, as its first timing leaves it: nothing pending (no re-time either)."""
    first = RunResult(**timed)
    first.pop("pending", None)
    return first


def needs_retime(result: Mapping[str, Any]) -> bool:
    """Whether a stored run should be timed (again) from its stored files (explorer.run.retime): it was stored
    untimed, or some speed figure of it was disturbed and it has had fewer than LATER_RETIMES later re-times."""
    if untimed(result):
        return True
    later = (result.get("timing_quality") or {}).get("later") or []
    return result.get("status") == "ok" and bool(disturbed_figures(result)) and len(later) < LATER_RETIMES


# ---------------------------------------------------------------- one table row per result


def _recipe_params(recipe: dict[str, Any]) -> dict[str, Any]:
    """The grid point's columns, as each step's technique gives them (StepConfig.columns)."""
    p: dict[str, Any] = {**blank_columns(), "technique": "baseline"}
    steps = recipe.get("steps", [])
    for s in steps:
        try:
            p.update(config_from_dict(s).columns())
        except (ValueError, TypeError):
            pass  # a step no technique reads (a stored run of an older explorer): its columns stay at their defaults
    p["technique"] = "+".join(str(s.get("kind")) for s in steps) or "baseline"
    p["control"] = is_control(recipe)  # a same-budget control: a reference line, not a compression to choose
    if p["control"]:
        try:
            p["control_budget"] = budget_words(Recipe.from_dict(dict(recipe)))
        except (ValueError, TypeError):
            pass
    return p


def flatten(result: RunResult) -> dict[str, Any]:
    """One table row from a RunResult: accuracy, sizes, factors, latency medians, the grid point."""
    recipe = result.get("recipe", {})
    row: dict[str, Any] = {"key": result.get("key"), "label": result.get("label"), "status": result.get("status"),
                           "error": result.get("error"), "model": result.get("model"), "dataset": result.get("dataset"),
                           **_recipe_params(recipe),
                           "words": recipe_words(recipe), "seed": recipe.get("seed", 0),
                           "steps": len(recipe.get("steps", [])),
                           "config": json.dumps({k: v for k, v in recipe.items() if k not in ("seed", "name")},
                                                sort_keys=True),
                           "recipe_json": json.dumps(recipe, sort_keys=True),
                           "cache_hit": (result.get("cache") or {}).get("hit")}
    if result.get("status") != "ok":
        return row
    acc = result["accuracy"]
    row.update(top1=acc["top1"], top3=acc["top3"], top5=acc["top5"], baseline_top1=result["baseline_accuracy"]["top1"],
               accuracy_delta=result["accuracy_delta"], sparsity=result["sparsity"], params=result["params"],
               nonzero_params=result["nonzero_params"], macs=result["macs"], test_samples=result.get("test_samples"),
               collapsed=bool(result.get("collapse")))
    for k, (lo, hi) in (result.get("accuracy_ci") or {}).items():
        row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
    vs = result.get("vs_baseline") or {}
    if vs:
        row.update({c: vs[c] for c in ("both_right", "baseline_only", "run_only", "both_wrong")},
                   delta_lo=vs["delta_ci"][0], delta_hi=vs["delta_ci"][1], p_value=vs["p_value"],
                   significant=vs["significant"])
    vc = result.get("vs_control") or {}
    if vc:
        row.update(control_key=vc["key"], control_epochs=vc["epochs"], control_budget=vc["budget"],
                   control_top1=vc["top1"], control_top1_lo=vc["top1_ci"][0], control_top1_hi=vc["top1_ci"][1],
                   control_delta=vc["delta"], control_delta_lo=vc["delta_ci"][0], control_delta_hi=vc["delta_ci"][1],
                   control_p_value=vc["p_value"], control_significant=vc["significant"])
    for k in SIZE_KINDS:
        row[k] = result["size"].get(k)
        row[f"rf_{k.replace('_bytes', '')}"] = result["reduction_factor"]["vs_fp32_file"].get(k)
        row[f"rf_same_{k.replace('_bytes', '')}"] = result["reduction_factor"]["same_kind"].get(k)
    for engine, per_batch in (result.get("latency") or {}).items():
        for b, v in per_batch.items():
            ok = v.get("available")
            row[lat_col(engine, b)] = v.get("median_ms") if ok else None
            row[lat_col(engine, b, "p90")] = v.get("p90_ms") if ok else None
            ci = (v.get("ci_ms") or (None, None)) if ok else (None, None)
            row[lat_col(engine, b, "lo")], row[lat_col(engine, b, "hi")] = ci[0], ci[1]
    for figure, col in (("speedup", speedup_col), ("deployment_gain", gain_col)):
        speeds: dict[str, Any] = cast(dict[str, Any], result).get(figure) or {}
        for engine, per_batch in speeds.items():
            for b in per_batch:
                sp = speed(cast(dict[str, Any], result), engine, b, figure)
                row[col(engine, b)], row[col(engine, b, "lo")], row[col(engine, b, "hi")] = sp.ratio, sp.lo, sp.hi
                row[state_col(col(engine, b))] = sp.state
                if figure == "speedup":
                    row[reltime_col(engine, b)] = None if sp.ratio is None else round(1 / sp.ratio, 4)
                    row[reltime_col(engine, b, "lo")] = None if sp.hi is None else round(1 / sp.hi, 4)
                    row[reltime_col(engine, b, "hi")] = None if sp.lo is None else round(1 / sp.lo, 4)
    onnx = result.get("onnx", {})
    row["onnx_int8_top1"] = (onnx.get("int8", {}).get("accuracy") or {}).get("top1")
    row["onnx_fp32_top1"] = (onnx.get("fp32", {}).get("accuracy") or {}).get("top1")
    row["latency_ms"] = row.get(lat_col(TORCH_CPU, B1))
    return row


def results_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    return pd.DataFrame([flatten(r) for r in results])
