"""Bring your own model: turn an upload or a named file into a baseline the explorer can compress.

A state_dict for a zoo architecture (.safetensors, or .pt/.pth read with weights_only) becomes a full
baseline: its tensors are re-saved as safetensors with a card, so nothing pickled is ever kept.
A TorchScript file, an exported program (.pt2) or an ONNX model becomes an ONNX baseline: size,
latency and ONNX Runtime's int8 quantisation apply; techniques that rewrite PyTorch layers do not.
Every failure is a ValueError that names the file and what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from explorer import baselines
from explorer.data import DataBundle, load_dataset
from explorer.errors import bad_value, env_positive, first_line
from explorer.train import evaluate
from explorer.zoo import count_params, create_model, list_models

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".pt2", ".onnx")
FOREIGN_REASON = ("pruning, clustering, k-bit quantisation, low-rank and distillation rewrite the model's PyTorch "
                  "layers; a {fmt} model has none the explorer can rewrite, so only size, latency and ONNX Runtime's "
                  "int8 quantisation apply")


def user_models_dir() -> Path:
    return Path(os.environ.get("EXPLORER_USER_MODELS", baselines.MODELS_DIR / "user"))


def max_upload_bytes() -> int:
    return int(env_positive("EXPLORER_MAX_UPLOAD_MB", 500, " of megabytes") * 2**20)


def check_upload_size(n_bytes: int, what: str) -> None:
    cap = max_upload_bytes()
    if n_bytes > cap:
        raise ValueError(f"{what} is {n_bytes / 2**20:,.1f} MB, over the upload cap of {cap / 2**20:,.0f} MB "
                         "(set EXPLORER_MAX_UPLOAD_MB to change it)")


def _safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60]
    if not s:
        raise bad_value("name", name, "letters, digits, '_', '-' or '.'")
    return s


def detect_format(path: str | os.PathLike) -> str:
    """safetensors | state_dict | torchscript | exported | onnx, from the suffix and the file's contents."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise bad_value("model file suffix", suffix or "(none)", MODEL_SUFFIXES)
    if suffix in (".safetensors", ".onnx"):
        return suffix[1:]
    if not zipfile.is_zipfile(p):
        raise ValueError(f"model file {str(p)!r} is not a PyTorch zip archive (truncated, corrupted, or a legacy "
                         "pickle, which the explorer never loads)")
    try:
        names = zipfile.ZipFile(p).namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"model file {str(p)!r} is a damaged zip archive: {e}") from None
    if any("/models/model.json" in n or n.endswith("archive_format") for n in names):
        return "exported"
    if any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"
    raise ValueError(f"model file {str(p)!r} is a zip archive but not a PyTorch checkpoint")


def _data(dataset: str, root: str | None, image_size: int | None, in_channels: int | None) -> DataBundle:
    return load_dataset(dataset, root, image_size=image_size, channels=in_channels)


def _write_card(card: dict, weights: Path) -> dict:
    baselines.card_path(weights).write_text(json.dumps(card, indent=2) + "\n")
    return {**card, "path": str(weights)}


def add_state_dict_model(path: str | os.PathLike, arch: str, dataset: str = "digits", *, root: str | None = None,
                         name: str | None = None, image_size: int | None = None, width: float | None = None) -> dict:
    """Validate a state_dict against a zoo architecture and the data, measure it, store it as a baseline."""
    if arch not in list_models():
        raise bad_value("arch", arch, list_models())
    check_upload_size(Path(path).stat().st_size if Path(path).is_file() else 0, f"model file {Path(path).name!r}")
    fmt = detect_format(path)
    if fmt not in ("safetensors", "state_dict"):
        raise ValueError(f"{Path(path).name!r} is a {fmt} model, not a state_dict: add it without an architecture")
    state = baselines.load_state_dict_file(path)
    data = _data(dataset, root, image_size, None)
    kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size}
    if width is not None:
        kwargs["width"] = width
    model = baselines.load_into(create_model(arch, **kwargs), state, str(path))
    _check_classes(model, data, str(path))
    acc = evaluate(model, data.test)
    name = _safe_name(name or f"{arch}-{dataset}-{Path(path).stem}")
    out = user_models_dir() / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(baselines.state_dict_for_save(model), str(out))
    card = {"name": name, "architecture": arch, "arch_kwargs": kwargs, "dataset": dataset, "dataset_root": root,
            "split_seed": 0, "classes": list(data.classes), "accuracy": {k: acc[k] for k in ("top1", "top3", "top5",
                                                                                              "loss")},
            "test_samples": acc["n"], "params": count_params(model), "file": out.name,
            "file_bytes": out.stat().st_size, "sha256": baselines.sha256_file(out), "user": True,
            "source": {"file": Path(path).name, "format": fmt}, "versions": baselines.versions(),
            "created": _dt.date.today().isoformat(), "notes": list(data.notes)}
    return _write_card(card, out)


def _check_classes(model, data: DataBundle, source: str) -> None:
    if not isinstance(model, torch.fx.GraphModule):  # an exported program's module has no train/eval switch
        model.eval()
    with torch.no_grad():
        out = model(data.test.x[:1])
    if out.shape[-1] != data.num_classes:
        raise ValueError(f"model {source!r} has {out.shape[-1]} outputs but the dataset {data.name!r} has "
                         f"{data.num_classes} classes")


