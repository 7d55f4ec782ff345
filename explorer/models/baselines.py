"""Trained baseline checkpoints: safetensors weights plus a JSON card beside them.

The card says how to rebuild the model (architecture and its arguments), which data and split seed
it was trained on, and what it measured on the test split; `load_baseline` rebuilds the model from
the bytes alone (no pickle) and `verify_baseline` measures it again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from explorer.core.card import ModelCard
from explorer.core.data import DataBundle, load_dataset
from explorer.core.errors import first_line, quiet_third_party
from explorer.core.paths import MODELS_DIR as MODELS_DIR  # named here too: where baselines live
from explorer.core.paths import baseline_path as baseline_path
from explorer.core.paths import user_file as user_file
from explorer.core.train import Progress, TrainConfig, evaluate, fit, seed_everything
from explorer.core.version import SCHEMA_VERSION, __version__
from explorer.core.zoo import count_params, create_model
from explorer.measure.compute import macs
from explorer.measure.layers import layer_table
from explorer.models.formats import PROGRAMS, check_checkpoint_zip, detect_format, program_refusal


def versions() -> dict[str, str]:
    """The libraries' versions, read from their installed metadata: importing torchvision and timm to ask
    them takes seconds, in the middle of a page's first run."""
    from importlib.metadata import version

    return {"torch": torch.__version__, "torchvision": version("torchvision"), "timm": version("timm"),
            "onnxruntime": version("onnxruntime"), "explorer": __version__, "schema": str(SCHEMA_VERSION)}


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(weights: str | os.PathLike[str]) -> Path:
    return Path(weights).with_suffix(".json")


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies: what safetensors can store."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def train_baseline(
    model_name: str,
    dataset: str,
    *,
    root: str | None = None,
    cfg: TrainConfig | None = None,
    model_kwargs: dict[str, Any] | None = None,
    image_size: int | None = None,
    models_dir: str | os.PathLike[str] = MODELS_DIR,
    progress: Progress | None = None,
    finetune_samples: int | None = None,
) -> ModelCard:
    """Train `model_name` on `dataset`, write weights and card, and return the card. `finetune_samples`
    is recorded as the card's recommendation for compression runs: fine-tune on a stratified subset of
    that many training images (a large data set, a model slow to train on the CPU)."""
    cfg = cfg or TrainConfig()
    data = load_dataset(dataset, root, seed=cfg.seed, image_size=image_size)
    model_kwargs = dict(model_kwargs or {})
    arch = {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size,
            **model_kwargs}
    seed_everything(cfg.seed)  # the initial weights come from the global generator
    model = create_model(model_name, **arch)
    hist = fit(model, data.train, cfg, val=data.val, progress=progress)
    test = evaluate(model, data.test)
    out = baseline_path(model_name, dataset, models_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_save(model), str(out), metadata={"architecture": model_name})
    card: ModelCard = {
        "name": f"{model_name}-{dataset}",
        "architecture": model_name,
        "arch_kwargs": arch,
        "dataset": dataset,
        "dataset_root": root,
        "split_seed": cfg.seed,
        "classes": list(data.classes),
        "normalisation": {"mean": list(data.mean), "std": list(data.std)},
        "input_size": list(data.input_shape),
        "train": {**cfg.__dict__, "seconds": round(hist.seconds, 2), "final_train_loss": hist.train_loss[-1]
                  if hist.train_loss else None, "threads": torch.get_num_threads(), "train_samples": len(data.train),
                  "command": train_command(model_name, dataset, cfg, model_kwargs, finetune_samples)},
        "accuracy": {k: test[k] for k in ("top1", "top3", "top5", "loss")},
        **({"finetune_samples": finetune_samples} if finetune_samples else {}),
        "test_samples": test["n"],
        "val_top1": hist.val_top1[-1] if hist.val_top1 else None,
        "params": count_params(model),
        "macs": macs(model, data.input_shape)["total"],
        "file": out.name,
        "file_bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "versions": versions(),
        "created": _dt.date.today().isoformat(),
    }
    card_path(out).write_text(json.dumps(card, indent=2) + "\n")
    return card


