"""What the UI asks of the backend, in one place: baselines, a run through the cache, the table of
cached runs for a baseline, sweeps and artifacts. Keeps torch out of the UI modules."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd

from explorer import baselines
from explorer.cache import RunCache
from explorer.recipe import Recipe
from explorer.sweep import recipe_for, results_frame, run_sweep
from explorer.train import Progress

_frames: dict[str, tuple[float, dict]] = {}  # result.json path -> (mtime, parsed): the curves re-read only new runs


def datasets() -> list[str]:
    from explorer.data import list_datasets

    return list_datasets()


def architectures() -> list[str]:
    from explorer.zoo import list_models

    return list_models()


def cache() -> RunCache:
    return RunCache()


@functools.lru_cache(maxsize=64)
def _has_batchnorm(architecture: str, arch_kwargs: str) -> bool:
    from torch import nn

    from explorer.zoo import create_model

    try:
        model = create_model(architecture, **json.loads(arch_kwargs))
    except (ValueError, TypeError):  # a card the zoo cannot build says so where it is loaded
        return False
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def list_baselines() -> list[dict]:
    """The committed baselines, then the models users added (state_dicts and ONNX); each PyTorch one
    says whether it has BatchNorm layers (the page offers BatchNorm adaptation for those)."""
    from explorer.byo import list_user_models

    cards = baselines.list_baselines() + list_user_models()
    for c in cards:
        if c.get("format") != "onnx" and "architecture" in c:
            c["batchnorm"] = _has_batchnorm(c["architecture"], json.dumps(c.get("arch_kwargs") or {}, sort_keys=True))
    return cards


def add_model(path: str, *, arch: str | None, dataset: str, root: str | None, name: str | None) -> dict:
    """A state_dict with its architecture, or an ONNX/TorchScript/exported model without one."""
    from explorer import byo

    if arch:
        return byo.add_state_dict_model(path, arch, dataset, root=root, name=name)
    return byo.add_foreign_model(path, dataset, root=root, name=name)


def check_upload(n_bytes: int, what: str) -> None:
    from explorer.byo import check_upload_size

    check_upload_size(n_bytes, what)


def add_dataset_zip(zip_path: str, name: str) -> str:
    """Extract an uploaded ImageFolder zip safely; returns the folder to use as the dataset root."""
    from explorer import byo, safezip

    byo.check_upload_size(Path(zip_path).stat().st_size, f"zip {Path(zip_path).name!r}")
    dest = user_data_dir() / byo._safe_name(name)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    safezip.extract_zip(zip_path, dest)
    return str(safezip.tree_root(dest))


def user_data_dir() -> Path:
    import os

    return Path(os.environ.get("EXPLORER_USER_DATA", Path(baselines.MODELS_DIR).parent / "data" / "user"))


def describe_baseline(path: str) -> dict:
    return baselines.describe_baseline(path)


def run(recipe: Recipe, progress: Progress | None = None) -> dict:
    return cache().get_or_run(recipe, progress=progress)


def cached_results(model: str, dataset: str, checkpoint: str | None = None) -> list[dict]:
    """Every stored run of this baseline (light read: the result JSON of complete entries)."""
    c = cache()
    out = []
    for key in c.keys():
        path = c.root / key / "result.json"
        if not (c.root / key / "manifest.json").is_file():
            continue
        try:
            mtime = path.stat().st_mtime
            hit = _frames.get(str(path))
            if hit is None or hit[0] != mtime:
                hit = (mtime, json.loads(path.read_text()))
                _frames[str(path)] = hit
        except (OSError, ValueError):
            continue
        r = hit[1]
        rc = r.get("recipe", {})
        if r.get("model") == model and r.get("dataset") == dataset and rc.get("checkpoint") == checkpoint:
            out.append(r)
    return out


def frame(model: str, dataset: str, checkpoint: str | None = None) -> pd.DataFrame:
    rows = cached_results(model, dataset, checkpoint)
    df = results_frame(rows)
    if df.empty:
        return pd.DataFrame(columns=["key", "label", "status", "top1", "accuracy_delta", "sparsity_requested",
                                     "bits", "clusters", "packed_bytes", "recipe_json"])
    return df


def sweep(card: dict, *, sparsity, bits, clusters, epochs: int, granularity: str, bn_adapt: bool = False,
          progress=None) -> pd.DataFrame:
    recipes = []
    for s in sparsity:
        for b in bits:
            for c in clusters:
                r = recipe_for(card["architecture"], card["dataset"], sparsity=s, bits=b, clusters=c,
                               granularity=granularity, finetune_epochs=epochs,
                               bn_adapt=bn_adapt and bool(card.get("batchnorm")))
                if card.get("name") != f"{card['architecture']}-{card['dataset']}":
                    r = Recipe(model=r.model, dataset=r.dataset, checkpoint=card["path"], steps=r.steps)
                recipes.append(r)
    return run_sweep(recipes, progress=progress, cache=cache())


def artifact(key: str, name: str) -> bytes | None:
    path = cache().artifact(key, name)
    return Path(path).read_bytes() if path else None


def sensitivity(result: dict, compute: bool = False) -> dict | None:
    """Per-layer sensitivity of a cached run: stored figures, or computed now when `compute`."""
    from explorer import sensitivity as sens

    c = cache()
    key = result.get("key")
    if not key or result.get("format") == "onnx":
        return None
    got = sens.stored(c.root, key)
    if got is not None or not compute:
        return got
    path = c.artifact(key, "model.xpk")
    if path is None:
        raise ValueError(f"run {key} has no packed file in the cache; run it again")
    values = sens.layer_sensitivity(Recipe.from_dict(result["recipe"]), Path(path).read_bytes())
    sens.store(c.root, key, values)
    return values
