"""Bring your own model and data: turn an upload or a named file into a baseline the explorer can compress.

A state_dict for a zoo architecture (safetensors, or a PyTorch checkpoint read with weights_only) becomes
a full baseline: its tensors are re-saved as safetensors with a card, so nothing pickled is ever kept.
An ONNX model becomes an ONNX baseline: size, latency and ONNX Runtime's int8 quantisation apply;
techniques that rewrite PyTorch layers do not. TorchScript, exported programs and pickled modules are
programs (`explorer.models.formats`): refused unless `trust_code` (the command line's --trust-code), and then
converted to ONNX once, so what is stored is data. The file is read, run and measured in a child process
under a time and a memory limit (`explorer.models.sandbox`): a graph that loops or asks for gigabytes is
killed there and refused, and never stored.

Names are unique: a taken name is refused unless `replace`; adding the same file again without a name
returns the model already added. A model without a name is named by its architecture, its data and a short hash
of the file, never by the file's name: every visitor of the page lists every model, and an uploaded file's name is
its uploader's (the card keeps it only where the operator added the file, `file_name`). Files are prepared in
scratch space and renamed into place, the card last, so a refused or interrupted add never leaves or destroys
anything. Every failure is a ValueError naming the file as the user named it (in that caller's messages only).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from explorer.core import preprocessing, scratch, settings
from explorer.core.card import ModelCard
from explorer.core.data import DataBundle, check_splittable, load_dataset
from explorer.core.errors import bad_value, first_line, quiet_third_party
from explorer.core.imagetree import check_image_folder
from explorer.core.paths import env_folder
from explorer.core.train import evaluate
from explorer.core.zoo import count_params, create_model, model_entry, params_unbuilt
from explorer.measure.onnx_export import ExportError, export_onnx, onnx_accuracy, onnx_logits
from explorer.models import baselines, formats, safezip, sandbox

NAME_ARCH = ("name its architecture: one of the zoo's (python -m explorer models), or a torchvision or timm model "
             "as 'torchvision:<name>' or 'timm:<name>'")
FOREIGN_REASON = ("pruning, clustering, k-bit quantisation, low-rank and distillation rewrite the model's PyTorch "
                  "layers; a {fmt} model has none the explorer can rewrite, so only size, latency and ONNX Runtime's "
                  "int8 quantisation apply")


def user_models_dir() -> Path:
    return env_folder("EXPLORER_USER_MODELS", Path(baselines.MODELS_DIR) / "user")  # "" is unset, not "here"


def user_data_dir() -> Path:
    return env_folder("EXPLORER_USER_DATA", Path(baselines.MODELS_DIR).parent / "data" / "user")


def max_upload_bytes() -> int:
    return int(settings.get("EXPLORER_MAX_UPLOAD_MB") * 2**20)


def check_upload_size(n_bytes: int, what: str) -> None:
    cap = max_upload_bytes()
    if n_bytes > cap:
        raise ValueError(f"{what} is {n_bytes / 2**20:,.1f} MB, over the upload cap of {cap / 2**20:,.0f} MB "
                         "(set EXPLORER_MAX_UPLOAD_MB to change it)")


def safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60]
    if not s:
        raise bad_value("name", name, "letters, digits, '_', '-' or '.'")
    return s


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer at a time in `folder` (across processes): names are checked and claimed under it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def add_model(path: str | os.PathLike[str], *, arch: str | None = None, dataset: str = "digits",
              root: str | None = None, name: str | None = None, image_size: int | None = None,
              width: float | None = None,
              trust_code: bool = False, replace: bool = False, shown: str | None = None,
              file_name: bool = False, on_wait: Callable[[int], None] | None = None,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> ModelCard:
    """A state_dict with its architecture, or an ONNX model (or, trusted, a program) without one. Returns
    the stored card, with `path` to the weights; `reused` is set when the same file was added before (with the same
    preprocessing: the same file fed otherwise is another model). `mean`, `std` and `image_size` are what the model
    was trained with (None: the data set's own statistics and size); the card keeps them and every later load of
    its data uses them. `shown`
    names the file in this caller's messages; `file_name` also keeps it in the card (the command line: the
    operator's own file), which every visitor of the page can read. `on_wait` is told how many checks go first
    while this one waits its turn (sandbox.run_checked)."""
    path = Path(path)
    shown = shown or path.name
    given = preprocessing.given(mean, std, image_size)  # one line for a std of 0 or a missing mean, before any work
    if arch is not None:
        model_entry(arch)  # an unknown name is one line with the closest known ones
    check_upload_size(path.stat().st_size if path.is_file() else 0, f"model file {shown!r}")
    fmt = formats.detect_format(path, shown, parse_onnx=False)  # an ONNX file is parsed in the checking process
    if fmt in ("torchscript", "exported") and not trust_code:
        raise formats.program_refusal(shown, fmt)
    source = {"format": fmt, "sha256": baselines.sha256_file(path), **({"file": shown} if file_name else {})}
    auto = name is None
    name = safe_name(name or f"{arch or fmt}-{dataset}-{source['sha256'][:8]}")
    if auto:
        with _locked(user_models_dir()):
            again = _same_source(source, arch, dataset, root, given)
        if again is not None:
            return again
    with scratch.folder("add-model") as stage:
        # read and run in a child process under a time and a memory limit: a hostile graph is killed there
        timeout_s, max_mb = sandbox.limits()
        weights, card = sandbox.run_checked(_stage, path, shown, fmt, arch, dataset, root, given, width,
                                            trust_code, stage, what=f"model {shown!r}", reuse=not trust_code,
                                            on_wait=on_wait)
        card.update(user=True, source=source, versions=baselines.versions(), created=_dt.date.today().isoformat(),
                    checked={"process": "child", "timeout_s": timeout_s, "max_mb": max_mb})
        return _store(weights, card, name, auto=auto, replace=replace)


def _stage(path: Path, shown: str, fmt: str, arch: str | None, dataset: str, root: str | None,
           given: dict[str, Any], width: float | None, trust_code: bool, stage: Path) -> tuple[Path, ModelCard]:
    """In the checking process: the model read, validated and measured, its weights staged in `stage`; the card
    says what it was fed (the preprocessing the user gave, and what that makes)."""
    if fmt == "onnx":
        formats.detect_format(path, shown)  # the caller did not parse it: this is where a file that is none says so
    if arch is not None:
        weights, card = _state_dict_baseline(path, shown, fmt, arch, dataset, root, given, width, trust_code, stage)
    else:
        weights, card = _onnx_baseline(path, shown, fmt, dataset, root, given, trust_code, stage)
    return weights, {**card, **({"preprocessing": given} if given else {})}


def _data(dataset: str, root: str | None, given: dict[str, Any], in_channels: int | None, image_size: int | None = None,
          normalise: bool = True) -> DataBundle:
    """The data as the model will be fed it: at the size and with the mean and std the user gave (`normalise`
    False: the data set's own statistics, while the channels the model takes are not known yet)."""
    image_size = given.get("image_size") or image_size  # the size the user gave, else the one the model declares
    at = f" at {image_size}x{image_size}" if image_size else ""
    mean, std = (tuple(given["mean"]), tuple(given["std"])) if normalise and "mean" in given else (None, None)
    with sandbox.preparing(f"the {dataset} images{at}"):  # out of memory here is the data's size, not the model's
        return load_dataset(dataset, root, image_size=image_size, channels=in_channels, mean=mean, std=std)


def _fed(data: DataBundle) -> ModelCard:
    """What the card says the model is fed."""
    return {"normalisation": {"mean": list(data.mean), "std": list(data.std)}, "input_size": list(data.input_shape)}


def _state_dict_baseline(path: Path, shown: str, fmt: str, arch: str, dataset: str, root: str | None,
                         given: dict[str, Any], width: float | None, trust_code: bool,
                         stage: Path) -> tuple[Path, ModelCard]:
    """Validate a state_dict against an architecture (the zoo's, a plugin's, or torchvision's or timm's by name)
    and the data, measure it, re-save it as safetensors. The architecture's code is the installed library's; the
    file gives tensors only. Channels and image size are checked against the data before the weights run."""
    state = baselines.load_state_dict_file(path, trust_code=trust_code, shown=shown)
    data = _data(dataset, root, given, None, normalise=False)
    model_entry(arch)  # the library imported and its names listed: our own code's time, not the model's
    sandbox.start_clock()  # loading the data set is not the model's time
    extra: dict[str, Any] = {} if width is None else {"width": width}
    params = params_unbuilt(arch, **_arch_kwargs(data), **extra)
    if params is not None:
        sandbox.check_weights(arch, params)  # before the model takes the memory that the limit would kill it for
    model = create_model(arch, **_arch_kwargs(data), **extra)
    channels = _weights_channels(model, state)
    notes = list(data.notes)
    converted = None
    if channels is not None and channels != data.in_channels:
        if {channels, data.in_channels} != {1, 3}:
            raise ValueError(f"checkpoint {shown!r} takes {channels} input channels (its first layer's weights), but "
                             f"{dataset} images have {data.in_channels}: the model does not fit this data set")
        converted = channels
        data = _data(dataset, root, given, converted, normalise=False)  # grey <-> colour, as the weights expect
        model = create_model(arch, **_arch_kwargs(data), **extra)
        notes.append(f"the images were converted to {channels} channel{'s' if channels > 1 else ''}, as the "
                     "model's first layer takes")
    if "mean" in given:  # the channels are known now: the user's mean and std hold one value per channel
        data = _data(dataset, root, given, converted)
    _check_input(model, data, arch, shown)
    pos = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in model.state_dict().items()
           if "pos_embed" in k and k in state and state[k].shape != v.shape]
    if pos:  # a Vision Transformer's position embeddings hold one row per patch of the size it was trained at
        raise ValueError(f"checkpoint {shown!r} has position embeddings {pos[0][0]} of shape {pos[0][1]}, for another "
                         f"image size than {data.name}'s {data.image_size}x{data.image_size} (which needs "
                         f"{pos[0][2]}): pass the image size the model was trained at (--image-size)")
    kwargs = {**_arch_kwargs(data), **extra}
    try:
        model = baselines.load_into(model, state, shown)
    except ValueError as e:
        if "mis-shaped" not in str(e):
            raise
        # the layer sizes follow the data set (image size, channels, classes): the usual cause is the wrong one
        raise ValueError(f"{e} (the architecture was built for {dataset}: {data.image_size}x{data.image_size} "
                         f"images, {data.in_channels} channel{'s' if data.in_channels > 1 else ''}, "
                         f"{data.num_classes} classes; if the model was trained on another data set or image size, "
                         "choose that one)") from None
    _check_classes(model, data, shown)
    acc = evaluate(model, data.test)
    from safetensors.torch import save_file

    weights = stage / "model.safetensors"
    save_file(baselines.state_dict_for_save(model), str(weights))
    return weights, {"architecture": arch, "arch_kwargs": kwargs, "dataset": dataset, "dataset_root": root,
                     "split_seed": 0, "classes": list(data.classes), **_fed(data),
                     "accuracy": {k: acc[k] for k in ("top1", "top3", "top5", "loss")}, "test_samples": acc["n"],
                     "params": count_params(model), "notes": notes}


def _arch_kwargs(data: DataBundle) -> dict[str, Any]:
    return {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size}


def _weights_channels(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The input channels the checkpoint's first layer takes: its first 4-dimensional weight (a convolution's,
    in the architecture's order) read from the file; None where the file lacks it (reported with the other keys)."""
    own = model.state_dict()
    first = next((k for k, v in own.items() if v.ndim == 4), None)
    if first is None or first not in state or state[first].ndim != 4:
        return None
    groups = next((m.groups for name, m in model.named_modules() if f"{name}.weight" == first
                   and isinstance(m, torch.nn.Conv2d)), 1)
    return int(state[first].shape[1]) * groups


def _check_input(model: torch.nn.Module, data: DataBundle, arch: str, shown: str) -> None:
    """The architecture, as the library builds it with random weights, run on one image of the data: an input size
    it cannot take is one line before the checkpoint's weights are loaded."""
    try:
        with torch.no_grad(), quiet_third_party():
            model.eval()(data.test.x[:1])
    except Exception as e:  # the library's own forward failing on this shape, in its own words
        raise ValueError(f"model {arch!r} does not run on {data.name} images of shape {tuple(data.input_shape)} "
                         f"(checkpoint {shown!r}): {first_line(e, 200)}; choose another image size (--image-size) "
                         "or architecture") from None


def _onnx_baseline(path: Path, shown: str, fmt: str, dataset: str, root: str | None, given: dict[str, Any],
                   trust_code: bool, stage: Path) -> tuple[Path, ModelCard]:
    """An ONNX model, or a trusted program converted to one, measured with ONNX Runtime."""
    module = None
    if fmt in ("state_dict", "pickle"):
        obj = baselines.read_torch_checkpoint(path, shown, trust_code)
        if not isinstance(obj, torch.nn.Module):
            raise ValueError(f"model file {shown!r} holds a state_dict: {NAME_ARCH}")
        module, fmt = obj, "pickled module"
    elif fmt == "safetensors":
        raise ValueError(f"model file {shown!r} is a safetensors state_dict: {NAME_ARCH}")
    program = _load_program(path, shown, fmt) if fmt in ("torchscript", "exported") else None
    shape = _declared_input_shape(path, fmt, program)  # (C, H, W) where the file says; the data is fitted to it
    data = _data(dataset, root, given, shape[0] if shape else None, None if shape is None else shape[-1])
    sandbox.start_clock()  # loading the data set is not the model's time
    staged = stage / "model.onnx"
    if fmt == "onnx":
        shutil.copyfile(path, staged)
    elif (source := program if program is not None else module) is not None:  # a program or a pickled module
        _to_onnx(source, shown, fmt, data, staged)
    acc = onnx_model_accuracy(staged, data, shown)
    _rehearse(staged, data, shown)
    return staged, {"architecture": "onnx", "format": "onnx", "arch_kwargs": {"input_shape": list(data.input_shape)},
                    "dataset": dataset, "dataset_root": root, "split_seed": 0, "classes": list(data.classes),
                    **_fed(data), "accuracy": acc, "test_samples": len(data.test), "params": onnx_params(staged),
                    "unsupported_reason": FOREIGN_REASON.format(fmt=fmt)}


def _load_program(path: Path, shown: str, fmt: str) -> torch.export.ExportedProgram | torch.jit.ScriptModule:
    """A TorchScript module or an exported program: only ever called for a file the user trusts."""
    try:
        with quiet_third_party():
            if fmt == "exported":
                return torch.export.load(str(path))
            # torch (2.14) leaves jit.load unannotated
            script: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            return script
    except Exception as e:
        raise ValueError(f"model file {shown!r} could not be read as {formats.PROGRAMS[fmt]}: "
                         f"{first_line(e, 200)}") from None


def _check_classes(model: torch.nn.Module, data: DataBundle, shown: str) -> None:
    if not isinstance(model, torch.fx.GraphModule):  # an exported program's module has no train/eval switch
        model.eval()
    with torch.no_grad():
        out = model(data.test.x[:1])
    if out.shape[-1] != data.num_classes:
        raise ValueError(f"model {shown!r} has {out.shape[-1]} outputs but the dataset {data.name!r} has "
                         f"{data.num_classes} classes")


def _to_onnx(obj: torch.nn.Module | torch.export.ExportedProgram, shown: str, fmt: str, data: DataBundle,
             out: Path) -> None:
    """A trusted program (or pickled module) exported to ONNX, with torch's own logging silenced."""
    module = obj.module() if isinstance(obj, torch.export.ExportedProgram) else obj
    try:
        with quiet_third_party():
            _check_classes(module, data, shown)
    except ValueError:
        raise
    except Exception as e:  # a model built for other inputs fails inside its own forward
        raise ValueError(f"model {shown!r} does not run on {data.name} inputs of shape "
                         f"{(1, *data.input_shape)}: {first_line(e, 200)}") from None
    try:
        with quiet_third_party():
            if isinstance(obj, torch.export.ExportedProgram):
                _export_program(obj, out)
            else:
                export_onnx(module, data.input_shape, out)
    except ExportError as e:
        raise ValueError(f"model {shown!r} could not be converted to ONNX: {e}") from None
    except Exception as e:
        raise ValueError(f"model {shown!r} could not be converted to ONNX: {first_line(e, 200)}") from None


def _export_program(program: torch.export.ExportedProgram, out: Path) -> None:
    """An exported program's module re-exported with a dynamic batch axis; where its graph will not take
    one, the program itself at the shapes it was exported with (its latency then has that batch only)."""
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


def _declared_input_shape(path: Path, fmt: str, program: torch.export.ExportedProgram | torch.jit.ScriptModule | None
                          ) -> tuple[int, ...] | None:
    """The input's (C, H, W) as an ONNX model or an exported program declares it; None if unknown."""
    try:
        if fmt == "onnx":
            import onnx

            dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
            shape = tuple(d.dim_value for d in dims[1:])
        elif fmt == "exported" and program is not None:
            shape = tuple(program.example_inputs[0][0].shape[1:])
        else:
            return None
    except Exception:  # an unreadable file is reported, with its reason, by the loader that follows
        return None
    return shape if len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape) else None


def onnx_model_accuracy(path: Path, data: DataBundle, shown: str | None = None) -> dict[str, float]:
    """top-1/3/5 with ONNX Runtime; a model that does not load, uses operators outside the standard
    domains, keeps external data, or does not fit the data is a ValueError."""
    import onnx

    shown = shown or path.name
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"ONNX model {shown!r} is not valid: {first_line(e, 200)}") from None
    formats.check_onnx_external_data(proto, shown)  # before the checker, which would look for those files
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ValueError(f"ONNX model {shown!r} is not valid: {first_line(e, 200)}") from None
    formats.check_onnx_operators(proto, shown)
    try:
        out = onnx_logits(path, data.test.x[:2].numpy())
    except Exception as e:
        raise ValueError(f"ONNX model {shown!r} does not run on {data.name} inputs of shape "
                         f"{(2, *data.input_shape)}: {first_line(e, 200)}") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise ValueError(f"ONNX model {shown!r} outputs shape {tuple(out.shape)}, but the dataset "
                         f"{data.name!r} has {data.num_classes} classes")
    acc = onnx_accuracy(path, data.test.x.numpy(), data.test.y.numpy())
    return {k: acc[k] for k in ("top1", "top3", "top5")}


