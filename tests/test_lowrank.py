import dataclasses

import pytest
import torch
from torch import nn

from explorer.compress.base import CompressionState, Context, config_from_dict
from explorer.compress.lowrank import (
    Factorized,
    LowRankConfig,
    apply,
    choose_rank,
    restructure,
    svd_factors,
)
from explorer.core.data import load_dataset
from explorer.core.zoo import count_params, create_model


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("digits_cnn").eval()


def _ctx(**kw):
    return Context(**kw)


# ---------------------------------------------------------------- maths


def test_svd_factors_give_the_best_rank_r_approximation():
    torch.manual_seed(0)
    w = torch.randn(12, 30)
    s = torch.linalg.svdvals(w.double())
    for r in (1, 5, 12):
        a, b = svd_factors(w, r)
        assert a.shape == (r, 30) and b.shape == (12, r)
        err = (w.double() - b.double() @ a.double()).pow(2).sum()
        # Eckart-Young: the error of the best rank-r approximation is the discarded energy
        assert err.item() == pytest.approx(s[r:].pow(2).sum().item(), abs=1e-6)
    a, b = svd_factors(w, 3)
    # sqrt(s) on both sides: each factor's i-th row/column has norm sqrt(s_i)
    assert torch.allclose(a.norm(dim=1), s[:3].sqrt().float(), atol=1e-5)
    assert torch.allclose(b.norm(dim=0), s[:3].sqrt().float(), atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        svd_factors(w, 13)


def test_choose_rank_edge_cases():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22
    assert choose_rank(s, 0.25) == 1
    assert choose_rank(s, 0.01) == 1  # never zero
    assert choose_rank(s, 1.0) == 4
    assert choose_rank(s, 0.6) == 2  # round(2.4)
    assert choose_rank(s, 0.9) == 4  # round(3.6)
    assert choose_rank(s, 0.5, energy=16 / 22) == 1  # exactly at the boundary: rank 1 suffices
    assert choose_rank(s, 0.5, energy=0.73) == 2  # energy replaces rank_ratio
    assert choose_rank(s, 0.5, energy=21 / 22) == 3
    assert choose_rank(s, 0.5, energy=1.0) == 4
    assert choose_rank(s, 0.5, energy=1e-9) == 1
    assert choose_rank(torch.zeros(5), 0.5, energy=0.9) == 1
    assert choose_rank(torch.tensor([3.0]), 0.1) == 1
    with pytest.raises(ValueError):
        choose_rank(torch.tensor([]), 0.5)


# ---------------------------------------------------------------- surgery


@pytest.mark.parametrize("layer", [
    nn.Linear(20, 12),
    nn.Linear(9, 30, bias=False),
    nn.Conv2d(3, 8, 3, stride=2, padding=1),
    nn.Conv2d(4, 6, (3, 2), padding=(2, 1), dilation=2, bias=False),
])
def test_full_rank_factors_reproduce_the_layer(layer):
    torch.manual_seed(1)
    if isinstance(layer, nn.Linear):
        x = torch.randn(5, layer.in_features)
    else:
        x = torch.randn(2, layer.in_channels, 9, 9)
    w = layer.weight
    full = min(w.shape[0], w[0].numel())
    f = Factorized.from_layer(layer, full)
    assert isinstance(f, nn.Sequential) and len(f) == 2 and f.rank == full
    assert type(f[0]) is type(layer) and f[0].bias is None
    assert (f[1].bias is None) == (layer.bias is None)
    with torch.no_grad():
        assert torch.allclose(f(x), layer(x), atol=1e-4)


def test_quarter_rank_shrinks_digits_cnn_and_it_still_runs():
    model = _model()
    out = apply(model, LowRankConfig(rank_ratio=0.25, layers="all"), _ctx())
    before, after = count_params(model), count_params(out.model)
    assert after < before
    info = out.state.info["lowrank"]
    assert info["params_before"] == before and info["params_after"] == after
    factored = [n for n, m in out.model.named_modules() if isinstance(m, Factorized)]
    assert factored == [r["name"] for r in info["layers"]] and factored
    for r in info["layers"]:
        assert r["params_after"] < r["params_before"] and r["rank"] < r["full_rank"]
    y = out.model(torch.randn(3, 1, 8, 8))
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    # the packer's rebuild: empty factors of the recorded ranks take the state_dict strictly
    rebuilt = restructure(create_model("digits_cnn"), info["ranks"])
    rebuilt.load_state_dict(out.model.state_dict(), strict=True)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), out.model.eval()(x))


