import itertools

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from explorer.compress.base import CompressionState, Context
from explorer.compress.prune import (
    PruneConfig,
    apply,
    block_masks,
    cubic_sparsity,
    magnitude_masks,
    nm_mask,
)
from explorer.core.data import load_dataset
from explorer.core.zoo import count_params, create_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _weights(m):
    return {f"{n}.weight": mod.weight for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}


def test_layer_masks_equal_torch_l1_unstructured():
    torch.manual_seed(0)
    m = create_model("digits_cnn")
    ours = magnitude_masks(_weights(m), 0.7, "layer")
    for name, w in _weights(m).items():
        ref = tprune.L1Unstructured(amount=0.7).compute_mask(w.detach(), torch.ones_like(w))
        assert torch.equal(ours[name], ref.bool()), name


def test_global_masks_equal_torch_global_unstructured():
    torch.manual_seed(0)
    m = create_model("digits_cnn")
    ours = magnitude_masks(_weights(m), 0.8, "global")
    ref = create_model("digits_cnn")
    ref.load_state_dict(m.state_dict())
    mods = [mod for mod in ref.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured([(mod, "weight") for mod in mods], pruning_method=tprune.L1Unstructured, amount=0.8)
    for (name, _), mod in zip(_weights(m).items(), mods, strict=True):
        assert torch.equal(ours[name], mod.weight_mask.bool()), name


def test_global_and_layerwise_thresholds_differ_as_they_should():
    torch.manual_seed(0)
    m = create_model("digits_cnn")
    w = _weights(m)
    layer = magnitude_masks(w, 0.6, "layer")
    glob = magnitude_masks(w, 0.6, "global")
    layer_sp = {k: 1 - v.float().mean().item() for k, v in layer.items()}
    glob_sp = {k: 1 - v.float().mean().item() for k, v in glob.items()}
    for k, s in layer_sp.items():  # layer-wise: every layer at the target, within one weight
        assert abs(s - 0.6) <= 1 / w[k].numel()
    # global: one threshold, so layers with larger weights (the small first conv) keep more
    assert max(glob_sp.values()) - min(glob_sp.values()) > 0.1
    total = sum(v.numel() for v in w.values())
    pruned = sum((~v).sum().item() for v in glob.values())
    assert abs(pruned - round(0.6 * total)) == 0
    thresholds = {k: w[k].detach().abs()[~v].max().item() for k, v in glob.items() if (~v).any()}
    kept_min = min(w[k].detach().abs()[v].min().item() for k, v in glob.items())
    assert max(thresholds.values()) <= kept_min


def test_two_four_keeps_at_most_two_of_every_four(digits):
    m = create_model("digits_cnn")
    r = apply(m, PruneConfig(granularity="nm", sparsity=0.5, layers="inner"), Context(data=digits))
    out = r.model
    assert any("sparse tensor cores" in n for n in r.state.notes)  # the page says why CPU latency stays dense
    for name, w in _weights(out).items():
        if name in ("features.0.weight", "classifier.4.weight"):
            continue
        groups = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(-1, 4)
        assert (groups.ne(0).sum(1) <= 2).all(), name
    mask = nm_mask(torch.randn(8, 16), 2, 4)
    assert (mask.reshape(-1, 4).sum(1) == 2).all()


def test_cubic_schedule_start_middle_end():
    s_i, s_f, t0, n, dt = 0.0, 0.9, 10, 8, 5
    assert cubic_sparsity(t0, s_i, s_f, t0, n, dt) == s_i
    assert cubic_sparsity(t0 + n * dt // 2, s_i, s_f, t0, n, dt) == pytest.approx(0.9 + (0 - 0.9) * 0.5 ** 3)
    assert cubic_sparsity(t0 + n * dt, s_i, s_f, t0, n, dt) == s_f
    assert cubic_sparsity(1000, s_i, s_f, t0, n, dt) == s_f
    vals = [cubic_sparsity(t, 0.2, 0.95, 0, 10, 1) for t in range(11)]
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False)) and vals[0] == 0.2


@pytest.mark.parametrize("granularity,scope", [("unstructured", "layer"), ("unstructured", "global"),
                                               ("block", "layer"), ("block", "global")])
def test_achieved_sparsity_matches_request(digits, granularity, scope):
    m = create_model("digits_cnn")
    r = apply(m, PruneConfig(sparsity=0.75, granularity=granularity, scope=scope), Context(data=digits))
    info = r.state.info["prune"][-1]
    w = _weights(r.model)
    unit = {"unstructured": 1, "block": 16}[granularity]
    total = sum(t.numel() for t in w.values())
    zeros = sum((t == 0).sum().item() for t in w.values())
    assert abs(zeros / total - 0.75) <= unit * len(w) / total
    assert info["achieved"] == pytest.approx(zeros / total)
    if scope == "layer":
        for k, t in w.items():
            assert abs((t == 0).float().mean().item() - 0.75) <= unit / t.numel() + 1e-9, k