def _rehearse(path: Path, data: DataBundle, shown: str) -> None:
    """The other inputs the page later gives an ONNX model, run here under the check's limits, so that a graph
    that loops or swells only on them is refused now rather than in the server: the latency timing's random
    inputs at each timed batch size (explorer.run.onnx.time_onnx) and a batch of training images (int8
    calibration)."""
    import numpy as np

    from explorer.core.engines import BATCH_SIZES

    inputs = {f"random inputs of batch size {b}": np.random.default_rng(0).standard_normal(
        (b, *data.input_shape)).astype(np.float32) for b in BATCH_SIZES}
    inputs["training images"] = data.calibration(min(256, len(data.train))).numpy()
    for what, x in inputs.items():
        try:
            onnx_logits(path, x)
        except Exception as e:
            raise ValueError(f"ONNX model {shown!r} does not run on {what} of shape {tuple(x.shape)}: "
                             f"{first_line(e, 200)}") from None


def onnx_params(path: Path) -> int:
    import numpy as np
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return int(sum(np.prod(t.dims) for t in m.graph.initializer))


# ---------------------------------------------------------------- names and storage


def _committed_names() -> set[str]:
    return {c["name"] for c in baselines.list_baselines()}


def _user_cards() -> dict[str, ModelCard]:
    return {c["name"]: c for c in list_user_models()}


