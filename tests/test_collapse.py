"""A run whose model collapsed (it guesses) is marked as such: in its RunResult, in words on the Overview, the
summary and the command line, apart on the charts, never the sweet spot; older results without the mark still read."""

import copy
import math

import pandas as pd
import pytest
import torch

from explorer.app import plots, summary
from explorer.app.cli import summary as cli_summary
from explorer.app.marks import LEGEND
from explorer.app.metrics import across_seeds, collapsed_rows, sweet_spot
from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.run import collapse, runner
from explorer.run.result import flatten, malformed

LN10 = math.log(10)


def test_each_sign_of_a_collapse_is_enough_and_a_working_model_shows_none():
    kw = {"classes": 10, "n": 10_000, "baseline_correct": 9_187, "losses": [[0.41, 0.35]], "emptied": []}
    assert collapse.detect(correct=8_900, **kw) is None
    assert collapse.detect(correct=1_000, **kw)["reasons"] == ["top1_at_chance"]  # 10.00%: a guess
    assert collapse.detect(correct=1_040, **kw)["reasons"] == ["top1_at_chance"]  # 10.4%: its interval reaches 10%
    assert collapse.detect(correct=1_200, **kw) is None  # 12%: poor, but beats a guess beyond its interval
    stuck = collapse.detect(correct=8_900, **{**kw, "losses": [[2.4, 2.3031]]})
    assert stuck["reasons"] == ["loss_at_chance"] and stuck["final_loss"] == pytest.approx(2.3031)
    assert stuck["chance_loss"] == pytest.approx(LN10, abs=1e-4)
    assert collapse.detect(correct=8_900, **{**kw, "losses": [[2.3026], [0.9, 0.6]]}) is None  # the last one counts
    assert collapse.detect(correct=8_900, **{**kw, "losses": [[2.2]]}) is None  # learning, if poorly
    cut = collapse.detect(correct=8_900, **{**kw, "emptied": ["classifier.0"]})
    assert cut["reasons"] == ["layer_emptied"] and cut["layers_emptied"] == ["classifier.0"]
    # a baseline that itself guesses: its compressed copy guessing too is no collapse of the compression
    assert collapse.detect(correct=1_000, **{**kw, "baseline_correct": 1_010}) is None


def _zero_the_classifier(real):
    """compress() on a copy of the baseline whose hidden classifier layer is emptied and whose output bias is
    zero: nothing reaches the output, so the model guesses and fine-tuning cannot move it (ReLU at 0 passes no
    gradient), its loss sitting at ln 10."""
    def compress(model, recipe, data, **kw):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.classifier[1].weight.zero_()
            model.classifier[1].bias.zero_()
            model.classifier[4].bias.zero_()
        return real(model, recipe, data, **kw)
    return compress


@pytest.fixture(scope="module")
def fell(tmp_path_factory):
    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5, scope="layer", finetune_epochs=1),))
    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "compress", _zero_the_classifier(runner.compress))
    try:
        return runner.prepare(recipe, tmp_path_factory.mktemp("fell"))
    finally:
        mp.undo()


def test_a_run_whose_model_collapsed_is_marked_in_its_result(fell, tmp_path):
    c = fell["collapse"]
    assert set(c["reasons"]) == {"top1_at_chance", "loss_at_chance", "layer_emptied"}
    assert c["layers_emptied"] == ["classifier.1"] and c["classes"] == 10
    assert abs(c["final_loss"] - LN10) < 0.02
    assert malformed(fell) is None and flatten(fell)["collapsed"] is True
    said = collapse.words(fell)
    assert said.startswith("This model collapsed") and "classifier.1" in said and "not a measured trade-off" in said
    assert "Try a lower sparsity, the scope 'one ranking across all layers'" in said
    assert "classifier.1" in collapse.emptied_words(fell)
    assert "COLLAPSED: This model collapsed" in cli_summary({**fell, "timings": {**fell["timings"], "steps": []}})
    # the same recipe on the intact baseline is not marked
    ok = runner.prepare(Recipe.from_dict(fell["recipe"]), tmp_path)
    assert "collapse" not in ok and flatten(ok)["collapsed"] is False


