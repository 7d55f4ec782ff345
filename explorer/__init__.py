"""Compression trade-off explorer: measured accuracy, size and latency of compressed models.

The names most scripts need are importable from here; each is loaded on first use, so `import explorer`
stays instant and pulls in torch only when a name that needs it is touched:

    from explorer import Recipe, RunCache, run_recipe
    result = RunCache().get_or_run(Recipe.from_dict({"model": "digits_cnn", "steps": [...]}))

The package is layered (docs/ARCHITECTURE.md): core < compress < artifact < measure < models < run < app;
a layer imports only the layers below it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from explorer.core.version import SCHEMA_VERSION, __version__

# public name -> the module that defines it
_EXPORTS = {
    "Recipe": "explorer.compress.recipe",
    "step_types": "explorer.compress.base",
    "pack": "explorer.artifact.pack",
    "unpack": "explorer.artifact.pack",
    "create_model": "explorer.core.zoo",
    "list_models": "explorer.core.zoo",
    "load_dataset": "explorer.core.data",
    "list_datasets": "explorer.core.data",
    "load_baseline": "explorer.models.baselines",
    "list_baselines": "explorer.models.baselines",
    "add_model": "explorer.models.user",
    "run_recipe": "explorer.run.runner",
    "run_key": "explorer.run.runner",
    "RunCache": "explorer.run.cache",
    "RunResult": "explorer.run.result",
    "Grid": "explorer.run.grid",
    "run_sweep": "explorer.run.executor",
    "results_frame": "explorer.run.result",
    "pareto_front": "explorer.app.metrics",
    "sweet_spot": "explorer.app.metrics",
}
__all__ = [
    "SCHEMA_VERSION", "__version__",
    "Recipe",
    "step_types",
    "pack",
    "unpack",
    "create_model",
    "list_models",
    "load_dataset",
    "list_datasets",
    "load_baseline",
    "list_baselines",
    "add_model",
    "run_recipe",
    "run_key",
    "RunCache",
    "RunResult",
    "Grid",
    "run_sweep",
    "results_frame",
    "pareto_front",
    "sweet_spot",
]


def __getattr__(name: str) -> Any:
    """PEP 562: a public name is imported from its module the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explorer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from explorer.app.metrics import pareto_front, sweet_spot
    from explorer.artifact.pack import pack, unpack
    from explorer.compress.base import step_types
    from explorer.compress.recipe import Recipe
    from explorer.core.data import list_datasets, load_dataset
    from explorer.core.zoo import create_model, list_models
    from explorer.models.baselines import list_baselines, load_baseline
    from explorer.models.user import add_model
    from explorer.run.cache import RunCache
    from explorer.run.executor import run_sweep
    from explorer.run.grid import Grid
    from explorer.run.result import RunResult, results_frame
    from explorer.run.runner import run_key, run_recipe
