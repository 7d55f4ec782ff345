"""Layer-adaptive allocation for global pruning: LAMP's scores against the paper's formula computed directly in
numpy, the per-layer floor, and global pruning that no longer empties a layer small in scale."""

import numpy as np
import pytest
import torch
from torch import nn

from explorer.compress.base import Context
from explorer.compress.lamp import MAX_LAYER_SPARSITY, MIN_KEPT, adaptive_keep, lamp_scores, layer_floor
from explorer.compress.prune import PruneConfig, apply, lamp_masks, magnitude_masks
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model

SMALL = "classifier.1"  # digits_cnn's largest layer (16,384 weights): scaled down, one threshold empties it


def _numpy_lamp(w: np.ndarray) -> np.ndarray:
    """Lee et al. (2021), eq. 2, weight by weight: w_u^2 over the sum of w_v^2 for every v with |w_v| >= |w_u|."""
    flat = np.abs(w.astype(np.float64).reshape(-1))
    sq = flat ** 2
    out = np.array([sq[i] / sq[flat >= flat[i]].sum() if sq[flat >= flat[i]].sum() > 0 else 0.0
                    for i in range(flat.size)])
    return out.reshape(w.shape)


def _weights(m):
    return {f"{n}.weight": mod.weight for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}


def _small_scale_model():
    """digits_cnn with one layer's weights scaled by 1e-3: small in scale, as MobileNetV3's classifier and
    squeeze-excitation layers are beside its convolutions."""
    torch.manual_seed(0)
    m = create_model("digits_cnn")
    with torch.no_grad():
        m.get_submodule(SMALL).weight.mul_(1e-3)
    return m


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("shape", [(7,), (8, 3, 3, 3), (40, 25)])
def test_lamp_scores_equal_the_formula_computed_directly(shape):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=g)
    w.view(-1)[::5] = w.view(-1)[0]  # ties: equal weights share the sum over the weights not smaller than them
    w.view(-1)[1] = -w.view(-1)[0]  # and |w| ties across signs
    w.view(-1)[2] = 0.0
    ours = lamp_scores(w.abs()).numpy()
    assert ours.shape == tuple(shape)
    np.testing.assert_allclose(ours, _numpy_lamp(w.numpy()), rtol=1e-6, atol=1e-9)
    assert ours.max() == pytest.approx(1.0)  # the layer's largest weight scores 1 whatever the layer's scale
    np.testing.assert_allclose(lamp_scores(1e-3 * w.abs()).numpy(), ours, rtol=1e-5)  # scale-free
    assert lamp_scores(torch.zeros(4)).tolist() == [0.0] * 4


def test_global_pruning_at_90_percent_leaves_every_layer_weights(digits):
    """One threshold over all layers emptied the small-scale layer (every weight zero: the network cut); the
    layer-adaptive ranking prunes it like the others and every layer keeps weights."""
    m = _small_scale_model()
    old = magnitude_masks(_weights(m), 0.9, "global")
    assert int(old[f"{SMALL}.weight"].sum()) == 0  # the failure the fix is for, on this very model
    out = apply(m, PruneConfig(sparsity=0.9), Context(data=digits)).model
    w = _weights(out)
    for name, t in w.items():
        assert int(torch.count_nonzero(t)) >= layer_floor(t.numel(), 0.9), name
        assert (t == 0).float().mean().item() <= MAX_LAYER_SPARSITY, name
    total, zeros = sum(t.numel() for t in w.values()), sum(int((t == 0).sum()) for t in w.values())
    assert zeros == round(0.9 * total)  # the target is still met exactly
    assert 0.5 < (w[f"{SMALL}.weight"] == 0).float().mean().item() < MAX_LAYER_SPARSITY