def _to_onnx(path: Path, fmt: str, data: DataBundle, out: Path) -> None:
    """TorchScript and exported programs are exported to ONNX (no Python code from the file runs: TorchScript
    runs in its own interpreter, and torch.export.load reads a JSON graph and tensors)."""
    from explorer.measure.onnx_export import ExportError, export_onnx

    try:
        program = torch.export.load(str(path)) if fmt == "exported" else None
        module = torch.jit.load(str(path), map_location="cpu") if program is None else program.module()
    except Exception as e:
        raise ValueError(f"model file {path.name!r} could not be read as {fmt}: {first_line(e, 200)}") from None
    try:
        _check_classes(module, data, path.name)
    except ValueError:
        raise
    except Exception as e:  # a model built for other inputs fails inside its own forward
        raise ValueError(f"model {path.name!r} does not run on {data.name} inputs of shape "
                         f"{(1, *data.input_shape)}: {first_line(e, 200)}") from None
    try:
        if program is not None:
            _export_program(program, out)
        else:
            export_onnx(module, data.input_shape, out)
    except ExportError as e:
        raise ValueError(f"model {path.name!r} could not be converted to ONNX: {e}") from None
    except Exception as e:
        raise ValueError(f"model {path.name!r} could not be converted to ONNX: {first_line(e, 200)}") from None


def _export_program(program, out: Path) -> None:
    """An exported program's module re-exported with a dynamic batch axis; where its graph will not take
    one, the program itself at the shapes it was exported with (its latency then has that batch only)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = program.example_inputs[0]
        # export specialises a dimension whose example size is 1, so the dynamic batch needs an example of 2
        batch2 = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.shape[0] == 1 else a for a in args)
        try:
            torch.onnx.export(program.module(), batch2, str(out), dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["input"],
                              output_names=["logits"])
        except Exception:
            torch.onnx.export(program, args, str(out), dynamo=True, external_data=False, input_names=["input"],
                              output_names=["logits"])


def add_foreign_model(path: str | os.PathLike, dataset: str = "digits", *, root: str | None = None,
                      name: str | None = None, image_size: int | None = None) -> dict:
    """An ONNX, TorchScript or exported-program model as an ONNX baseline."""
    path = Path(path)
    check_upload_size(path.stat().st_size if path.is_file() else 0, f"model file {path.name!r}")
    fmt = detect_format(path)
    if fmt in ("safetensors", "state_dict"):
        raise ValueError(f"{path.name!r} is a state_dict: name its architecture (one of {', '.join(list_models())})")
    shape = _declared_input_shape(path, fmt)  # (C, H, W) where the file says; the data is fitted to it
    data = _data(dataset, root, image_size or (shape[-1] if shape else None), shape[0] if shape else None)
    name = _safe_name(name or f"{fmt}-{dataset}-{path.stem}")
    out = user_models_dir() / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        if fmt == "onnx":
            shutil.copyfile(path, staged)
        else:
            _to_onnx(path, fmt, data, staged)
        acc = onnx_model_accuracy(staged, data, path.name)
        shutil.move(staged, out)
    card = {"name": name, "architecture": "onnx", "format": "onnx",
            "arch_kwargs": {"input_shape": list(data.input_shape)},
            "dataset": dataset, "dataset_root": root, "split_seed": 0, "classes": list(data.classes),
            "accuracy": acc, "test_samples": len(data.test), "params": onnx_params(out), "file": out.name,
            "file_bytes": out.stat().st_size, "sha256": baselines.sha256_file(out), "user": True,
            "source": {"file": path.name, "format": fmt}, "unsupported_reason": FOREIGN_REASON.format(fmt=fmt),
            "versions": baselines.versions(), "created": _dt.date.today().isoformat()}
    return _write_card(card, out)


def _declared_input_shape(path: Path, fmt: str) -> tuple[int, ...] | None:
    """The input's (C, H, W) as an ONNX model or an exported program declares it; None if unknown."""
    try:
        if fmt == "onnx":
            import onnx

            dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
            shape = tuple(d.dim_value for d in dims[1:])
        elif fmt == "exported":
            shape = tuple(torch.export.load(str(path)).example_inputs[0][0].shape[1:])
        else:
            return None
    except Exception:  # an unreadable file is reported, with its reason, by the loader that follows
        return None
    return shape if len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape) else None


def onnx_model_accuracy(path: Path, data: DataBundle, shown: str | None = None) -> dict:
    """top-1/3/5 with ONNX Runtime; a model that does not load or does not fit the data is a ValueError."""
    import onnx

    from explorer.measure.onnx_export import onnx_accuracy, onnx_logits

    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ValueError(f"ONNX model {shown or path.name!r} is not valid: {first_line(e, 200)}") from None
    # external data names a file path: from an upload it could point anywhere on this machine
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ValueError(f"ONNX model {shown or path.name!r} keeps its weights in external data files: upload a "
                         "single-file model (onnx.save(model, path, save_as_external_data=False))")
    try:
        out = onnx_logits(path, data.test.x[:2].numpy())
    except Exception as e:
        raise ValueError(f"ONNX model {shown or path.name!r} does not run on {data.name} inputs of shape "
                         f"{(2, *data.input_shape)}: {first_line(e, 200)}") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise ValueError(f"ONNX model {shown or path.name!r} outputs shape {tuple(out.shape)}, but the dataset "
                         f"{data.name!r} has {data.num_classes} classes")
    acc = onnx_accuracy(path, data.test.x.numpy(), data.test.y.numpy())
    return {k: acc[k] for k in ("top1", "top3", "top5")}


def onnx_params(path: Path) -> int:
    import numpy as np
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return int(sum(np.prod(t.dims) for t in m.graph.initializer))


def list_user_models() -> list[dict]:
    d = user_models_dir()
    cards = []
    for w in sorted([*d.glob("*.safetensors"), *d.glob("*.onnx")]) if d.is_dir() else []:
        if baselines.card_path(w).is_file():
            try:
                cards.append({**baselines.read_card(w), "path": str(w)})
            except ValueError:
                continue
    return cards