def train_command(model_name: str, dataset: str, cfg: TrainConfig, model_kwargs: Mapping[str, Any],
                  finetune_samples: int | None = None) -> str:
    """The command that trains this baseline again."""
    width = f" --width {model_kwargs['width']:g}" if "width" in model_kwargs else ""
    width += f" --finetune-samples {finetune_samples}" if finetune_samples else ""
    return (f"python -m explorer train --model {model_name} --dataset {dataset} --epochs {cfg.epochs} --lr {cfg.lr:g} "
            f"--batch-size {cfg.batch_size} --weight-decay {cfg.weight_decay:g} --seed {cfg.seed} "
            f"--augment-shift {cfg.augment_shift}{width}")


def read_card(weights: str | os.PathLike[str]) -> ModelCard:
    path = card_path(weights)
    if not path.is_file():
        raise ValueError(f"baseline card {str(path)!r} is missing: every checkpoint in models/ needs its JSON card")
    try:
        card: ModelCard = json.loads(path.read_text())  # its keys checked below
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"baseline card {str(path)!r} is not valid JSON: {e}") from None
    for key in ("architecture", "arch_kwargs", "dataset", "accuracy"):
        if key not in card:
            raise ValueError(f"baseline card {str(path)!r} lacks the key {key!r}")
    if "input_size" not in card and (size := input_size_of(card)) is not None:  # a card written before it was kept
        card["input_size"] = size
    return card


def input_size_of(card: ModelCard) -> list[int] | None:
    """(channels, height, width) the model is fed, as baseline_data loads its images: from the architecture's
    arguments (an ONNX model's declared input shape, else its channels and image size)."""
    kw = card.get("arch_kwargs") or {}
    shape = kw.get("input_shape") or [kw.get("in_channels"), kw.get("image_size"), kw.get("image_size")]
    return [int(v) for v in shape] if all(isinstance(v, int) for v in shape) else None


def list_baselines(models_dir: str | os.PathLike[str] = MODELS_DIR) -> list[ModelCard]:
    """Cards of the committed baselines, each with `path` to its weights, smallest first."""
    cards: list[ModelCard] = []
    for w in sorted(Path(models_dir).glob("*.safetensors")):
        if card_path(w).is_file():
            card = read_card(w)
            card["path"] = str(w)
            cards.append(card)
    return sorted(cards, key=lambda c: c.get("params", 0))


