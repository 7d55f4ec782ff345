"""Removing attention heads and MLP neurons from a Vision Transformer (explorer.compress.attention): the pruned
blocks compute what the original ones compute with the removed heads (neurons) masked to zero, and the smaller
model packs, rebuilds from the file alone and exports to ONNX."""

import pytest
import torch
from vit_tiny import ARCH, digits, fresh, trained

from explorer.artifact.architecture import rebuild
from explorer.artifact.pack import PackError, pack, unpack
from explorer.compress.attention import choose, head_scores
from explorer.compress.base import Context
from explorer.compress.prune import PruneConfig, apply


def _prune(model, granularity, sparsity=0.5, scope="layer", **kw):
    cfg = PruneConfig(sparsity=sparsity, granularity=granularity, scope=scope, **kw)
    return apply(model, cfg, Context(data=digits(), seed=0))


def _masked_attention(attn, x, removed):
    """Reference: the unpruned attention written out (no fused kernel) with the removed heads' outputs zeroed
    before the output projection."""
    b, n, _ = x.shape
    h, d = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    weights = torch.softmax((q @ k.transpose(-2, -1)) / d ** 0.5, dim=-1)
    heads = weights @ v  # (b, h, n, d)
    heads[:, removed] = 0.0
    return attn.proj(heads.transpose(1, 2).reshape(b, n, h * d))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_attention_equals_the_original_with_the_removed_heads_masked(scope):
    model = trained()
    out = _prune(model, "heads", scope=scope)
    removed = out.state.info["prune"][0]["removed"]
    assert sum(len(v) for v in removed.values()) == 4  # half of 2 blocks x 4 heads
    torch.manual_seed(1)
    x = torch.randn(3, 5, 32)
    for i in range(2):
        name = f"blocks.{i}.attn"
        before, after = model.get_submodule(name), out.model.get_submodule(name)
        assert after.num_heads == 4 - len(removed[name]) >= 1
        assert after.qkv.out_features == 3 * 8 * after.num_heads and after.proj.in_features == 8 * after.num_heads
        with torch.no_grad():
            assert torch.allclose(after(x), _masked_attention(before, x, removed[name]), atol=1e-5)
            kept = [h for h in range(4) if h not in removed[name]]  # and not some other heads than those
            assert not torch.allclose(after(x), _masked_attention(before, x, [kept[0]]), atol=1e-3)


def test_layer_scope_removes_the_lowest_scoring_heads_of_every_block():
    model = trained()
    out = _prune(model, "heads", scope="layer")
    for name, removed in out.state.info["prune"][0]["removed"].items():
        scores = head_scores(model.get_submodule(name))
        assert sorted(removed) == sorted(torch.argsort(scores)[:2].tolist())


def test_choose_keeps_a_unit_in_every_block_and_ranks_globally_by_relative_score():
    scores = {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([0.1, 10.0, 10.0, 9.9])}
    assert choose(scores, 0.99, "layer") == {"a": [0, 1], "b": [0, 1, 3]}  # ties: the first
    # b's first unit is far below its block's mean; a's are all at their mean
    assert choose(scores, 1 / 7, "global") == {"a": [], "b": [0]}
    assert choose(scores, 0.99, "global") == {"a": [0, 1], "b": [0, 1, 3]}
    assert choose(scores, 0.0, "global") == {"a": [], "b": []}


def test_pruned_mlp_equals_the_original_with_the_removed_neurons_masked():
    model = trained()
    out = _prune(model, "neurons", sparsity=0.25, scope="global")
    info = out.state.info["prune"][0]
    assert sum(len(v) for v in info["removed"].values()) == round(0.25 * 128)
    assert info["achieved"] == pytest.approx(0.25)
    torch.manual_seed(2)
    x = torch.randn(3, 5, 32)
    for name, removed in info["removed"].items():
        before, after = model.get_submodule(name), out.model.get_submodule(name)
        keep = torch.ones(before.fc1.out_features)
        keep[removed] = 0.0
        with torch.no_grad():
            ref = before.fc2(before.act(before.fc1(x)) * keep)
            assert torch.allclose(after(x), ref, atol=1e-5)
        assert after.fc1.out_features == after.fc2.in_features == 64 - len(removed)


@pytest.mark.parametrize("granularity", ["heads", "neurons"])
def test_the_smaller_transformer_packs_rebuilds_from_the_file_alone_and_runs(granularity):
    out = _prune(trained(), granularity)
    info = out.state.info["prune"][0]
    assert info["params_after"] < info["params_before"] and info["macs_after"] < info["macs_before"]
    blob = pack(out.model, out.state, ARCH)
    again = unpack(blob).model
    x = digits().test.x[:64]
    with torch.no_grad():
        assert torch.equal(again(x), out.model(x))
    assert sum(p.numel() for p in again.parameters()) == info["params_after"]


def test_a_packed_head_count_outside_the_architecture_is_refused():
    out = _prune(trained(), "heads")
    from explorer.artifact.architecture import describe

    entries = describe(out.model, ARCH)
    heads = [e for e in entries if e["type"] == "Attention"]
    assert heads and all(e["args"]["num_heads"] == 2 for e in heads)
    heads[0]["args"]["num_heads"] = 9
    with pytest.raises(ValueError, match=r"num_heads=9 .*allowed: 1 to 4 heads"):
        rebuild(ARCH, entries)
    with pytest.raises(PackError):  # the same through a file: its checksum no longer matches
        blob = bytearray(pack(out.model, out.state, ARCH))
        blob[-40] ^= 1
        unpack(bytes(blob))


def test_heads_on_a_network_without_attention_and_other_schedules_are_refused():
    from explorer.core.zoo import create_model

    cnn = create_model("digits_cnn")
    with pytest.raises(ValueError, match="granularity='heads' removes attention heads.*this model has none"):
        _prune(cnn, "heads")
    with pytest.raises(ValueError, match="schedule='iterative'.*oneshot for neurons pruning"):
        PruneConfig(granularity="neurons", schedule="iterative", finetune_epochs=1)
    assert PruneConfig(granularity="heads").structural() and PruneConfig(granularity="heads").label() == \
        "prune 50% heads"


def test_head_pruning_then_fine_tuning_keeps_the_smaller_shape():
    model = fresh()
    out = _prune(model, "heads", finetune_epochs=1)
    assert [b.attn.num_heads for b in out.model.blocks] == [2, 2]
    assert out.state.info["prune"][0]["rounds"][0]["epochs"] == 1