def test_block_masks_prune_whole_blocks():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    mask = block_masks({"w": w}, 0.5, "layer", (4, 4))["w"]
    blocks = mask.reshape(4, 4, 8, 4).permute(0, 2, 1, 3).reshape(32, 16)
    assert all(b.all() or (~b).all() for b in blocks)
    assert (~mask).float().mean().item() == 0.5


def test_masks_stay_in_force_during_finetuning(digits):
    m = create_model("digits_cnn")
    r = apply(m, PruneConfig(sparsity=0.8, finetune_epochs=1), Context(data=digits))
    for name, mask in r.state.masks.items():
        assert (r.model.get_parameter(name)[~mask] == 0).all()
    assert 1 - sum(v.sum().item() for v in r.state.masks.values()) / sum(v.numel() for v in r.state.masks.values()) \
        == pytest.approx(0.8, abs=1e-4)


def test_gradual_schedule_reaches_target_and_keeps_zeros(digits):
    m = create_model("digits_cnn")
    r = apply(m, PruneConfig(sparsity=0.9, schedule="gradual", finetune_epochs=2), Context(data=digits))
    info = r.state.info["prune"][-1]
    assert info["achieved"] == pytest.approx(0.9, abs=1e-4)
    pts = [s for _, s in info["schedule_points"]]
    assert pts == sorted(pts) and len(pts) > 2


def test_iterative_rounds_increase_sparsity(digits):
    m = create_model("digits_cnn")
    r = apply(m, PruneConfig(sparsity=0.9, schedule="iterative", rounds=3, finetune_epochs=3), Context(data=digits))
    rounds = [x["sparsity"] for x in r.state.info["prune"][-1]["rounds"]]
    assert rounds == sorted(rounds) and rounds[-1] == pytest.approx(0.9)


def test_structured_pruning_of_resnet18_shrinks_params_and_macs():
    data = load_dataset("digits", image_size=32)
    m = create_model("resnet18", num_classes=10, in_channels=1, image_size=32)
    before = _state(m)
    r = apply(m, PruneConfig(granularity="channel", sparsity=0.5, criterion="l2"), Context(data=data))
    info = r.state.info["prune"][-1]
    assert info["params_after"] < 0.4 * info["params_before"] and info["macs_after"] < 0.4 * info["macs_before"]
    assert count_params(r.model) == info["params_after"]
    out = r.model(torch.randn(2, 1, 32, 32))  # residual additions still line up
    assert out.shape == (2, 10)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    for ch in info["channels"].values():  # residual blocks share one ratio, so only check each shrank
        assert ch["after"] < ch["before"]


@pytest.mark.parametrize("criterion", ["l1", "l2", "geometric_median"])
def test_channel_pruning_per_layer_ratio_within_one_channel(digits, criterion):
    m = create_model("digits_cnn")
    r = apply(m, PruneConfig(granularity="channel", sparsity=0.5, scope="layer", criterion=criterion),
              Context(data=digits))
    for name, ch in r.state.info["prune"][-1]["channels"].items():
        assert abs((ch["before"] - ch["after"]) - 0.5 * ch["before"]) <= 1, name
    assert r.model(digits.test.x[:4]).shape == (4, 10)


def test_global_channel_pruning_prunes_more_as_the_ratio_grows(tmp_path):
    """Global scope ranks channels across layers; a higher ratio never keeps more channels in any layer, and
    never leaves a layer whole that a lower ratio pruned. Torch-Pruning's own global mode skipped a layer whose
    every channel fell under the threshold: on the trained LeNet-5, 60% kept both convolutions whole and
    removed fewer MACs than 50%."""
    from safetensors.torch import load_file

    from tests.conftest import make_mnist

    data = load_dataset("fashion-mnist", make_mnist(tmp_path / "f", "FashionMNIST", n_train=40, n_test=20))
    m = create_model("lenet5", image_size=28)
    m.load_state_dict(load_file("models/lenet5-fashion-mnist.safetensors"))
    kept, macs = [], []
    for ratio in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        info = apply(m, PruneConfig(granularity="channel", sparsity=ratio), Context(data=data)).state.info["prune"][-1]
        kept.append({n: c["after"] for n, c in info["channels"].items()})
        macs.append(info["macs_after"])
        assert all(c["after"] >= 1 for c in info["channels"].values()), (ratio, info["channels"])
        total = sum(c["before"] for c in info["channels"].values())
        assert abs(total - sum(kept[-1].values()) - ratio * total) <= len(kept[-1]), (ratio, kept[-1])
    for lower, higher in itertools.pairwise(kept):
        assert all(higher[n] <= lower[n] for n in lower), (lower, higher)
    assert macs == sorted(macs, reverse=True), macs