def load_state_dict_file(path: str | os.PathLike[str], *, trust_code: bool = False,
                         shown: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a PyTorch checkpoint read with weights_only (no code runs). The
    format comes from the bytes; `shown` is the file's name as the user knows it, for messages."""
    path = Path(path)
    shown = shown or str(path)
    user_file(path, "checkpoint", shown)
    fmt = detect_format(path, shown)
    if fmt == "safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"checkpoint {shown!r} is not a readable safetensors file: {e}") from None
    if fmt in ("torchscript", "exported"):
        if not trust_code:
            raise program_refusal(shown, fmt)
        raise ValueError(f"model file {shown!r} is {PROGRAMS[fmt]}, not a state_dict: add it without an architecture")
    if fmt == "onnx":
        raise ValueError(f"model file {shown!r} is an ONNX model, not a state_dict: add it without an architecture")
    obj = read_torch_checkpoint(path, shown, trust_code)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {shown!r} does not hold a state_dict of tensors")
    return obj


def read_torch_checkpoint(path: Path, shown: str, trust_code: bool = False) -> object:
    """torch.load with weights_only (tensors and plain containers only); a checkpoint that pickles other
    Python objects is refused, since unpickling them runs code, unless the user trusts it."""
    import pickle
    import zipfile

    if zipfile.is_zipfile(path):
        check_checkpoint_zip(path, shown)  # the sizes its records declare are what torch.load allocates
    try:
        with quiet_third_party() if trust_code else contextlib.nullcontext():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_code:
            # torch's message opens with a paragraph about its defaults; what it refused follows "error:"
            found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(e), re.S)
            why = (found.group(1).strip().splitlines() or [""])[0][:160] if found else ""
            why = why or "torch's weights-only loader could not read it"
            raise ValueError(f"checkpoint {shown!r} was refused: it pickles Python objects besides tensors "
                             f"({why}), and unpickling them runs code. Re-save its state_dict with "
                             "safetensors, or pass --trust-code on the command line if you trust its author"
                             ) from None
    except Exception as e:
        raise ValueError(f"checkpoint {shown!r} could not be read: {first_line(e)}") from None
    try:
        with quiet_third_party():
            return torch.load(str(path), map_location="cpu", weights_only=False)  # trusted by the user
    except Exception as e:
        raise ValueError(f"checkpoint {shown!r} could not be loaded: {first_line(e)}") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """load_state_dict with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                parts.append(f"{label} {len(items)}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
        raise ValueError(f"checkpoint {source!r} does not fit {type(model).__name__}: " + "; ".join(parts))
    # load_state_dict would cast silently: a complex tensor loses its imaginary part, a fraction in an integer
    # buffer is cut off
    def wrong_kind(got: torch.Tensor, want: torch.Tensor) -> bool:
        if got.is_complex():
            return not want.is_complex()
        return (got.is_floating_point() and not (want.is_floating_point() or want.is_complex())
                and not bool((got == got.trunc()).all()))

    kinds = sorted(f"{k} ({str(state[k].dtype).removeprefix('torch.')} for {str(own[k].dtype).removeprefix('torch.')})"
                   for k in own if wrong_kind(state[k], own[k]))
    if kinds:
        raise ValueError(f"checkpoint {source!r} holds values of the wrong kind: {', '.join(kinds[:6])}"
                         f"{' ...' if len(kinds) > 6 else ''}; real-valued weights and integer counters expected")
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex())
           and not torch.isfinite(v if v.element_size() > 1 else v.float()).all()]  # float8 has no isfinite
    if bad:
        raise ValueError(f"checkpoint {source!r} has NaN or Inf values in {', '.join(bad[:6])}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_baseline(weights: str | os.PathLike[str]) -> tuple[nn.Module, ModelCard]:
    card = read_card(weights)
    model = create_model(card["architecture"], **card["arch_kwargs"])
    load_into(model, load_state_dict_file(weights), str(weights))
    return model, card


def baseline_data(card: ModelCard) -> DataBundle:
    """The dataset and split the baseline was trained and measured on, fed as its card says: at its input size and
    normalised with the mean and std its user gave, if any (else the training split's own)."""
    kw = card["arch_kwargs"]
    shape = kw.get("input_shape") or [kw.get("in_channels"), kw.get("image_size"), kw.get("image_size")]
    given = card.get("preprocessing") or {}
    mean, std = (tuple(given["mean"]), tuple(given["std"])) if "mean" in given else (None, None)
    if card["dataset"] == "digits":  # a model whose first layer takes colour gets the digits as 3 equal channels
        # and one added at another image size its digits resized (the 8x8 default resizes nothing)
        return load_dataset("digits", seed=card.get("split_seed", 0), channels=shape[0] if shape[0] != 1 else None,
                            image_size=shape[-1] if shape[-1] != 8 else None, mean=mean, std=std)
    return load_dataset(card["dataset"], card.get("dataset_root"), seed=card.get("split_seed", 0),
                        image_size=shape[-1], channels=shape[0], mean=mean, std=std)


def describe_baseline(weights: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the first page shows: the card, a fresh measurement and the per-layer table."""
    model, card = load_baseline(weights)
    data = baseline_data(card)
    card.setdefault("normalisation", {"mean": list(data.mean), "std": list(data.std)})  # a card older than the field
    measured = {**evaluate(model, data.test), "file_bytes": Path(weights).stat().st_size,
                "params": count_params(model)}
    return {"card": card, "measured": measured, "layers": layer_table(model)}
