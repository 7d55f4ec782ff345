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


# ---------------------------------------------------------------- answers that sharpen: a stratified part first

SHARPEN_MIN = 2000  # test sets this large are scored in two parts: their first part's figure comes seconds sooner
FIRST_SHARE, FIRST_MIN = 0.1, 1000  # the first part: a tenth of the test images, at least a thousand


def stratified_order(labels: npt.ArrayLike, seed: int = 0) -> np.ndarray:
    """The test images in an order whose every prefix holds each class in its share (to within one image): each
    class's images, shuffled with `seed`, placed at the evenly spaced positions of their class (image j of a class
    of m, out of n, sits at (j + 1/2) n / m), the positions merged in order."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys: list[np.ndarray] = []
    index: list[np.ndarray] = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        keys.append((np.arange(len(members)) + 0.5) / len(members))
        index.append(members)
    if not index:
        return np.empty(0, dtype=np.int64)
    pos, idx = np.concatenate(keys), np.concatenate(index)
    return np.asarray(idx[np.lexsort((idx, pos))], dtype=np.int64)


def first_part(n: int) -> int:
    """How many test images the first, stratified part holds (0: the test set is scored in one part)."""
    return 0 if n < SHARPEN_MIN else max(FIRST_MIN, int(n * FIRST_SHARE))


def subset(acc_pred: npt.ArrayLike, base_pred: npt.ArrayLike, labels: npt.ArrayLike, idx: npt.ArrayLike,
           top5_correct: int | None = None) -> dict[str, Any]:
    """The figures of the images `idx` alone: top-1 with its Wilson interval and the paired comparison with the
    baseline on those very images (what a partial result shows while the rest is scored)."""
    i = np.asarray(idx)
    pred, base, y = np.asarray(acc_pred)[i], np.asarray(base_pred)[i], np.asarray(labels)[i]
    right = int((pred == y).sum())
    n = len(i)
    lo, hi = stats.wilson(right, n)
    return {"n": n, "top1": 100.0 * right / max(n, 1), "top1_ci": [round(lo, 4), round(hi, 4)],
            "base_top1": 100.0 * float((base == y).mean()) if n else 0.0,
            "vs_baseline": stats.vs_baseline(base, pred, y)}