def _same_source(source: dict[str, Any], arch: str | None, dataset: str, root: str | None,
                 given: dict[str, Any]) -> ModelCard | None:
    """The card of an earlier add of the very same file, with the same architecture, data and preprocessing."""
    for old in _user_cards().values():
        if (old.get("source") or {}).get("sha256") == source["sha256"] and old.get("dataset") == dataset \
                and old.get("dataset_root") == root and (arch is None or old.get("architecture") == arch) \
                and (old.get("preprocessing") or {}) == given:
            return {**old, "reused": True}
    return None


def _store(weights: Path, card: ModelCard, name: str, *, auto: bool, replace: bool) -> ModelCard:
    """Claim `name` and rename the staged weights and card into place; under the folder's lock."""
    folder = user_models_dir()
    with _locked(folder):
        cards = _user_cards()
        if auto:
            again = _same_source(card["source"], card.get("architecture"), card["dataset"], card.get("dataset_root"),
                                 card.get("preprocessing") or {})
            if again is not None:
                return again
            base, n = name, 2
            while name in cards or name in _committed_names():
                name, n = f"{base}-{n}", n + 1
        elif name in _committed_names():
            raise ValueError(f"name {name!r} is a committed baseline's: choose another --name")
        elif name in cards and not replace:
            taken = cards[name]
            # not its file's name: the refusal may go to another visitor than the one who added it
            raise ValueError(f"a model named {name!r} already exists ({taken.get('architecture')}, added "
                             f"{taken.get('created', '?')}): choose another name, or replace it explicitly (--replace)")
        old = cards.get(name)
        final = folder / f"{name}{weights.suffix}"
        card = {"name": name, **card, "file": final.name, "file_bytes": weights.stat().st_size,
                "sha256": baselines.sha256_file(weights)}
        scratch.move_into_place(weights, final, overwrite=old is not None)
        part = folder / f".{name}.json.part"
        part.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(part, baselines.card_path(final))  # the card last: the model is listed once complete
        if old is not None and Path(old["path"]) != final:
            Path(old["path"]).unlink(missing_ok=True)  # the replaced model was the other kind of file
    return {**card, "path": str(final)}


