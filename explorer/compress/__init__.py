"""Compression: a Recipe's ordered steps applied by `compress(model, recipe, data)`, one module per
technique (prune with channel pruning, quantize with mixed precision, cluster, lowrank, distill, bn_adapt).
Each technique is a frozen config deriving from `base.StepConfig` plus a pure apply(model, config, ctx)
registered with `@base.register_step`; the pipeline dispatches on the config's type. Importing this package
(or any module in it) imports every module in it, so a new technique's module registers itself with no list to
edit here. Nothing here does I/O or knows how a run is measured."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # each technique registers its step kind

from explorer.compress.pipeline import CompressResult, compress  # noqa: E402, F401