def test_the_masks_rank_the_lamp_scores_and_keep_each_layers_order():
    """The pruned weights are the lowest LAMP scores across layers, and within a layer the smallest magnitudes."""
    w = _weights(_small_scale_model())
    masks = lamp_masks(w, 0.6)
    scores = {k: lamp_scores(t.abs()) for k, t in w.items()}
    pruned = torch.cat([scores[k][~m] for k, m in masks.items()])
    kept = torch.cat([scores[k][m] for k, m in masks.items()])
    assert pruned.max() <= kept.min()
    for k, m in masks.items():
        a = w[k].detach().abs()
        assert a[~m].max() <= a[m].min(), k


def test_the_floor_holds_where_the_scores_alone_would_go_below_it():
    # a layer of 100 tiny weights and one large one: LAMP keeps its largest (score 1) but at 99% would prune the
    # rest; the floor keeps MIN_KEPT of them
    lone = torch.cat([torch.full((100,), 1e-6), torch.ones(1)])
    big = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) + 1
    scores = {"lone": lamp_scores(lone), "big": lamp_scores(big)}
    sizes = {k: torch.ones_like(v) for k, v in scores.items()}
    keep = adaptive_keep(scores, sizes, 0.99)
    assert int(keep["lone"].sum()) == layer_floor(101, 0.99) == MIN_KEPT
    assert bool(keep["lone"][-1])  # its largest weight among them
    # at 98% and below a layer keeps at least 2% of its weights
    assert layer_floor(10_000, 0.9) == 200 and layer_floor(10_000, 0.99) == 100 and layer_floor(3, 0.9) == 3
    keep = adaptive_keep({"a": torch.zeros(1000), "b": torch.ones(1000)}, {"a": torch.ones(1000),
                                                                          "b": torch.ones(1000)}, 0.9)
    assert int(keep["a"].sum()) == 20 and int(keep["b"].sum()) == 180  # the floor binds, the rest goes elsewhere


def test_global_block_pruning_leaves_every_layer_blocks(digits):
    m = _small_scale_model()
    out = apply(m, PruneConfig(sparsity=0.9, granularity="block"), Context(data=digits)).model
    for name, t in _weights(out).items():
        assert int(torch.count_nonzero(t)) > 0, name


def test_the_first_and_last_layers_stay_dense_when_asked_and_the_run_says_what_it_did(digits):
    m = _small_scale_model()
    r = apply(m, PruneConfig(sparsity=0.9, layers="inner"), Context(data=digits))
    w = _weights(r.model)
    assert int((w["features.0.weight"] == 0).sum()) == int((m.features[0].weight == 0).sum()) == 0
    assert int((w["classifier.4.weight"] == 0).sum()) == 0
    info = r.state.info["prune"][-1]
    assert info["allocation"] == "layer-adaptive (LAMP)" and info["left_dense"] == ["features.0", "classifier.4"]
    note = next(n for n in r.state.notes if "layer-adaptive" in n)
    assert "Kept dense: features.0 and classifier.4" in note
    assert "LAMP" in PruneConfig(sparsity=0.9, layers="inner").words()
    assert "first and last layers left dense" in PruneConfig(sparsity=0.9, layers="inner").words()


def test_the_revision_is_raised_for_exactly_the_configurations_whose_masks_changed():
    changed = [PruneConfig(sparsity=0.5), PruneConfig(sparsity=0.9, granularity="block"),
               PruneConfig(sparsity=0.9, schedule="gradual", finetune_epochs=1),
               PruneConfig(sparsity=0.9, layers="inner")]
    same = [PruneConfig(sparsity=0.5, scope="layer"), PruneConfig(sparsity=0.5, granularity="block", scope="layer"),
            PruneConfig(sparsity=0.5, granularity="nm"), PruneConfig(sparsity=0.0),
            PruneConfig(sparsity=0.5, granularity="channel", scope="layer")]
    assert all(c.revision() == 2 for c in changed)
    assert all(c.revision() == 1 for c in same)
    assert PruneConfig(sparsity=0.5, granularity="channel").revision() == 2  # the earlier fix, kept
