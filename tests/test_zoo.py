import pytest
import torch

from explorer.core.zoo import count_params, create_model, list_models, model_entry


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward(name):
    entry = model_entry(name)
    for in_ch, size in {(1, 8), (3, entry.default_image_size)}:
        if size < entry.min_image_size:
            continue
        if name == "vit" and size % 7:  # its default 7x7 patches must tile the image (a smaller patch size may)
            with pytest.raises(ValueError, match=r"^image_size=8 must be a multiple of patch_size=7 for model 'vit'$"):
                create_model(name, num_classes=7, in_channels=in_ch, image_size=size)
            continue
        torch.manual_seed(0)
        m = create_model(name, num_classes=7, in_channels=in_ch, image_size=size)
        x = torch.randn(2, in_ch, size, size)
        out = m(x)
        assert out.shape == (2, 7)
        out.sum().backward()
        grads = [p.grad for p in m.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kwargs,match", [
    ({"depth": 65}, r"^depth=65 must be an integer in \[1, 64\]$"),
    ({"embed_dim": 10**6}, r"^embed_dim=1000000 must be an integer in \[1, 8192\]$"),
    ({"patch_size": 0}, r"^patch_size=0 must be an integer in \[1, 28\]$"),
    ({"num_heads": 5}, r"^num_heads=5 must be a divisor of embed_dim=96 for model 'vit'$"),
    ({"mlp_ratio": 1e9}, r"^mlp_ratio=1000000000.0 must be a number in \[0.0625, 16.0\]$"),
])
def test_the_vits_sizes_are_bounded(kwargs, match):
    """Issue 33: a packed file names these; 10^6 blocks were built one by one, 0 patches divided by zero and 5 heads
    of 96 were timm's AssertionError."""
    with pytest.raises(ValueError, match=match):
        create_model("vit", image_size=28, **kwargs)


def test_registry_lists_required_models():
    assert {"digits_cnn", "lenet5", "vgg11", "vgg13", "resnet18", "mobilenet_v2"} <= set(list_models())


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"'alexnet' is not known: close matches: torchvision:alexnet.*zoo has"):
        create_model("alexnet")


def test_image_size_a_model_cannot_take():
    with pytest.raises(ValueError, match=r"image_size=4 must be an integer in \[8, 1024\] for model 'lenet5'"):
        create_model("lenet5", image_size=4)
    with pytest.raises(ValueError, match=r"width=0 must be"):
        create_model("vgg11", width=0)
    with pytest.raises(ValueError, match="does not take these arguments"):
        create_model("resnet18", image_size=32, width=0.5)


def test_width_scales_vgg_parameters():
    full = count_params(create_model("vgg13", image_size=8))
    half = count_params(create_model("vgg13", image_size=8, width=0.5))
    assert 3.5 < full / half < 4.5  # conv parameters scale with the square of the width


@pytest.mark.parametrize("name", list_models())
def test_parameters_counted_unbuilt_match_the_built_model(name):
    from explorer.core.zoo import params_unbuilt

    size = max(model_entry(name).min_image_size, 28 if name == "vit" else 8)
    assert params_unbuilt(name, num_classes=7, in_channels=3, image_size=size) == count_params(
        create_model(name, num_classes=7, in_channels=3, image_size=size))


UNBUILT = """
import resource
from explorer.core import zoo
zoo.model_entry("torchvision:vit_h_14")  # torchvision imported: its memory is not the model's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = zoo.params_unbuilt("torchvision:vit_h_14", num_classes=10, in_channels=1, image_size=8)
print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_huge_architecture_is_counted_without_its_memory():
    """torchvision's ViT-H/14 holds 630 million parameters, 2.4 GB as 32-bit floats: counted on the meta device, the
    process's peak memory (a fresh process's, so nothing earlier hides it) grows by far less."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", UNBUILT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    params, grew_mb = map(int, out.stdout.split())
    assert params == 630_275_850 and grew_mb < 200, (params, grew_mb)
