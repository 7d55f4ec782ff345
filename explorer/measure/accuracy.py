"""What a run's accuracy figures carry besides the point: the predicted label of every test image (kept as a
plain .npy, so later comparisons cost no compute) and the uncertainty computed from them."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from explorer.core import stats
from explorer.core.figures import Uncertainty


def save_predictions(path: Path, pred: npt.ArrayLike) -> None:
    """The predicted label of every test image, in test order: a plain .npy (never pickled)."""
    np.save(path, np.asarray(pred, dtype=np.int16), allow_pickle=False)


def load_predictions(data: bytes) -> np.ndarray:
    try:
        pred: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)  # (numpy's stub: Any, for .npz too)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"stored predictions are not a plain array: {e}") from None
    return pred


def uncertainty(acc: Mapping[str, Any], base_acc: Mapping[str, Any], labels: npt.ArrayLike) -> Uncertainty:
    """Wilson intervals of top-1 and top-5 over the test images, and the paired comparison with the
    baseline on the same images (explorer.core.stats)."""
    n = acc["n"]
    ci = {k: [round(v, 4) for v in stats.wilson(acc["correct"][k], n)] for k in ("top1", "top5")}
    return Uncertainty(accuracy_ci=ci, vs_baseline=stats.vs_baseline(base_acc["pred"].numpy(), acc["pred"].numpy(),
                                                                    np.asarray(labels)))