def test_energy_keeps_at_least_that_fraction_per_layer():
    model = _model()
    out = apply(model, LowRankConfig(energy=0.9, layers="all"), _ctx())
    records = out.state.info["lowrank"]["layers"]
    assert records
    for r in records:
        w = model.get_submodule(r["name"]).weight.detach()
        s2 = torch.linalg.svdvals(w.reshape(w.shape[0], -1)).double().pow(2)
        frac = s2.cumsum(0) / s2.sum()
        assert frac[r["rank"] - 1] >= 0.9 - 1e-9
        assert r["rank"] == 1 or frac[r["rank"] - 2] < 0.9  # and it is the smallest such rank
        assert r["energy_kept"] == pytest.approx(frac[r["rank"] - 1].item(), abs=1e-5)


def test_input_model_and_state_are_unchanged():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = CompressionState(notes=["earlier"])
    out = apply(model, LowRankConfig(rank_ratio=0.25, layers="all"), _ctx(state=state))
    assert out.model is not model
    assert not any(isinstance(m, Factorized) for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert state.notes == ["earlier"] and state.info == {}
    assert out.state.notes[0] == "earlier"


@pytest.mark.parametrize("kw, field", [
    ({"rank_ratio": 0}, "rank_ratio"), ({"rank_ratio": 1.5}, "rank_ratio"),
    ({"rank_ratio": float("nan")}, "rank_ratio"),
    ({"energy": 1.2}, "energy"), ({"energy": -0.1}, "energy"), ({"layers": "bogus"}, "layers"),
    ({"finetune_epochs": -1}, "finetune_epochs"), ({"lr": 0.0}, "lr"),
])
def test_invalid_configs_raise(kw, field):
    with pytest.raises(ValueError, match=field):
        LowRankConfig(**kw)


def test_layers_that_would_grow_or_are_grouped_are_skipped_with_a_note():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.Conv2d(8, 8, 1), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 8), nn.Linear(8, 8))
    out = apply(model, LowRankConfig(rank_ratio=1.0, layers="all"), _ctx())
    assert not any(isinstance(m, Factorized) for m in out.model.modules())
    skipped = {s["name"] for s in out.state.info["lowrank"]["skipped"]}
    assert skipped == {"0", "1", "3", "4"}
    notes = " | ".join(out.state.notes)
    assert "kept 0 " in notes and "groups=4" in notes and "kept 4 " in notes
    # at rank 4, 128->8 needs 544 weights instead of 1024, but 8->8 would need 64, not fewer than 64
    out = apply(model, LowRankConfig(rank_ratio=0.5, layers="linear"), _ctx())
    assert isinstance(out.model[3], Factorized) and out.model[3].rank == 4
    assert isinstance(out.model[4], nn.Linear) and "kept 4 " in " | ".join(out.state.notes)


def test_refuses_after_masks_or_codebooks():
    state = CompressionState(masks={"classifier.1.weight": torch.ones(64, 256, dtype=torch.bool)})
    with pytest.raises(ValueError, match="before prune"):
        apply(_model(), LowRankConfig(), _ctx(state=state))


def test_registered_and_finetunes_with_data():
    assert LowRankConfig().structural()
    cfg = config_from_dict({"kind": "lowrank", "rank_ratio": 0.25, "layers": "all", "finetune_epochs": 1})
    assert cfg == LowRankConfig(rank_ratio=0.25, layers="all", finetune_epochs=1)
    with pytest.raises(ValueError, match="dataset"):
        apply(_model(), cfg, _ctx())
    data = load_dataset("digits")
    out = apply(_model(), dataclasses.replace(cfg, lr=1e-3), _ctx(data=data))
    ft = out.state.info["lowrank"]["finetune"]
    assert ft["epochs"] == 1 and ft["final_loss"] > 0
