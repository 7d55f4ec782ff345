"""Compression techniques, one module each, composed by `compress(model, recipe, data)`.

Importing this package registers every technique's step kind (see base.register_step)."""

from explorer.compress import bnadapt, cluster, distill, lowrank, prune, quantize  # noqa: F401  (register step kinds)
from explorer.compress.pipeline import CompressResult, compress  # noqa: F401
