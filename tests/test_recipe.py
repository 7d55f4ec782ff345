import json

import pytest
import torch

from explorer.compress import compress
from explorer.compress.cluster import ClusterConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import MAX_RECIPE_BYTES, Recipe
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model

DESIGN_EXAMPLE = {
    "model": "digits_cnn", "dataset": "digits", "checkpoint": "models/digits_cnn-digits.safetensors", "seed": 0,
    "steps": [
        {"kind": "prune", "granularity": "unstructured", "criterion": "l1", "scope": "global",
         "sparsity": 0.9, "schedule": "gradual", "finetune_epochs": 5},
        {"kind": "cluster", "clusters": 16, "finetune_epochs": 2},
        {"kind": "quantize", "bits": 8, "mode": "static", "per_channel": True, "symmetric": True}]}


def test_design_example_parses_and_round_trips():
    r = Recipe.from_dict(DESIGN_EXAMPLE)
    assert [type(s) for s in r.steps] == [PruneConfig, ClusterConfig, QuantizeConfig]
    assert r.steps[0].sparsity == 0.9 and r.steps[1].clusters == 16 and r.steps[2].mode == "static"
    again = Recipe.from_json(r.to_json())
    assert again == r and again.canonical_json() == r.canonical_json()
    assert r.label() == "prune 90% unstructured gradual -> cluster 16 -> W8A8 static"


