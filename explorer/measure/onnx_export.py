"""ONNX export, the int8 path through ONNX Runtime's quantisation tools, and ONNX Runtime accuracy.

The float model is exported without the explorer's simulated activation quantisation; the int8 model
is ONNX Runtime's own QDQ quantisation of that export (per-channel weights, calibrated activations),
which its graph optimiser turns into integer kernels: real int8 bytes and real int8 speed.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from explorer.compress.base import Deploy
from explorer.compress.quantize import remove_activation_quant
from explorer.core import scratch
from explorer.core.errors import first_line
from explorer.core.figures import OnnxModel
from explorer.core.safepoint import safe_point
from explorer.core.train import scores
from explorer.measure.latency import ort_session

if TYPE_CHECKING:
    import onnx


class ExportError(RuntimeError):
    """The model could not be exported; the message is the exporter's reason."""


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike[str], *,
                half: bool = False, metadata: Mapping[str, str] | None = None) -> None:
    """Export with a dynamic batch axis; TorchScript-based exporter first (fast), dynamo as a fallback. `metadata`
    goes into the file's metadata_props (what its input must be: explorer.core.preprocessing.onnx_metadata)."""
    m = remove_activation_quant(copy.deepcopy(model)).eval()
    x = torch.zeros(1, *input_shape)
    if half:
        m, x = m.half(), x.half()
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kw = ({"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else
                      {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}, "opset_version": 17})
                torch.onnx.export(m, (x,), str(path), dynamo=dynamo, input_names=["input"], output_names=["logits"],
                                  **kw)
            if metadata:
                stamp(path, metadata)
            return
        except Exception as e:
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {first_line(e, 200)}")
    raise ExportError("; ".join(errors))


# ONNX Runtime's quantiser makes its own temporary folders (`ort.quant.*`, `pre.quant.*`) with tempfile and no
# `dir`, and offers no way to place them: they went into the system temp folder, and a kill -9 left them there.
# Its modules see `_ScratchTempfile` as their `tempfile`, which puts them in the scratch folder of the
# quantisation under way (this thread's), removed on exit and, after a kill, by scratch.clean.
_ORT_TEMP: contextvars.ContextVar[Path | None] = contextvars.ContextVar("explorer_ort_temp", default=None)
_DIR_ARG = {"TemporaryDirectory": 2, "mkdtemp": 2, "mkstemp": 2, "NamedTemporaryFile": 6, "TemporaryFile": 6}


class _ScratchTempfile:
    """tempfile, with `dir` defaulting to the current quantisation's scratch folder (plain tempfile outside one)."""

    def __getattr__(self, name: str) -> Any:  # what tempfile has by that name
        fn = getattr(tempfile, name)  # looked up per call: tempfile as it is now
        if name not in _DIR_ARG:
            return fn

        def in_scratch(*args: Any, **kw: Any) -> Any:
            where = _ORT_TEMP.get()
            if where is not None and len(args) <= _DIR_ARG[name] and kw.get("dir") is None:
                kw["dir"] = str(where)
            return fn(*args, **kw)

        return in_scratch


_TEMPFILE = _ScratchTempfile()


@contextlib.contextmanager
def _ort_temp_into(folder: Path) -> Iterator[None]:
    """While open, ONNX Runtime's quantisation in this thread makes its temporary folders and files in `folder`."""
    for name, module in list(sys.modules.items()):  # the quantiser's modules (quantize_int8 imported them)
        if name.startswith("onnxruntime.quantization") and getattr(module, "tempfile", None) is tempfile:
            module.tempfile = _TEMPFILE  # type: ignore[attr-defined]  # typeshed lets a module be read, not patched
    token = _ORT_TEMP.set(folder)
    try:
        yield
    finally:
        _ORT_TEMP.reset(token)


