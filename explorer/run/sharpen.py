"""Answers that sharpen: a large test set is scored in two parts, a stratified tenth first, so a run shows its
accuracy, with the interval of the images scored so far and its paired comparison with the baseline on those very
images, seconds before the whole test set is scored. The final figures are those of every image, as before; the
first part only comes first (explorer.measure.accuracy.stratified_order)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from explorer.core.data import Split
from explorer.core.train import predict_logits, scores
from explorer.measure.accuracy import first_part, stratified_order


def score(model: nn.Module, test: Split, workers: int, first_seen: Callable[[dict[str, Any], int], None] | None
          ) -> dict[str, Any]:
    """The model's figures on every test image (`scores`, with predictions). Where the test set is large, its
    stratified first part is scored first and `first_seen(its figures, how many)` called with them; its
    predictions (`pred`, in test order) are those of the first part's images alone."""
    k = first_part(len(test)) if first_seen is not None else 0
    if not k:
        return scores(predict_logits(model, test.x, workers=workers), test.y, with_predictions=True)
    order = torch.from_numpy(stratified_order(test.y.numpy()))
    first, rest = order[:k], order[k:]
    head = predict_logits(model, test.x[first], workers=workers)
    seen = scores(head, test.y[first], with_predictions=True)
    seen["index"] = first.numpy()
    assert first_seen is not None
    first_seen(seen, k)
    tail = predict_logits(model, test.x[rest], workers=workers)
    logits = torch.empty(len(test), head.shape[1])
    logits[first], logits[rest] = head, tail
    return scores(logits, test.y, with_predictions=True)


def words(scored: int | None, total: int) -> str:
    """What a partial accuracy stands on, in words ("" once every image is scored)."""
    if not scored:
        return ""
    return (f"Accuracy so far: the first {scored:,} of the {total:,} test images (every class in its share), with "
            "the interval and the comparison with the baseline on those images; the rest are being scored.")
