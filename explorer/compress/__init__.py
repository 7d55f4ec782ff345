"""Compression: a Recipe's ordered steps applied by `compress(model, recipe, data)`, one module per
technique (prune with channel pruning, quantize with mixed precision, cluster, lowrank, distill, bn_adapt).
Each technique is a frozen config deriving from `base.StepConfig` plus a pure apply(model, config, ctx)
registered with `@base.register_step`; the pipeline dispatches on the config's type. Importing this package
(or any module in it) registers every technique. Nothing here does I/O or knows how a run is measured."""

from explorer.compress import bnadapt, cluster, distill, lowrank, prune, quantize  # noqa: F401  (register step kinds)
from explorer.compress.pipeline import CompressResult, compress  # noqa: F401