class _Reader:
    """ONNX Runtime calibration data reader over explorer calibration samples."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def module_of_node(node_name: str) -> str:
    """The PyTorch module path of a node that the TorchScript exporter named after its scope:
    '/features/features.0/Conv' -> 'features.0', '/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1'."""
    path = ""
    for part in [p for p in node_name.split("/") if p][:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def nodes_of_modules(graph: onnx.GraphProto, modules: set[str]) -> tuple[list[str], set[str]]:
    """The graph's Conv, Gemm and MatMul nodes that belong to `modules`, and the modules no node matched.
    A Gemm is named twice: dynamic quantisation first rewrites it as '<name>_MatMul' plus an Add."""
    nodes: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and (mod := module_of_node(node.name)) in modules:
            nodes += [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
            seen.add(mod)
    return nodes, modules - seen


def quantize_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, mode: str = "static",
                  calibration: np.ndarray | None = None, per_channel: bool = True, method: str = "minmax",
                  keep_float: set[str] | frozenset[str] = frozenset(), symmetric: bool = True) -> None:
    """ONNX Runtime quantisation: static QDQ (U8 activations, S8 weights) calibrated on `calibration`,
    or dynamic (weights int8, activation ranges at run time). The layers of the modules in `keep_float`
    stay fp32 (a recipe that quantised only some layers deploys only those in int8); `symmetric` False
    gives the weights zero points, as the recipe's asymmetric quantisation does."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    with scratch.folder("int8") as tmp, _ort_temp_into(tmp):
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the plain export if it fails
            pre = Path(fp32_path)
        import onnx

        graph = onnx.load(str(pre), load_external_data=False).graph
        exclude, unmatched = nodes_of_modules(graph, set(keep_float))
        if unmatched:
            raise ExportError(f"cannot find the layers {sorted(unmatched)} in the exported graph to keep them fp32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "dynamic":
                quantize_dynamic(str(pre), str(out_path), per_channel=per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=exclude, extra_options={"WeightSymmetric": symmetric})
                return
            if calibration is None or len(calibration) == 0:
                raise ValueError("static int8 quantisation needs calibration samples")
            graph_input = graph.input[0]
            name = graph_input.name
            fixed = graph_input.type.tensor_type.shape.dim[0].dim_value  # 0 when the batch axis is dynamic
            cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}[method]
            quantize_static(str(pre), str(out_path), _Reader(name, calibration.astype(np.float32), fixed or 32),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=cal, nodes_to_exclude=exclude,
                            extra_options={"WeightSymmetric": symmetric,
                                           **({"CalibPercentile": 99.99} if method == "percentile" else {})})


def stamp(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Write `metadata` into an ONNX file's metadata_props (replacing keys of the same names): whoever deploys the
    file reads there what its input must be, which nothing in the graph says."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)  # external data, if any, stays in its files
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in metadata.items():
        proto.metadata_props.add(key=str(k), value=str(v))
    onnx.save(proto, str(path))


def deployed_symmetry(deploy: Deploy | Mapping[str, Any]) -> bool:
    """Whether the int8 ONNX model's weights are symmetric (Deploy.symmetric_weights) for deploy settings
    given as a Deploy or as plain data."""
    return (deploy if isinstance(deploy, Deploy) else Deploy(**deploy)).symmetric_weights


def deploy_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], deploy: Deploy,
                calibration: np.ndarray, x: np.ndarray, y: np.ndarray,
                metadata: Mapping[str, str] | None = None) -> OnnxModel:
    """ONNX Runtime int8 of the export as `deploy` says, and the RunResult's record of it: bytes and
    accuracy of the int8 file, and how it was made. `metadata` as export_onnx writes it."""
    quantize_int8(fp32_path, out_path, mode=deploy.mode, calibration=calibration, per_channel=deploy.per_channel,
                  method=deploy.calibration, keep_float=set(deploy.keep_float), symmetric=deploy.symmetric)
    if metadata:
        stamp(out_path, metadata)
    return OnnxModel(available=True, bytes=Path(out_path).stat().st_size, accuracy=onnx_accuracy(out_path, x, y),
                     mode=deploy.mode, calibration=deploy.calibration, fp32_layers=list(deploy.keep_float),
                     symmetric_weights=deploy.symmetric_weights, from_recipe=deploy.from_recipe)


def onnx_logits(path: str | os.PathLike[str], x: np.ndarray, batch: int = 512, threads: int = 1) -> np.ndarray:
    sess = ort_session(str(path), threads)
    name = sess.get_inputs()[0].name
    dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:  # a model exported with a fixed batch size
        batch = fixed
        pad = (-len(x)) % batch
        if pad:
            padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=x.dtype)])
            return onnx_logits(path, padded, batch, threads)[:len(x)]
    outs = []
    for i in range(0, len(x), batch):
        safe_point()  # between scoring batches: a latency timing elsewhere may want the machine
        outs.append(sess.run(None, {name: x[i:i + batch].astype(dtype)})[0])
    return np.concatenate(outs).astype(np.float32)


def onnx_accuracy(path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray,
                  with_predictions: bool = False) -> dict[str, Any]:
    """top-1/3/5 of an ONNX model on (x, y), computed like the PyTorch figures (explorer.core.train.scores);
    without `with_predictions` only the JSON-ready figures."""
    res = scores(torch.from_numpy(onnx_logits(path, x)), torch.from_numpy(y), with_predictions)
    res.pop("loss")
    return res