def test_an_older_result_without_the_mark_still_reads(fell):
    old = {k: v for k, v in fell.items() if k != "collapse"}
    assert malformed(old) is None and flatten(old)["collapsed"] is False
    assert malformed({**fell, "collapse": "yes"}) is not None  # the field has its shape


def _table() -> pd.DataFrame:
    """Four pruned runs of one model: the smallest collapsed (top-1 at chance, counts and all)."""
    rows = []
    for key, sp, top1, size, fell in (("base", 0.0, 92.0, 240_000, False), ("p50", 0.5, 91.8, 60_000, False),
                                      ("p70", 0.7, 91.5, 40_000, False), ("p90", 0.9, 10.0, 12_000, True)):
        right = round(top1 * 100)
        rows.append({"key": key, "label": key, "words": key, "status": "ok", "sparsity_requested": sp, "top1": top1,
                     "top1_lo": top1 - 0.5, "top1_hi": top1 + 0.5, "accuracy_delta": top1 - 92.0,
                     "packed_bytes": size, "rf_packed": 240_000 / size, "latency_ms": 1.0,
                     "scheme": "fp32 (no quantisation)", "clusters": 0,
                     "technique": "baseline" if sp == 0 else "prune", "collapsed": fell, "significant": sp > 0,
                     "both_right": min(right, 9200), "baseline_only": max(9200 - right, 0), "run_only": 0,
                     "both_wrong": 10_000 - max(right, 9200)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("confidence", [0.95, None])
def test_a_collapsed_run_is_never_the_sweet_spot(confidence):
    t = _table()
    pick = sweet_spot(t, max_drop=100.0, objective="smallest", confidence=confidence)
    assert pick.row["key"] == "p70"  # the collapsed p90 is smaller still, and meets a drop of 100 points
    every = sweet_spot(t[t["collapsed"]], max_drop=100.0, objective="smallest", confidence=confidence)
    assert every.row is None and "collapsed" in every.reason


def _trace_points(fig, name):
    return [(x, y) for t in fig.data if t.name == name for x, y in zip(t.x, t.y, strict=True)]


def test_the_curves_mark_a_collapsed_run_apart_and_never_join_it():
    t = _table()
    fig = plots.sparsity_accuracy(t, current_key="p90")
    line = _trace_points(fig, "fp32 (no quantisation)")
    assert [x for x, _ in line] == [0.0, 0.5, 0.7]  # the curve ends at the last measured run: no cliff
    marked = _trace_points(fig, LEGEND)
    low, high = fig.layout.yaxis.range
    assert [x for x, _ in marked] == [0.9] and low <= marked[0][1] < low + 0.05 * (high - low)
    assert low > 80  # the axis spans the measured runs, not the guess
    star = _trace_points(fig, "current")
    assert star == marked  # the current run, collapsed, sits on its cross
    front = plots.pareto(t, "packed_bytes", "packed bytes")
    assert 12_000 not in [x for x, _ in _trace_points(front, "Pareto front") + _trace_points(front, "runs")]
    assert [x for x, _ in _trace_points(front, LEGEND)] == [12_000]
    assert "1 collapsed run left out" in plots.ad_rf_ranking(t, "packed_bytes").layout.title.text


def test_the_summary_says_the_model_collapsed(fell):
    frame = _table()
    said = summary.big_numbers(fell)[-1]
    assert said[1] == "collapsed" and "10 classes" in said[2] and "pts" not in said[1]
    page = summary.page(fell, frame, "digits_cnn-digits")
    assert "This model collapsed" in page
    assert summary.png(fell, frame, "digits_cnn-digits")[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_configuration_that_collapsed_with_any_seed_is_collapsed_across_seeds():
    t = _table().assign(seed=0, config=lambda d: d["key"])
    again = t.assign(seed=1, collapsed=False, top1=lambda d: d["top1"].where(d["key"] != "p90", 60.0))
    means = across_seeds(pd.concat([t, again], ignore_index=True))
    assert list(means.loc[collapsed_rows(means), "key"]) == ["p90"]  # its mean top-1 (35%) mixes in a guess
    assert sweet_spot(means, max_drop=100.0, objective="smallest", confidence=None).row["key"] == "p70"
    assert collapsed_rows(pd.DataFrame({"collapsed": ["True", "False", None]})).tolist() == [True, False, False]
