import json

import pytest
import torch

from explorer.compress import compress
from explorer.compress.cluster import ClusterConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
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
                       match=r"step kind='sparsify' must be one of: bn_adapt, cluster, distill, lowrank, prune"):
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