def test_apply_never_changes_its_input(digits):
    m = create_model("digits_cnn")
    before = _state(m)
    for cfg in (PruneConfig(sparsity=0.9, finetune_epochs=1), PruneConfig(granularity="channel", sparsity=0.5),
                PruneConfig(granularity="block", sparsity=0.5)):
        apply(m, cfg, Context(data=digits))
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_invalid_configs_raise_before_work(digits):
    with pytest.raises(ValueError, match=r"sparsity=1.2 must be a number in \[0.0, 0.99\]"):
        PruneConfig(sparsity=1.2)
    with pytest.raises(ValueError, match=r"granularity='rows' must be one of"):
        PruneConfig(granularity="rows")
    with pytest.raises(ValueError, match="finetune_epochs=0 must be at least 1 for the gradual schedule"):
        PruneConfig(schedule="gradual")
    m = create_model("digits_cnn")
    with pytest.raises(ValueError, match=r"2:4 pruning needs every layer's input size to be a multiple of 4; "
                                         r"features.0 has 1"):
        apply(m, PruneConfig(granularity="nm", sparsity=0.5), Context(data=digits))
    with pytest.raises(ValueError, match="would remove every channel of features.0"):
        apply(m, PruneConfig(granularity="channel", sparsity=0.99, scope="layer"), Context(data=digits))
    st = CompressionState(masks={"features.0.weight": torch.ones(16, 1, 3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="must come before"):
        apply(m, PruneConfig(granularity="channel", sparsity=0.5), Context(data=digits, state=st))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_channel_pruning_keeps_every_residual_addition_consistent_and_exports(tmp_path, ratio):
    """The residual baseline: channels that meet at an identity skip are pruned together (Torch-Pruning's
    dependency graph), so every block's output matches its shortcut, and the pruned model runs in ONNX
    Runtime with the same logits as in PyTorch."""
    from torchvision.models.resnet import BasicBlock

    from explorer.measure.onnx_export import export_onnx, onnx_logits
    from tests.conftest import make_mnist

    data = load_dataset("fashion-mnist", make_mnist(tmp_path / "f", "FashionMNIST", n_train=60, n_test=20))
    torch.manual_seed(0)
    m = create_model("resnet8", image_size=28)
    r = apply(m, PruneConfig(granularity="channel", sparsity=ratio, finetune_epochs=0), Context(data=data))
    info = r.state.info["prune"][-1]
    assert info["params_after"] < info["params_before"] and info["macs_after"] < info["macs_before"]
    channels_in = r.model.stem[0].out_channels
    for name, block in r.model.named_modules():
        if not isinstance(block, BasicBlock):
            continue
        assert block.conv1.in_channels == channels_in and block.bn2.num_features == block.conv2.out_channels
        shortcut = block.downsample[0].out_channels if block.downsample is not None else channels_in
        assert block.conv2.out_channels == shortcut, f"{name}: residual addition of {block.conv2.out_channels} " \
                                                     f"and {shortcut} channels"
        channels_in = block.conv2.out_channels
    assert r.model.fc.in_features == channels_in
    x = data.test.x[:4]
    export_onnx(r.model, data.input_shape, tmp_path / "p.onnx")
    with torch.no_grad():
        ref = r.model.eval()(x).numpy()
    assert abs(onnx_logits(tmp_path / "p.onnx", x.numpy()) - ref).max() < 1e-4


@pytest.mark.parametrize("cfg,said", [
    (PruneConfig(sparsity=0.5, granularity="block"),
     "prune 50% of the 4x4 blocks of weights by L1 norm, ranked across layers by layer-adaptive scores (LAMP), "
     "at once"),
    (PruneConfig(sparsity=0.6, granularity="block", block=(8, 8), scope="layer"),
     "prune 60% of the 8x8 blocks of weights by L1 norm, the same share in every layer, at once"),
    (PruneConfig(sparsity=0.5, granularity="nm"), "prune 50% of the weights, keeping 2 of every 4 (2:4) at once"),
    (PruneConfig(sparsity=0.0, granularity="nm", n=1, m=4, finetune_epochs=1),
     "prune 75% of the weights, keeping 1 of every 4 (1:4) at once, fine-tuned 1 epoch"),
    (PruneConfig(sparsity=0.7, schedule="gradual", finetune_epochs=3, layers="inner"),
     "prune 70% of the single weights, ranked across layers by layer-adaptive scores (LAMP), first and last layers "
     "left dense, gradually, fine-tuned 3 epochs"),
    (PruneConfig(sparsity=0.5, granularity="nm", layers="inner"),
     "prune 50% of the weights, keeping 2 of every 4 (2:4), first and last layers left dense, at once"),
])
def test_the_words_say_what_the_config_does(cfg, said):
    assert cfg.words() == said
