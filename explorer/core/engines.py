"""The names latency figures are stored under: the engines a model is timed on, the batch sizes, and the
table columns built from them. Defined here once; everything that writes or reads a RunResult's latency
and speed-ups uses these names."""

from __future__ import annotations

TORCH_CPU = "torch_cpu_fp32"  # PyTorch eager on the CPU, fp32: the baseline's own runtime
ORT_CPU_FP32 = "onnxruntime_cpu_fp32"
ORT_CPU_INT8 = "onnxruntime_cpu_int8"
TORCH_CUDA_FP32 = "torch_cuda_fp32"
TORCH_CUDA_FP16 = "torch_cuda_fp16"
TORCH_CUDA_BF16 = "torch_cuda_bf16"
ORT_CUDA_FP32 = "onnxruntime_cuda_fp32"
CPU_ENGINES = (TORCH_CPU, ORT_CPU_FP32, ORT_CPU_INT8)
GPU_ENGINES = (TORCH_CUDA_FP32, TORCH_CUDA_FP16, TORCH_CUDA_BF16, ORT_CUDA_FP32)
ENGINES = CPU_ENGINES + GPU_ENGINES

BATCH_SIZES = (1, 256)


def batch_key(n: int) -> str:
    """How a batch size is named in a RunResult's latency: 256 -> "b256"."""
    return f"b{n}"


B1, B256 = batch_key(1), batch_key(256)


def lat_col(engine: str, batch: str, stat: str | None = None) -> str:
    """The table column of a latency figure: lat_<engine>_<batch>_ms (the median), or _p90_ms, _lo_ms,
    _hi_ms (the median's interval)."""
    return f"lat_{engine}_{batch}_{stat}_ms" if stat else f"lat_{engine}_{batch}_ms"


def speedup_col(engine: str, batch: str, bound: str | None = None) -> str:
    """The table column of a speed-up over the baseline: speedup_<engine>_<batch>, or _lo, _hi (its interval)."""
    return f"speedup_{engine}_{batch}_{bound}" if bound else f"speedup_{engine}_{batch}"


def gain_col(engine: str, batch: str, bound: str | None = None) -> str:
    """The table column of a deployment gain (the run in `engine` against the baseline in PyTorch fp32):
    gain_<engine>_<batch>, or _lo, _hi."""
    return f"gain_{engine}_{batch}_{bound}" if bound else f"gain_{engine}_{batch}"


def state_col(column: str) -> str:
    """The column saying how to read a speed-up or gain column: baseline, faster, slower, within noise, disturbed."""
    return f"{column}_state"


def reltime_col(engine: str, batch: str, bound: str | None = None) -> str:
    """The table column of a run's time relative to the baseline's in the same engine (1 / the speed-up; 1 is
    the baseline, lower is faster): reltime_<engine>_<batch>, or _lo, _hi. Charts plot it: it carries the
    like-for-like comparison, where absolute milliseconds drift with the machine's load from run to run."""
    return f"reltime_{engine}_{batch}_{bound}" if bound else f"reltime_{engine}_{batch}"
