"""Architectures named from torchvision and timm, weights as data: `add-model --arch timm:<name>`.

timm's `test_resnet` (373k parameters) and torchvision's `shufflenet_v2_x0_5` (350k) on the 8x8 digits keep this fast;
torchvision's `mobilenet_v3_small` (1.5M) runs in the slow suite."""

import pytest
import torch
from safetensors.torch import save_file

from explorer.app.cli import main
from explorer.artifact import pack
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core import paths, zoo
from explorer.core.train import evaluate
from explorer.models import user as byo
from explorer.models.baselines import baseline_data, load_baseline, read_card
from explorer.run import runner

TIMM, TV = "timm:test_resnet", "torchvision:mobilenet_v3_small"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _weights(path, arch: str, in_channels: int = 1, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = zoo.create_model(arch, num_classes=10, in_channels=in_channels, image_size=8, **kw)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_library_names_are_listed_and_built_by_the_library_with_random_weights():
    names = zoo.all_model_names()
    assert {TIMM, TV, "timm:resnet18", "torchvision:resnet18", "lenet5", "vit"} <= set(names)
    assert not [n for n in names if n.startswith("torchvision:") and "fasterrcnn" in n]  # classification only
    tv = zoo.create_model(TV, num_classes=7, in_channels=1, image_size=8)
    assert tv.features[0][0].in_channels == 1 and tv.classifier[-1].out_features == 7  # the stem adapted to 1 channel
    tm = zoo.create_model(TIMM, num_classes=7, in_channels=1, image_size=8)
    assert tm(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    vit = zoo.create_model("timm:test_vit", num_classes=3, in_channels=1, image_size=32)  # img_size where taken
    assert vit.patch_embed.img_size == (32, 32)


def test_unknown_name_is_one_line_with_close_matches(env):
    with pytest.raises(ValueError) as e:
        byo.add_model(env / "nothing.safetensors", arch="timm:resnet81")
    msg = _one_line(e)
    assert "'timm:resnet81' is not known" in msg and "timm:resnet18" in msg and "timm:<name>" in msg
    with pytest.raises(ValueError) as e:
        zoo.create_model("torchvision:mobilenet_v3_smal")
    assert "torchvision:mobilenet_v3_small" in _one_line(e)
    with pytest.raises(ValueError, match="'keras:resnet' is not known"):
        zoo.model_entry("keras:resnet")


def test_key_mismatch_is_one_line_with_counts_and_first_names(env):
    _weights(env / "w.safetensors", TIMM)
    with pytest.raises(ValueError) as e:
        byo.add_model(env / "w.safetensors", arch="timm:test_efficientnet")
    msg = _one_line(e)
    assert "does not fit" in msg and "missing " in msg and "unexpected " in msg and "conv1.0.weight" in msg
    assert not (env / "user").exists() or not list((env / "user").glob("*.json"))  # nothing stored


def test_wrong_input_size_and_channels_are_one_line_before_the_weights_run(env):
    _weights(env / "w.safetensors", TIMM)
    with pytest.raises(ValueError) as e:  # 16x16 patches cannot cut 8x8 digits
        byo.add_model(env / "w.safetensors", arch="timm:test_vit")
    assert "does not run on digits images of shape (1, 8, 8)" in _one_line(e) and "--image-size" in str(e.value)
    _weights(env / "five.safetensors", TIMM, in_channels=5)
    with pytest.raises(ValueError) as e:
        byo.add_model(env / "five.safetensors", arch=TIMM)
    assert "takes 5 input channels" in _one_line(e) and "digits images have 1" in str(e.value)
    torch.manual_seed(0)
    vit = zoo.create_model("timm:test_vit", num_classes=10, in_channels=1, image_size=32)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(env / "vit32.safetensors"))
    with pytest.raises(ValueError) as e:  # trained at 32x32, offered 16x16 images
        byo.add_model(env / "vit32.safetensors", arch="timm:test_vit", image_size=16)
    assert "position embeddings" in _one_line(e) and "--image-size" in str(e.value)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_given_as_weights_is_still_refused(env):
    ts = env / "ts.pt"
    torch.jit.save(torch.jit.trace(zoo.create_model("digits_cnn").eval(), torch.zeros(1, 1, 8, 8)), str(ts))
    with pytest.raises(ValueError) as e:
        byo.add_model(ts, arch=TIMM)
    assert "TorchScript program" in _one_line(e) and "refused" in str(e.value)


@pytest.mark.parametrize("arch,channels", [(TIMM, 1), ("torchvision:shufflenet_v2_x0_5", 3),
                                           pytest.param(TV, 3, marks=pytest.mark.slow)])
def test_named_architecture_from_weights_runs_techniques_and_round_trips_the_packed_file(env, arch, channels):
    """A colour model (3-channel stem) on the grey digits gets them as 3 equal channels, and says so."""
    model = _weights(env / "w.safetensors", arch, in_channels=channels)
    card = byo.add_model(env / "w.safetensors", arch=arch, dataset="digits")
    assert card["architecture"] == arch and card["arch_kwargs"]["in_channels"] == channels
    assert any("3 channels" in n for n in card["notes"]) == (channels == 3)
    rebuilt, _ = load_baseline(card["path"])  # rebuilt from the card's name: the library's code, the file's tensors
    x = torch.rand(2, channels, 8, 8)
    assert torch.equal(rebuilt(x), model.eval()(x))
    recipe = Recipe(model=arch, checkpoint=card["path"],
                    steps=(PruneConfig(sparsity=0.5), QuantizeConfig(bits=8)))
    res = runner.run_recipe(recipe, workdir=env / "run", latency=False)
    assert res["status"] == "ok" and res["sparsity"] >= 0.45
    unpacked = pack.unpack((env / "run" / "model.xpk").read_bytes()).model
    acc = evaluate(unpacked, baseline_data(read_card(card["path"])).test)
    assert acc["top1"] == res["accuracy"]["top1"]


def test_cli_adds_by_name_and_lists_names(env, capsys):
    _weights(env / "w.safetensors", TIMM)
    assert main(["add-model", "--arch", TIMM, "--checkpoint", str(env / "w.safetensors")]) == 0
    assert "(timm:test_resnet, 373,370 parameters)" in capsys.readouterr().out
    assert main(["models", "mobilenet"]) == 0
    out = capsys.readouterr().out.split()
    assert TV in out and "timm:mobilenetv3_small_100" in out and "lenet5" not in out
    assert main(["add-model", "--arch", "timm:nope_net", "--checkpoint", str(env / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'timm:nope_net' is not known" in err


def test_train_by_library_name_writes_a_file_name_without_colon(env, capsys):
    """`train --model timm:<name>`: ':' is no file name character everywhere (a drive on Windows); the card inside
    keeps the name the library knows, and a recipe naming the model finds the file."""
    models = env / "models"
    assert main(["train", "--model", TIMM, "--dataset", "digits", "--epochs", "1", "--models-dir", str(models)]) == 0
    [weights] = models.glob("*.safetensors")
    assert weights.name == "timm-test_resnet-digits.safetensors"
    card = read_card(weights)
    assert card["architecture"] == TIMM and card["file"] == weights.name
    assert paths.baseline_path(TIMM, "digits", models) == weights
    rebuilt, _ = load_baseline(weights)
    assert isinstance(rebuilt, type(zoo.create_model(TIMM)))


def test_channel_removal_on_shufflenet_is_refused_in_one_line_naming_the_model():
    """Torch-Pruning's graph cannot follow ShuffleNet's channel shuffle (its build fails with ZeroDivisionError):
    the refusal names the model and the reason in words, before any channel goes; other models still prune."""
    from explorer.compress.pipeline import compress
    from explorer.core.data import load_dataset

    data = load_dataset("digits")
    arch = "torchvision:shufflenet_v2_x0_5"
    model = zoo.create_model(arch, num_classes=10, in_channels=1, image_size=8)
    recipe = Recipe(model=arch, dataset="digits", steps=(PruneConfig(granularity="channel", sparsity=0.5),))
    with pytest.raises(ValueError) as e:
        compress(model, recipe, data)
    msg = _one_line(e)
    assert f"channel removal cannot run on model '{arch}' (ShuffleNetV2)" in msg
    assert "channel shuffle" in msg and "ZeroDivisionError" not in msg


def test_two_four_on_shufflenet_leaves_depthwise_convolutions_dense_and_says_so():
    """A depthwise convolution's filter sees one input channel: no group of 4 to keep 2 of. 2:4 prunes the other
    layers (as the page asks, inner layers) and leaves these dense with a note, as NVIDIA's apex ASP skips them."""
    from explorer.compress.pipeline import compress
    from explorer.core.data import load_dataset

    model = zoo.create_model("torchvision:shufflenet_v2_x0_5", num_classes=10, in_channels=1, image_size=8)
    out = compress(model, [PruneConfig(granularity="nm", sparsity=0.5, layers="inner", finetune_epochs=0)],
                   load_dataset("digits"))
    convs = {n: m for n, m in out.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    depthwise = [n for n, m in convs.items() if m.groups > 1]
    assert depthwise and not {f"{n}.weight" for n in depthwise} & set(out.state.masks)
    assert len(out.state.masks) >= 20
    for mask in out.state.masks.values():  # 2 of every 4 consecutive input channels kept
        groups = (mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask).reshape(-1, 4)
        assert torch.equal(groups.sum(1), torch.full((len(groups),), 2))
    [note] = [n for n in out.state.notes if "depthwise" in n]
    assert f"left {len(depthwise)} depthwise or grouped convolutions dense" in note


def test_channel_removal_on_a_named_resnet_equals_zeroing_the_batchnorms_that_feed_the_channels():
    """Torch-Pruning's graph on timm's ResNet (residual stages, a deep stem) removes the right channels: the pruned
    model's logits equal the original's with the removed channels' BatchNorms (scale and shift) set to zero, for half
    the channels of every group of coupled layers. (A collapse to chance after removal is then the lost channels.)"""
    import copy

    import torch_pruning as tp

    from explorer.compress.channel import dependency_graph

    torch.manual_seed(0)
    model = zoo.create_model(TIMM, num_classes=10, in_channels=1, image_size=8).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # not the identity BatchNorm of a fresh model
            torch.nn.init.uniform_(m.weight, 0.5, 1.5), torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    zeroed, removed, ex = copy.deepcopy(model), copy.deepcopy(model), torch.zeros(1, 1, 8, 8)
    gz, gr = dependency_graph(zeroed, ex), dependency_graph(removed, ex)
    groups = zip(gz.get_all_groups(ignored_layers=[zeroed.fc], root_module_types=[torch.nn.Conv2d]),
                 gr.get_all_groups(ignored_layers=[removed.fc], root_module_types=[torch.nn.Conv2d]), strict=True)
    n_groups = 0
    for z, r in groups:
        n = z[0].dep.target.module.out_channels
        idxs = torch.randperm(n)[: n // 2].tolist()
        for dep, _ in z:
            if isinstance(dep.target.module, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    dep.target.module.weight[idxs], dep.target.module.bias[idxs] = 0.0, 0.0
        gr.get_pruning_group(r[0].dep.target.module, tp.prune_conv_out_channels, idxs=idxs).prune()
        n_groups += 1
    params = [sum(p.numel() for p in m.parameters()) for m in (removed, model)]
    assert n_groups >= 8 and params[0] < 0.4 * params[1]
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(removed(x), zeroed(x), atol=1e-5)
        assert not torch.allclose(zeroed(x), model(x), atol=1e-2)  # half the channels did matter
