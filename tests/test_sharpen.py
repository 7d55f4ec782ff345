"""Answers that sharpen: a large test set is scored in two parts, a stratified first part first. The part holds
every class in its share, its interval covers the whole set's figure as a 95% interval should, and its paired
comparison with the baseline is the one computed directly on the same images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from explorer.core import stats
from explorer.core.data import Split
from explorer.measure.accuracy import first_part, stratified_order, subset
from explorer.run import sharpen


def test_every_prefix_of_the_order_holds_each_class_in_its_share():
    rng = np.random.default_rng(1)
    y = rng.choice(10, size=10_000, p=np.r_[np.full(9, 0.08), 0.28])  # one class far larger
    order = stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(len(y)))  # a permutation: every image, once
    share = np.bincount(y, minlength=10) / len(y)
    for k in (100, 1000, first_part(len(y)), 5000):
        got = np.bincount(y[order[:k]], minlength=10)
        assert np.all(np.abs(got - share * k) <= 1.0), (k, got, share * k)
    assert first_part(359) == 0 and first_part(10_000) == 1000 and first_part(50_000) == 5000


def test_the_interval_of_a_first_part_covers_the_whole_sets_score_at_least_95_percent_of_the_time():
    """A property test on recorded predictions: right or wrong per image, fixed; only the draw of the first part
    (the order's seed) varies."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=10_000)
    right = rng.random(10_000) < np.where(y == 3, 0.7, 0.93)  # one class much harder
    full = right.mean() * 100
    k = first_part(len(y))
    covered = 0
    for seed in range(400):
        idx = stratified_order(y, seed=seed)[:k]
        lo, hi = stats.wilson(int(right[idx].sum()), k)
        covered += lo <= full <= hi
    assert covered / 400 >= 0.95


def test_the_first_parts_comparison_is_the_paired_one_on_the_same_images():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, size=5000)
    base = np.where(rng.random(5000) < 0.9, y, (y + 1) % 10)
    run = np.where(rng.random(5000) < 0.88, y, (y + 2) % 10)
    idx = stratified_order(y)[:first_part(5000)]
    got = subset(run, base, y, idx)
    assert got["vs_baseline"] == stats.vs_baseline(base[idx], run[idx], y[idx])
    assert got["n"] == 1000 and got["top1"] == 100.0 * (run[idx] == y[idx]).mean()


def test_scoring_in_two_parts_gives_every_images_figures_and_shows_the_first_part_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    x, y = torch.randn(3000, 1, 4, 4), torch.randint(0, 10, (3000,))
    seen = []
    with torch.no_grad():
        acc = sharpen.score(model, Split(x, y), 1, lambda part, k: seen.append((part, k)))
        whole = model(x)
    assert len(seen) == 1 and seen[0][1] == 1000 and seen[0][0]["n"] == 1000
    assert torch.equal(acc["pred"], whole.argmax(1)) and acc["n"] == 3000
    idx = seen[0][0]["index"]
    assert torch.equal(seen[0][0]["pred"], whole.argmax(1)[idx])
    assert sharpen.score(model, Split(x[:500], y[:500]), 1, lambda *a: seen.append(a))["n"] == 500 and len(seen) == 1