def list_user_models() -> list[ModelCard]:
    """Cards of the models users added, one per name: a card lists only the weights file it names."""
    d = user_models_dir()
    cards: list[ModelCard] = []
    for w in sorted([*d.glob("*.safetensors"), *d.glob("*.onnx")]) if d.is_dir() else []:
        if w.name.startswith(".") or not baselines.card_path(w).is_file():
            continue
        try:
            card = baselines.read_card(w)
        except ValueError:
            continue
        if card.get("file", w.name) == w.name:
            card["path"] = str(w)
            cards.append(card)
    return cards


# ---------------------------------------------------------------- datasets


def add_dataset_zip(zip_path: str | os.PathLike[str], name: str | None, *, shown: str | None = None) -> str:
    """Extract an uploaded image-folder zip safely and store it under `name` (None: a short hash of the zip, not
    its file name, which is its uploader's); returns the folder to use as the dataset root. It is extracted and
    checked in scratch space and renamed into place only once every check has passed. A name already taken by
    other files is refused (the stored data stays as it is: cached runs and added models were measured on it);
    the very same files again reuse the stored folder."""
    zip_path = Path(zip_path)
    shown = shown or zip_path.name
    check_upload_size(zip_path.stat().st_size, f"zip {shown!r}")
    dest = user_data_dir() / safe_name(name or f"zip-{baselines.sha256_file(zip_path)[:8]}")
    with scratch.folder("dataset") as stage:
        tree = stage / "tree"
        safezip.extract_zip(zip_path, tree, shown=shown)
        top = safezip.tree_root(tree)
        try:  # a tree no model could be measured on is refused here, before it takes the name
            classes, counts = check_image_folder(top)
        except ValueError as e:  # named by the zip, not by the server's scratch folder it was unpacked in
            why = str(e).replace(str(top), shown).replace(str(tree), shown)
            raise ValueError(f"zip {shown!r} is not an image folder the explorer can read: {why}") from None
        check_splittable(classes, counts, f"zip {shown!r}")
        with _locked(user_data_dir()):
            if dest.exists():
                if not _same_tree(dest, tree):
                    raise ValueError(f"a dataset named {dest.name!r} already exists with other files: choose "
                                     "another name (the stored one is kept as it is)")
            else:
                scratch.move_into_place(tree, dest)
    return str(safezip.tree_root(dest))


def _same_tree(a: Path, b: Path) -> bool:
    def listing(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): baselines.sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}

    return listing(a) == listing(b)
