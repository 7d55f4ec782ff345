"""The figures a run measures, as the measure layer returns them and a RunResult (explorer.run.result) keeps them:
accuracy, the paired comparison with the baseline, the ONNX models, latency and speed-ups. They live here, below
every layer that makes or reads them, so a figure has one type from the function that measures it to the page.
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypedDict


class Accuracy(TypedDict):
    top1: float  # percent of the test images
    top3: float
    top5: float
    loss: float | None  # None where ONNX Runtime computed the figures


class PairedComparison(TypedDict, total=False):
    """The run against its baseline on the same test images (explorer.core.stats.vs_baseline)."""

    both_right: int
    baseline_only: int  # the baseline right, the run wrong
    run_only: int
    both_wrong: int
    n: int
    delta_ci: list[float]  # of the top-1 change, in points
    p_value: float  # exact McNemar
    significant: bool
    confidence: float
    method: str


class ControlComparison(PairedComparison, total=False):
    """The run against its same-budget control, the baseline fine-tuned as the run's steps fine-tune with no
    compression (explorer.run.control): the paired comparison on the same test images, "baseline" there standing
    for the control, with the control's run key, its training epochs and budget in words, its top-1 with its
    Wilson interval, and the run's top-1 minus the control's (points)."""

    key: str
    epochs: int
    budget: str
    top1: float
    top1_ci: list[float]
    delta: float


class OnnxModel(TypedDict, total=False):
    """The fp32 export or the int8 model of a run; `reason` instead of the figures where it is unavailable."""

    available: Required[bool]
    reason: str
    bytes: int
    accuracy: dict[str, float]
    # int8 only: how it was made (explorer.compress.base.Deploy)
    mode: str
    calibration: str
    fp32_layers: list[str]
    symmetric_weights: bool
    from_recipe: bool


class Onnx(TypedDict):
    fp32: OnnxModel
    int8: OnnxModel


class LatencyFigure(TypedDict, total=False):
    """One engine at one batch size (explorer.measure.latency): milliseconds per batch."""

    available: Required[bool]
    reason: str
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    ci_ms: list[float]  # of the median
    spread_pct: float | None
    runs: int
    round_ms: list[float]  # per-round medians, paired with the baseline's for the speed-up
    rounds: int
    round_sessions: list[int]  # the rounds of each session they were pooled from (explorer.measure.speedup)
    peak_memory_bytes: int  # of one batch on the GPU, where one engine is timed alone (latency.torch_cuda)


class Speedup(TypedDict, total=False):
    """A speed-up (explorer.measure.speedup): the baseline's time over the run's, the median of per-round ratios
    in interleaved rounds; above 1 the run is faster. Read it through `speed`, never directly: a "disturbed"
    figure failed its checks and is never shown as a number."""

    ratio: Required[float]
    ci: Required[list[float]]
    rounds: int
    status: Literal["measured", "disturbed", "baseline"]  # baseline: 1.0 by construction, not measured
    against: str  # the engine the baseline ran in: the same engine (speedup) or PyTorch fp32 (deployment_gain)


Latency = dict[str, dict[str, LatencyFigure]]  # engine -> batch key ("b1", "b256") -> figure
Speedups = dict[str, dict[str, Speedup]]


class Uncertainty(TypedDict):
    """What an accuracy carries besides the point (explorer.measure.accuracy.uncertainty)."""

    accuracy_ci: dict[str, list[float]]  # Wilson intervals of top1 and top5, in percent
    vs_baseline: PairedComparison


class Timing(TypedDict):
    """One timing of a run and its baseline (explorer.measure.speedup.measure_latency), as explorer.run.timing
    writes it into the RunResult."""

    engines: Latency
    speedup: Speedups
    deployment_gain: Speedups
    baseline: Latency  # the baseline's figures from the same sessions
    timing_quality: dict[str, Any]  # the sessions and every check
    threads: int
    batches: list[int]
    hardware: dict[str, Any]
    reference: str
    deployment_reference: str


class Collapse(TypedDict):
    """Why a run's model is taken to have collapsed (explorer.run.collapse): it guesses, so its figures are no
    trade-off. `reasons` holds "top1_at_chance", "loss_at_chance" and "layer_emptied", as they apply."""

    reasons: list[str]
    layers_emptied: list[str]  # the Conv and Linear layers whose every weight is zero
    classes: int
    chance_top1: float  # percent: a uniform guess among the classes
    chance_loss: float  # ln(classes): the cross-entropy of a uniform guess
    final_loss: float | None  # the last fine-tuning epoch's mean training loss (None: no fine-tuning)
