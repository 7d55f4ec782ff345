"""Where the repository keeps its data: the committed baselines, the run cache and data sets fetched on
request. Every path is relative to the repository root (or set by an environment variable), so the
explorer runs from any working directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # explorer/core/paths.py -> the repository
MODELS_DIR = ROOT / "models"  # trained baselines: <architecture>-<dataset>.safetensors and a JSON card each
REPO_DATA = ROOT / "data"  # data sets fetched with `python -m explorer data fetch`


def cache_dir() -> Path:
    """The run cache: EXPLORER_CACHE_DIR, else cache/ in the repository (explorer.core.cachedir checks it)."""
    return env_folder("EXPLORER_CACHE_DIR", ROOT / "cache")


def env_folder(name: str, default: Path) -> Path:
    """The folder environment variable `name` names, else `default`. Empty or blank counts as unset, as for
    every setting: Path("") is the current folder, where nothing of the explorer's belongs."""
    env = os.environ.get(name, "")
    return Path(env) if env.strip() else default


def baseline_path(model: str, dataset: str, models_dir: str | os.PathLike[str] = MODELS_DIR) -> Path:
    """The committed weights of `model` trained on `dataset`. A name from a library (`timm:resnet18`) gives a file
    name every file system takes (`timm-resnet18-digits.safetensors`: ':' is a drive separator on Windows and
    odd in URLs); the card inside keeps the real name."""
    return Path(models_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', model)}-{dataset}.safetensors"
