"""The same-budget control (explorer.compress.finetune, explorer.run.control): a recipe that fine-tunes is compared
with its baseline fine-tuned the same way without compression. The control trains exactly as the run's steps train,
two recipes with the same budget share it (one key, computed once), and the paired comparison with it is the one
explorer.core.stats gives on the two runs' stored predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.compress.cluster import ClusterConfig
from explorer.compress.distill import DistillConfig
from explorer.compress.finetune import FinetuneConfig, budget_words, control_of, is_control
from explorer.compress.pipeline import compress
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core import stats
from explorer.core.data import load_dataset
from explorer.models.baselines import baseline_data, load_baseline
from explorer.run import control
from explorer.run.cache import RunCache, _default_compute
from explorer.run.result import FILES, flatten
from explorer.run.runner import run_key


def _digits(*steps, **kw) -> Recipe:
    return Recipe(model="digits_cnn", steps=steps, **kw)


def test_two_recipes_with_the_same_budget_share_one_control_and_another_budget_has_its_own():
    a = _digits(PruneConfig(sparsity=0.5, finetune_epochs=2))
    b = _digits(PruneConfig(sparsity=0.8, finetune_epochs=2), QuantizeConfig(bits=8))  # PTQ trains nothing
    c = _digits(PruneConfig(sparsity=0.5, finetune_epochs=3))
    assert control_of(a) == control_of(b) == _digits(FinetuneConfig(epochs=2, lr=1e-3))
    assert run_key(control_of(a)) == run_key(control_of(b)) != run_key(control_of(c))
    # the training images and the seed are the recipe's: another subset or seed is another control
    assert control_of(_digits(PruneConfig(finetune_epochs=2), finetune_samples=500)).finetune_samples == 500
    assert control_of(_digits(PruneConfig(finetune_epochs=2), seed=3)).seed == 3


def test_each_training_step_keeps_its_epochs_rounds_and_learning_rate_in_order():
    r = _digits(PruneConfig(sparsity=0.5, schedule="iterative", rounds=3, finetune_epochs=3),
                ClusterConfig(clusters=16, finetune_epochs=1),
                QuantizeConfig(bits=4, mode="qat", finetune_epochs=2, lr=1e-3))
    assert control_of(r).steps == (FinetuneConfig(1, 1e-3, runs=3), FinetuneConfig(1, 1e-4), FinetuneConfig(2, 1e-3))
    assert sum(s.training_epochs() for s in control_of(r).steps) == sum(s.training_epochs() for s in r.steps) == 6
    assert budget_words(control_of(r)) == ("3 epochs at learning rate 0.001, then 1 epoch at learning rate 0.0001, "
                                           "then 2 epochs at learning rate 0.001")
    assert budget_words(control_of(_digits(PruneConfig(finetune_epochs=2)))) == "2 epochs"


def test_no_control_where_nothing_trains_where_a_new_model_is_trained_or_for_a_control_itself():
    assert control_of(_digits(PruneConfig(sparsity=0.5))) is None
    assert control_of(_digits()) is None
    assert control_of(_digits(DistillConfig(epochs=1), PruneConfig(finetune_epochs=2))) is None
    ctl = control_of(_digits(PruneConfig(finetune_epochs=2)))
    assert is_control(ctl) and is_control(ctl.to_dict()) and control_of(ctl) is None
    assert not is_control(_digits(PruneConfig(finetune_epochs=2)).to_dict()) and not is_control(_digits())


def test_the_control_trains_exactly_as_the_runs_fine_tuning_does():
    """Pruning 0% leaves every weight and fine-tunes: with the same images, seed and learning rate its model is
    the control's, bit for bit."""
    r = _digits(PruneConfig(sparsity=0.0, finetune_epochs=1))
    model, card = load_baseline(r.checkpoint_path)
    tune = baseline_data(card).with_train_subset(500, r.seed)
    a = compress(model, r, tune).model.state_dict()
    b = compress(model, control_of(r), tune).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = model.state_dict()
    assert not all(torch.equal(base[k], b[k]) for k in base)  # and it did train


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Two pruning recipes with one fine-tuning budget, and their control, computed through one cache (untimed:
    only the predictions matter here), counting what it computes."""
    cache = RunCache(tmp_path_factory.mktemp("control") / "cache")
    computed: list[str] = []

    def compute(recipe, work, progress, **kw):
        computed.append(run_key(recipe))
        return _default_compute(recipe, work, progress, latency=False)

    recipes = [_digits(PruneConfig(sparsity=s, finetune_epochs=1), finetune_samples=500) for s in (0.5, 0.8)]
    runs = [cache.get_or_run(r, compute=compute, latency=False) for r in recipes]
    controls = [cache.get_or_run(control_of(r), compute=compute, latency=False) for r in recipes]
    return cache, runs, controls, computed


def test_the_control_is_computed_once_per_model_and_budget(stored):
    cache, runs, controls, computed = stored
    assert all(r["status"] == "ok" for r in (*runs, *controls))
    assert controls[0]["key"] == controls[1]["key"] and computed.count(controls[0]["key"]) == 1
    assert len(computed) == 3 and controls[1]["cache"]["hit"]


def test_the_paired_comparison_with_the_control_is_stats_on_the_two_stored_predictions(stored):
    cache, runs, controls, _ = stored
    y = load_dataset("digits").test.y.numpy()
    for run in runs:
        run_pred = np.load(cache.root / run["key"] / FILES["predictions"])
        control_pred = np.load(cache.root / controls[0]["key"] / FILES["predictions"])
        direct = stats.vs_baseline(control_pred, run_pred, y)
        got = control.compare(run, controls[0], cache)
        assert got is not None and {k: got[k] for k in direct} == direct
        assert got["key"] == controls[0]["key"] and got["epochs"] == 1 and got["budget"] == "1 epoch"
        n = len(y)
        assert got["top1"] == pytest.approx(100 * float((control_pred == y).mean()), abs=1e-4)
        assert got["delta"] == pytest.approx(100 * (direct["run_only"] - direct["baseline_only"]) / n, abs=1e-4)
        assert got["delta"] == pytest.approx(run["accuracy"]["top1"] - controls[0]["accuracy"]["top1"])
        row = flatten(control.attach(run, controls[0], cache))  # the results table carries it
        assert row["control_delta"] == got["delta"] and row["control_key"] == got["key"] and not row["control"]
    assert flatten(controls[0])["control"] and flatten(controls[0])["control_budget"] == "1 epoch"


def test_the_results_table_lists_runs_with_their_control_and_the_controls_apart(stored, monkeypatch):
    from explorer.app import service

    cache, runs, controls, _ = stored
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(cache.root))
    frame = service.frame("digits_cnn", "digits")
    lines = service.control_frame("digits_cnn", "digits")
    assert sorted(frame["key"]) == sorted(r["key"] for r in runs)
    assert list(lines["key"]) == [controls[0]["key"]]
    assert (frame["control_key"] == controls[0]["key"]).all()
    for run in runs:
        row = frame[frame["key"] == run["key"]].iloc[0]
        assert row["control_delta"] == pytest.approx(control.compare(run, controls[0], cache)["delta"])
