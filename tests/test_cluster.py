import dataclasses

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from explorer.compress import base
from explorer.compress.cluster import ClusterConfig, apply, kmeans_1d
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("digits_cnn")


def _inertia(x: torch.Tensor, cent: torch.Tensor, assign: torch.Tensor) -> float:
    return float(((x.double() - cent.double()[assign]) ** 2).sum())


def _sample(dist: str, n: int = 2000, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if dist == "normal":
        x = rng.normal(0.0, 0.05, n)
    else:
        x = np.concatenate([rng.normal(-0.2, 0.03, n // 2), rng.normal(0.15, 0.05, n - n // 2)])
    return torch.tensor(x, dtype=torch.float32)


def _clustered(model):
    return {f"{n}.weight": m.weight.detach() for n, m in base.compressible(model)}


# ---------------------------------------------------------------- kmeans_1d


@pytest.mark.parametrize("init", ["kmeans++", "linear", "random"])
@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize("dist", ["normal", "bimodal"])
def test_inertia_matches_sklearn(dist, k, init):
    x = _sample(dist)
    cent, assign = kmeans_1d(x, k, init=init, seed=0)
    ref = KMeans(n_clusters=k, n_init=3, random_state=0).fit(x.double().numpy().reshape(-1, 1))
    assert len(cent) == k
    assert _inertia(x, cent, assign) <= 1.01 * ref.inertia_


def test_assignments_are_nearest_centroid_and_well_formed():
    x = torch.randn(12, 17, generator=torch.Generator().manual_seed(3))
    cent, assign = kmeans_1d(x, 8, seed=1)
    assert cent.dtype == torch.float32 and assign.dtype == torch.int64 and assign.shape == x.shape
    assert torch.all(cent[1:] > cent[:-1])  # sorted, distinct
    dist = (x[..., None] - cent).abs()  # brute force: every value against every centroid
    assert torch.allclose(dist.gather(-1, assign[..., None]).squeeze(-1), dist.min(-1).values, atol=1e-7)
    assert torch.equal(torch.bincount(assign.flatten(), minlength=len(cent)) > 0, torch.ones(len(cent), dtype=bool))


def test_centroids_are_means_of_their_clusters():
    x = _sample("bimodal", 500)
    cent, assign = kmeans_1d(x, 6, seed=0)
    means = torch.stack([x[assign == j].double().mean() for j in range(len(cent))]).float()
    assert torch.allclose(cent, means, atol=1e-6)


def test_deterministic_for_a_seed():
    x = _sample("normal", 3000, seed=5)
    for init in ("kmeans++", "random", "linear"):
        a, b = kmeans_1d(x, 16, init=init, seed=7), kmeans_1d(x, 16, init=init, seed=7)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fewer_distinct_values_than_k():
    x = torch.tensor([0.5, -1.0, 2.0, 0.5, 2.0, -1.0, 0.5])
    for k in (3, 8, 256):
        cent, assign = kmeans_1d(x, k)
        assert torch.equal(cent, torch.tensor([-1.0, 0.5, 2.0]))
        assert torch.equal(cent[assign], x)
    cent, assign = kmeans_1d(x, 2)
    assert len(cent) == 2 and torch.equal(torch.unique(assign), torch.tensor([0, 1]))


def test_single_value_and_more_clusters_than_values():
    cent, assign = kmeans_1d(torch.full((4, 4), 0.25), 16)
    assert torch.equal(cent, torch.tensor([0.25])) and torch.equal(assign, torch.zeros(4, 4, dtype=torch.int64))
    x = torch.tensor([3.0, 1.0, 2.0])
    cent, assign = kmeans_1d(x, 16)
    assert torch.equal(cent[assign], x)


def test_empty_clusters_are_dropped():
    # two tight groups far apart: linear init puts most centroids in the empty gap between them
    x = torch.cat([torch.linspace(0, 0.01, 50), torch.linspace(100, 100.01, 50)])
    cent, assign = kmeans_1d(x, 10, init="linear", max_iter=1)
    counts = torch.bincount(assign, minlength=len(cent))
    assert len(cent) <= 10 and bool((counts > 0).all())
    assert bool((cent[assign] - x).abs().max() < 0.01)


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        kmeans_1d(torch.empty(0), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ValueError, match="k=0"):
        kmeans_1d(torch.ones(3), 0)
    with pytest.raises(ValueError, match="init='bogus'"):
        kmeans_1d(torch.ones(3), 2, init="bogus")


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("kw, text", [
    ({"clusters": 1}, "clusters=1 must be an integer in [2, 256]"),
    ({"clusters": 257}, "clusters=257 must be an integer in [2, 256]"),
    ({"clusters": 8.0}, "clusters=8.0"),
    ({"init": "bogus"}, "init='bogus' must be one of: linear, random, kmeans++"),
    ({"layers": "bogus"}, "layers='bogus' must be one of: all, conv, linear, inner"),
    ({"finetune_epochs": -1}, "finetune_epochs=-1"),
    ({"lr": 0.0}, "lr=0.0"),
    ({"max_iter": 0}, "max_iter=0"),
])
def test_invalid_config_raises(kw, text):
    with pytest.raises(ValueError) as e:
        ClusterConfig(**kw)
    assert text in str(e.value)


def test_registered_as_a_step():
    st = base.step_types()["cluster"]
    assert st.config is ClusterConfig and st.apply is apply
    cfg = base.config_from_dict({"kind": "cluster", "clusters": 8, "init": "linear"})
    assert cfg == ClusterConfig(clusters=8, init="linear")
    assert base.config_to_dict(cfg)["kind"] == "cluster"


# ---------------------------------------------------------------- apply


def test_apply_clusters_every_layer_and_leaves_input_alone():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = base.Context()
    out = apply(model, ClusterConfig(clusters=8), ctx)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert ctx.state.codebooks == {} and ctx.state.info == {}
    weights = _clustered(out.model)
    assert set(out.state.codebooks) == set(weights) == {"features.0.weight", "features.2.weight",
                                                         "features.5.weight", "classifier.1.weight",
                                                         "classifier.4.weight"}
    for name, w in weights.items():
        cb = out.state.codebooks[name]
        assert torch.unique(w).numel() <= 8
        assert torch.equal(w, base.codebook_weight(cb, None))
        assert out.state.info["cluster"]["distinct_values"][name] == torch.unique(w).numel()
    for name, p in out.model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, before[name])
    info = out.state.info["cluster"]
    assert info["clusters"] == 8 and info["init"] == "kmeans++" and info["seconds"] >= 0


def test_apply_layers_choice_and_reclustering():
    model = _model()
    conv = apply(model, ClusterConfig(clusters=16, layers="conv"), base.Context())
    assert set(conv.state.codebooks) == {"features.0.weight", "features.2.weight", "features.5.weight"}
    assert torch.equal(conv.model.classifier[1].weight, model.classifier[1].weight)
    again = apply(conv.model, ClusterConfig(clusters=4, layers="conv"), dataclasses.replace(base.Context(),
                                                                                             state=conv.state))
    for name, w in _clustered(again.model).items():
        if name.startswith("features"):
            assert len(again.state.codebooks[name].centroids) <= 4 and torch.unique(w).numel() <= 4
    assert len(conv.state.codebooks["features.2.weight"].centroids) == 16  # the earlier state is untouched


def test_apply_is_deterministic():
    a = apply(_model(), ClusterConfig(clusters=8), base.Context(seed=3))
    b = apply(_model(), ClusterConfig(clusters=8), base.Context(seed=3))
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_finetuning_keeps_the_codebook(digits):
    model = _model()
    clustered = apply(model, ClusterConfig(clusters=8), base.Context())
    tuned = apply(model, ClusterConfig(clusters=8, finetune_epochs=1, lr=1e-3), base.Context(data=digits))
    moved = False
    for name, w in _clustered(tuned.model).items():
        cb = tuned.state.codebooks[name]
        assert torch.unique(w).numel() <= 8
        assert torch.equal(w, base.codebook_weight(cb, None))
        assert torch.equal(cb.assignments, clustered.state.codebooks[name].assignments)
        moved |= not torch.allclose(cb.centroids, clustered.state.codebooks[name].centroids)
    assert moved  # fine-tuning did move the shared centroids
    assert tuned.state.info["cluster"]["finetune"]["epochs"] == 1


def test_refuses_weights_already_quantised():
    model = _model()
    w = model.features[0].weight
    rec = base.QuantRecord(8, True, None, torch.tensor(0.01), torch.tensor(0))
    state = base.CompressionState(quant={"features.0.weight": rec})
    with pytest.raises(ValueError, match="put cluster before quantize"):
        apply(model, ClusterConfig(), base.Context(state=state))
    out = apply(model, ClusterConfig(layers="linear"), base.Context(state=state))  # other layers are fine
    assert torch.equal(out.model.features[0].weight, w) and "features.0.weight" not in out.state.codebooks


def test_finetuning_needs_data():
    with pytest.raises(ValueError, match="needs a dataset"):
        apply(_model(), ClusterConfig(finetune_epochs=1), base.Context())


def test_mask_zeros_stay_zero_and_survivors_share_values(digits):
    model = _model()
    masks = {}
    with torch.no_grad():
        for name, w in _clustered(model).items():
            masks[name] = w.abs() > w.abs().median()  # keep about half, as a prior prune step would
            w.mul_(masks[name])
    state = base.CompressionState(masks=masks)
    plain = apply(model, ClusterConfig(clusters=6), base.Context(state=state, seed=2))
    for name, w in _clustered(model).items():  # only the survivors are clustered (Deep Compression)
        assert torch.equal(plain.state.codebooks[name].centroids, kmeans_1d(w[masks[name]], 6, seed=2)[0])
    out = apply(model, ClusterConfig(clusters=6, finetune_epochs=1, lr=1e-3), base.Context(data=digits, state=state))
    assert all(torch.equal(out.state.masks[n], m) for n, m in masks.items())
    for name, w in _clustered(out.model).items():
        mask = masks[name]
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))
        kept = w[mask]
        assert torch.unique(kept).numel() <= 6
        assert bool((kept != 0).all())  # pruned zeros did not drag a centroid to 0
        assert torch.equal(w, base.codebook_weight(out.state.codebooks[name], mask))
    assert state.codebooks == {}