def test_canonical_json_writes_defaults_and_ignores_the_label():
    a = Recipe.from_dict({"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.5}]})
    b = Recipe.from_dict({"model": "digits_cnn", "name": "half", "steps": [
        {"kind": "prune", "sparsity": 0.5, "granularity": "unstructured", "scope": "global"}]})
    assert a.canonical_json() == b.canonical_json()
    assert json.loads(a.canonical_json())["steps"][0]["criterion"] == "l1"
    c = Recipe.from_dict({"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.6}]})
    assert a.canonical_json() != c.canonical_json()


def test_bad_recipes_name_the_problem():
    with pytest.raises(ValueError,
                       match=r"step kind='sparsify' must be one of: bn_adapt, cluster, distill, finetune, lowrank, "
                             r"prune"):
        Recipe.from_dict({"model": "digits_cnn", "steps": [{"kind": "sparsify"}]})
    with pytest.raises(ValueError, match=r"prune step has unknown keys \['amount'\]"):
        Recipe.from_dict({"model": "digits_cnn", "steps": [{"kind": "prune", "amount": 0.5}]})
    with pytest.raises(ValueError, match=r"sparsity=1.2 must be a number in \[0.0, 0.99\]"):
        Recipe.from_dict({"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 1.2}]})
    with pytest.raises(ValueError, match=r"recipe has unknown keys \['modle'\]"):
        Recipe.from_dict({"modle": "digits_cnn"})
    with pytest.raises(ValueError, match="not valid JSON"):
        Recipe.from_json("{model: x")
    with pytest.raises(ValueError, match=r"dataset='imagenet' must be one of"):
        Recipe(model="digits_cnn", dataset="imagenet")
    with pytest.raises(ValueError, match="changes layer shapes, so it must come before step 1"):
        Recipe(model="digits_cnn", steps=(QuantizeConfig(bits=8), PruneConfig(granularity="channel", sparsity=0.5)))
    # values of the wrong JSON type were Python's TypeErrors ("unhashable type: 'list'")
    with pytest.raises(ValueError, match=r"^step kind=\['prune'\] must be one of: bn_adapt, cluster"):
        Recipe.from_dict({"model": "digits_cnn", "steps": [{"kind": ["prune"]}]})
    with pytest.raises(ValueError, match=r"^checkpoint=5 must be a path to a weights file, as text$"):
        Recipe.from_dict({"model": "digits_cnn", "checkpoint": 5})
    with pytest.raises(ValueError, match=r"^name=\{'a': 1\} must be a label, as text$"):
        Recipe.from_dict({"model": "digits_cnn", "name": {"a": 1}})


def test_compress_composes_steps_and_never_changes_the_input():
    data = load_dataset("digits")
    torch.manual_seed(0)
    m = create_model("digits_cnn")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seen = []
    r = compress(m, [PruneConfig(sparsity=0.9), ClusterConfig(clusters=8), QuantizeConfig(bits=4)], data,
                 progress=lambda f, msg: seen.append(f))
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert [t["kind"] for t in r.timings] == ["prune", "cluster", "quantize"]
    for name, mask in r.state.masks.items():
        w = r.model.get_parameter(name)
        assert (w[~mask] == 0).all()
        assert torch.unique(w[mask]).numel() <= 8  # clustered, then the 8 centroids put on a 4-bit grid
    assert seen[-1] == 1.0


def test_a_recipe_of_endless_work_is_refused_before_any_starts(tmp_path):
    """Security review (issue 21): 8,000 steps of 1,000 epochs each (488 KB, under the 1 MB file cap) used to
    be accepted and run for ever."""
    step = {"kind": "prune", "sparsity": 0.5, "schedule": "gradual", "finetune_epochs": 1000}
    path = tmp_path / "endless.json"
    path.write_text(json.dumps({"model": "digits_cnn", "steps": [step] * 8000}))
    assert path.stat().st_size < MAX_RECIPE_BYTES
    with pytest.raises(ValueError) as e:
        Recipe.from_file(path)
    assert str(e.value) == f"recipe file {str(path)!r}: steps: 8000 steps must be at most 16"
    with pytest.raises(ValueError, match=r"^steps: 17 steps must be at most 16$"):
        Recipe(model="digits_cnn", steps=(QuantizeConfig(mode="fp16", bits=16),) * 17)


@pytest.mark.parametrize("step,field", [
    ({"kind": "prune", "sparsity": 0.5, "finetune_epochs": 1000}, "finetune_epochs"),
    ({"kind": "cluster", "finetune_epochs": 101}, "finetune_epochs"),
    ({"kind": "lowrank", "finetune_epochs": 101}, "finetune_epochs"),
    ({"kind": "quantize", "bits": 4, "mode": "qat", "finetune_epochs": 101}, "finetune_epochs"),
    ({"kind": "distill", "epochs": 101}, "epochs"),
])
def test_every_training_field_of_every_step_has_a_maximum(step, field):
    with pytest.raises(ValueError, match=rf"{field}={step[field]} must be an integer in \[\d, 100\]"):
        Recipe.from_dict({"model": "digits_cnn", "steps": [step]})


def test_the_epochs_of_all_steps_together_are_bounded():
    three = [{"kind": "prune", "sparsity": s, "finetune_epochs": 100} for s in (0.3, 0.5, 0.7)]
    with pytest.raises(ValueError) as e:
        Recipe.from_dict({"model": "digits_cnn", "steps": three})
    assert str(e.value) == "steps: 300 training epochs in all (prune 100, prune 100, prune 100) must be at most 250"
    # an iterative schedule fine-tunes at least one epoch a round: 50 rounds of "1 epoch" train 50
    rounds = PruneConfig(sparsity=0.5, schedule="iterative", rounds=50, finetune_epochs=1)
    assert rounds.training_epochs() == 50
    assert PruneConfig(schedule="iterative", finetune_epochs=9).training_epochs() == 9  # 3 rounds of 3
    with pytest.raises(ValueError, match="steps: 300 training epochs in all"):
        Recipe(model="digits_cnn", steps=(rounds,) * 6)


def test_the_pages_largest_recipe_fits_the_bounds():
    """The bounds sit above everything the page's controls can build: 6 steps, 203 epochs of training."""
    from explorer.run.controls import DEFAULTS, build

    most = {**DEFAULTS, "distill": True, "distill_epochs": 100, "lowrank": True, "sparsity": 0.5, "prune_epochs": 50,
            "clusters": "16", "cluster_finetune": True, "bits": "4", "quant_mode": "qat", "qat_epochs": 50}
    r = build(most, {"architecture": "digits_cnn", "dataset": "digits", "name": "digits_cnn-digits"})
    assert len(r.steps) == 5 and sum(s.training_epochs() for s in r.steps) == 203
    assert Recipe.from_json(r.to_json()) == r


def test_a_key_given_twice_is_refused_at_every_level_naming_it(tmp_path):
    """Security review (issue 21): {"model": "digits_cnn", ..., "model": "vgg13"} silently ran VGG-13, the last
    one, while a reader of the file saw the digits CNN first."""
    with pytest.raises(ValueError) as e:
        Recipe.from_json('{"model": "digits_cnn", "steps": [], "model": "vgg13"}')
    assert str(e.value) == "recipe is ambiguous: key 'model' is given twice in one object: give each key once"
    nested = '{"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.5, "sparsity": 0.99}]}'
    with pytest.raises(ValueError, match=r"^recipe is ambiguous: key 'sparsity' is given twice"):
        Recipe.from_json(nested)
    path = tmp_path / "twice.json"
    path.write_text('{"model": "digits_cnn",\n "model": "vgg13"}')
    with pytest.raises(ValueError, match=rf"^recipe file {str(path)!r} is ambiguous: key 'model' is given twice"):
        Recipe.from_file(path)
    assert Recipe.from_json('{"model": "digits_cnn", "steps": [{"kind": "prune"}, {"kind": "prune"}]}')  # lists may
