"""The one recipe builder: controls -> Recipe, the same for the page, the Sweep tab and the command line."""

import pytest

from explorer.run import controls
from explorer.run.controls import DEFAULTS, build, from_recipe, grid_point, relevant
from explorer.run.grid import Grid

DIGITS = {"architecture": "digits_cnn", "dataset": "digits", "name": "digits_cnn-digits", "path": None,
          "batchnorm": False}
VGG = {"architecture": "vgg13", "dataset": "digits", "name": "vgg13-digits", "path": None, "batchnorm": True}


@pytest.mark.parametrize("bits,label", [(8, "W8A8 static"), (4, "W4 ptq"), (16, "fp16"), (32, "baseline")])
def test_a_bit_width_means_one_scheme_everywhere(bits, label):
    page = build({**DEFAULTS, "sparsity": 0.0, "bits": {32: "fp32", 16: "fp16"}.get(bits, str(bits))}, DIGITS)
    sweep = Grid.of(sparsity=(0.0,), bits=(bits,), clusters=(0,)).recipes()[0]
    assert page.label() == sweep.label() == grid_point("digits_cnn", bits=bits).label() == label
    assert page.canonical_json() == sweep.canonical_json()


def test_controls_that_do_not_apply_change_nothing():
    base = {**DEFAULTS, "bits": "4"}
    same = [{**base, "calibration": "entropy"}, {**base, "rank_ratio": 0.9}, {**base, "student_width": 0.25},
            {**base, "qat_epochs": 9}, {**base, "bn_adapt": False}]
    assert {build(c, DIGITS).canonical_json() for c in same} == {build(base, DIGITS).canonical_json()}
    assert build({**base, "quant_acts": True, "calibration": "entropy"}, DIGITS).canonical_json() != \
        build({**base, "quant_acts": True}, DIGITS).canonical_json()  # calibrated activations: it applies
    assert "calibration" not in relevant(base, DIGITS) and "calibration" in relevant({**base, "bits": "8"}, DIGITS)
    assert "bn_adapt" not in relevant(base, DIGITS) and "bn_adapt" in relevant(base, VGG)


@pytest.mark.parametrize("card", [DIGITS, VGG], ids=["digits_cnn", "vgg13"])
@pytest.mark.parametrize("point", [dict(sparsity=0.5), dict(sparsity=0.9, bits=8, clusters=16), dict(bits=4),
                                   dict(bits=16), dict(sparsity=0.75, granularity="channel"),
                                   dict(sparsity=0.5, schedule="gradual", finetune_epochs=3)])
def test_the_sidebar_can_be_set_to_any_grid_point(card, point):
    r = grid_point(card["architecture"], card["dataset"], bn_adapt=card["batchnorm"], **point)
    c = from_recipe(r.to_dict(), card)
    assert c is not None and build(c, card).canonical_json() == r.canonical_json()


def test_a_recipe_the_sidebar_cannot_say_is_not_applied():
    from explorer.compress.prune import PruneConfig
    from explorer.compress.recipe import Recipe

    odd = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5, lr=0.05),))
    assert from_recipe(odd.to_dict(), DIGITS) is None


def test_two_four_fixes_the_sparsity_and_bad_combinations_name_the_value():
    r = build({**DEFAULTS, "granularity": "nm", "sparsity": 0.3}, DIGITS)
    assert r.steps[0].target == 0.5 and r.steps[0].layers == "inner"
    with pytest.raises(ValueError, match="finetune_epochs=0 must be at least 1 for the gradual schedule"):
        build({**DEFAULTS, "schedule": "gradual", "prune_epochs": 0}, DIGITS)
    with pytest.raises(ValueError, match="bits=4 must be 8 for mode 'static'"):
        build({**DEFAULTS, "bits": "4", "quant_mode": "static"}, DIGITS)
    assert controls.quant_mode("8", "auto") == "static" and controls.quant_mode("4", "auto") == "ptq"


@pytest.mark.parametrize("granularity,control,a,b", [
    ("unstructured", "criterion", "l1", "l2"), ("nm", "criterion", "l1", "l2"), ("nm", "scope", "global", "layer")])
def test_a_disabled_control_stays_out_of_the_recipe_and_the_run_key(granularity, control, a, b):
    from explorer.compress.prune import PruneConfig
    from explorer.compress.recipe import Recipe
    from explorer.run.runner import run_key

    c = {**DEFAULTS, "sparsity": 0.5, "granularity": granularity}
    assert control not in relevant(c, DIGITS)
    assert build({**c, control: a}, DIGITS) == build({**c, control: b}, DIGITS)
    nm = {"sparsity": 0.5, "layers": "inner"} if granularity == "nm" else {}
    one, two = (Recipe(model="digits_cnn", steps=(PruneConfig(granularity=granularity, **nm, **{control: v}),))
                for v in (a, b))
    assert one.to_dict() != two.to_dict() and run_key(one) == run_key(two)


def test_a_control_that_applies_changes_the_run_key():
    from explorer.compress.prune import PruneConfig
    from explorer.compress.recipe import Recipe
    from explorer.run.runner import run_key

    c = {**DEFAULTS, "sparsity": 0.5, "granularity": "channel"}
    assert {"criterion", "scope"} <= relevant(c, DIGITS)
    assert build({**c, "criterion": "l1"}, DIGITS) != build({**c, "criterion": "l2"}, DIGITS)
    keys = {run_key(Recipe(model="digits_cnn", steps=(PruneConfig(granularity=g, criterion=k),)))
            for g in ("channel", "block") for k in ("l1", "l2")}
    assert len(keys) == 4
