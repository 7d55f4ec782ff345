"""Model zoo as a registry (timm's shape): `@register_model`, `create_model`, `list_models`.

Every factory takes num_classes, in_channels and image_size, so one list feeds the UI's select box,
the CLI and the parametrised tests. torchvision's architectures are adapted to small inputs the way
CIFAR papers do (and seed 000 did for VGG-13 on 32x32): a 3x3 stride-1 stem and no pooling past 1x1.

Beyond the zoo, any classification architecture of the installed torchvision or timm is named
`torchvision:<name>` or `timm:<name>` (`library_models`), and trusted plugins (`explorer.core.plugins`) register
their own with `register_model`. A named architecture is built by the library's own code with random weights
(torchvision's `get_model(name, weights=None)`, timm's `create_model(name, pretrained=False)`): nothing is ever
downloaded, and a user's weights are loaded into it as data.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
from torch import nn

from explorer.core.errors import bad_value, check_range


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    min_image_size: int
    default_image_size: int


_REGISTRY: dict[str, ModelEntry] = {}
Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


def register_model(name: str, *, description: str, min_image_size: int = 4, default_image_size: int = 32
                   ) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        if ":" in name:  # 'timm:resnet18' would shadow the library's own architecture in every card that names it
            raise RuntimeError(f"model {name!r} has a ':', which names a library's architecture ('torchvision:<name>', "
                               "'timm:<name>'): register it under a name without one")
        _REGISTRY[name] = ModelEntry(name, fn, description, min_image_size, default_image_size)
        return fn

    return deco


def list_models() -> list[str]:
    """The zoo's architectures and those trusted plugins registered (each plugin is imported once)."""
    _load_plugins()
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    lib, sep, arch = name.partition(":") if isinstance(name, str) else ("", "", "")
    if sep and lib in LIBRARIES:
        if arch not in _library_names(lib):
            raise unknown_model(name)
        return ModelEntry(name, functools.partial(LIBRARIES[lib][1], arch), f"{lib}'s {arch}", 1, 224)
    raise unknown_model(name)


def _load_plugins() -> None:
    from explorer.core import plugins  # plugins import this module to register: imported late

    plugins.load()


def unknown_model(name: object) -> ValueError:
    """One line: the unknown name, the closest known ones, and where the rest are listed."""
    names = all_model_names()
    bare: dict[str, list[str]] = {}  # 'resnet18' -> the library names it stands for, so a bare name finds them
    for n in names:
        if ":" in n:
            bare.setdefault(n.partition(":")[2], []).append(n)
    query = str(name).partition(":")[2] if ":" in str(name) else str(name)
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.6)
    close = [*bare.get(query, []), *close, *(full for b in difflib.get_close_matches(query, bare, n=3, cutoff=0.8)
                                             for full in bare[b])]
    close = list(dict.fromkeys(c for c in close if c != name))[:6]
    hint = f"close matches: {', '.join(close)}; " if close else ""
    return ValueError(f"model {name!r} is not known: {hint}the zoo has {', '.join(sorted(_REGISTRY))}, and any "
                      f"classification model of torchvision or timm is named 'torchvision:<name>' or 'timm:<name>' "
                      f"(python -m explorer models lists them all)")


def all_model_names() -> list[str]:
    """The zoo's and the plugins' names, then every torchvision and timm name: what the page's list searches."""
    return [*list_models(), *library_models()]


def library_models() -> list[str]:
    """'torchvision:<name>' for torchvision's classification builders, 'timm:<name>' for timm's models."""
    return [f"{lib}:{n}" for lib in LIBRARIES for n in _library_names(lib)]


@functools.cache
def _library_names(lib: str) -> tuple[str, ...]:
    return tuple(LIBRARIES[lib][0]())


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    names: list[str] = tvm.list_models(module=tvm)
    return names  # the classification builders only (not detection, segmentation, video)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _torchvision_model(arch: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision's builder with random weights (weights=None: nothing is downloaded). Its stem takes 3 channels:
    for other inputs the first convolution that takes 3 is replaced by one of the same shape that takes
    `in_channels` (timm's in_chans does the same inside timm); the image size is the data's (checked by running)."""
    import torchvision.models as tvm

    model: nn.Module = tvm.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        path, conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3),
                          (None, None))
        if conv is None:
            raise ValueError(f"model 'torchvision:{arch}' has no convolution that takes 3 channels to adapt to "
                             f"{in_channels}")
        parent, _, leaf = str(path).rpartition(".")
        kernel, stride, dilation = (cast(tuple[int, int], t) for t in (conv.kernel_size, conv.stride, conv.dilation))
        padding = conv.padding if isinstance(conv.padding, str) else cast(tuple[int, int], conv.padding)
        setattr(model.get_submodule(parent) if parent else model, leaf,
                nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, dilation,
                          conv.groups, conv.bias is not None, conv.padding_mode))
    return model


def _timm_model(arch: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """timm's model with random weights (pretrained=False: nothing is downloaded), for `in_channels` and, where
    the model takes an image size (Vision Transformers and the like), for `image_size`."""
    import timm

    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                 img_size=image_size)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)


# (the names it knows, how it builds one) for each library an architecture can be named from
LIBRARIES: dict[str, tuple[Callable[[], list[str]], Callable[..., nn.Module]]] = {
    "torchvision": (_torchvision_names, _torchvision_model), "timm": (_timm_names, _timm_model)}


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 **kwargs: Any) -> nn.Module:
    """Build `name` for inputs of shape (in_channels, image_size, image_size)."""
    entry = model_entry(name)
    check_range("num_classes", num_classes, 2, 100_000, integer=True)
    check_range("in_channels", in_channels, 1, 64, integer=True)
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or not entry.min_image_size <= image_size <= 1024):
        raise bad_value("image_size", image_size, f"an integer in [{entry.min_image_size}, 1024] for model {name!r}")
    if "width" in kwargs:
        check_range("width", kwargs["width"], 0.0625, 4.0)
    try:
        return entry.factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except TypeError as e:
        if not kwargs:
            raise ValueError(f"model {name!r} could not be built for {num_classes} classes and inputs of shape "
                             f"{(in_channels, image_size, image_size)}: {e}") from None
        raise ValueError(f"model {name!r} does not take these arguments: {sorted(kwargs)} ({e})") from None


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class DigitsCNN(nn.Module):
    """Small conv net for 8x8 digits: two conv stages and a two-layer head (about 40k parameters)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: float = 1.0):
        super().__init__()
        c1, c2, c3, h = _ch(16, width), _ch(32, width), _ch(64, width), _ch(64, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c3 * side * side, h), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(h, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("digits_cnn", description="small conv net for 8x8 digits (~40k params)", default_image_size=8)
def digits_cnn(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    return DigitsCNN(num_classes, in_channels, image_size, width)


class LeNet5(nn.Module):
    """LeCun's LeNet-5 (conv 6 -> conv 16 -> 120 -> 84). Below 16x16 the second conv pads, so the
    network keeps its shape on 8x8 digits."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        pad2 = 0 if image_size >= 16 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = (image_size // 2 - 4 + 2 * pad2) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("lenet5", description="LeNet-5 (~60k params at 28x28)", min_image_size=8, default_image_size=28)
def lenet5(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size)


class SmallVGG(nn.Module):
    """torchvision's VGG layer configuration with batch norm, pools dropped once the feature map is
    1x1, global average pooling and a two-layer head (the usual CIFAR adaptation)."""

    def __init__(self, cfg: list[str | int], num_classes: int, in_channels: int, image_size: int, width: float):
        super().__init__()
        layers: list[nn.Module] = []
        c, side = in_channels, image_size
        for v in cfg:
            if v == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            out = _ch(int(v), width)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c, c), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(c, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.pool(self.features(x)))
        return out


def _vgg_cfg(key: str) -> list[str | int]:
    from torchvision.models.vgg import cfgs

    return list(cfgs[key])


@register_model("vgg11", description="VGG-11 (torchvision cfg A) with BN, for small inputs", default_image_size=32)
def vgg11(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    return SmallVGG(_vgg_cfg("A"), num_classes, in_channels, image_size, width)


@register_model("vgg13", description="VGG-13 (torchvision cfg B) with BatchNorm, for small inputs",
                default_image_size=32)
def vgg13(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    return SmallVGG(_vgg_cfg("B"), num_classes, in_channels, image_size, width)


@register_model("resnet18", description="torchvision ResNet-18 with a CIFAR-style 3x3 stem", default_image_size=32)
def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    m = tv_resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if image_size <= 64:
        m.maxpool = nn.Identity()
    return cast(nn.Module, m)  # torchvision's builders are untyped


@register_model("mobilenet_v2", description="torchvision MobileNetV2 with a stride-1 stem", default_image_size=32)
def mobilenet_v2(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    m = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
    stem = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1 if image_size <= 64 else 2,
                                 padding=1, bias=False)
    return cast(nn.Module, m)  # torchvision's builders are untyped


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet ("Deep Residual Learning for Image Recognition", section 4.2): a 3x3 stem,
    three stages of torchvision BasicBlocks at 16, 32 and 64 channels (times `width`), the last two halving
    the feature map through a 1x1 projection shortcut, global average pooling and one linear layer.
    Depth 6n + 2; every block after a stage's first adds an identity skip, which channel pruning must
    keep consistent across the whole stage."""

    def __init__(self, blocks: int, num_classes: int, in_channels: int, image_size: int, width: float = 1.0):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        c = _ch(16, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        for i, planes in enumerate((_ch(16, width), _ch(32, width), _ch(64, width))):
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or c != planes):
                    down = nn.Sequential(nn.Conv2d(c, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
                layers.append(BasicBlock(c, planes, stride if b == 0 else 1, down))
                c = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return out


@register_model("resnet8", description="CIFAR-style ResNet-8 (~78k params): identity skips, BatchNorm",
                default_image_size=32)
def resnet8(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    return CifarResNet(1, num_classes, in_channels, image_size, width)


@register_model("resnet14", description="CIFAR-style ResNet-14 (~175k params): identity skips, BatchNorm",
                default_image_size=32)
def resnet14(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    return CifarResNet(2, num_classes, in_channels, image_size, width)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def params_unbuilt(name: str, **kwargs: Any) -> int | None:
    """The parameters `create_model(name, **kwargs)` would have, counted on torch's meta device (shapes only, no
    memory), so that a model too large to hold is known before it is built; None where the architecture cannot
    be built there (the real build then says why, or builds it)."""
    try:
        with torch.device("meta"):
            return count_params(create_model(name, **kwargs))
    except Exception:  # a library's constructor that reads its tensors' values, or arguments it refuses
        return None


@register_model("vit", description="Vision Transformer (timm's VisionTransformer): 7x7 patches, width 96, "
                "4 blocks of 4 attention heads (~0.3M params)", min_image_size=4, default_image_size=28)
def vit(num_classes: int, in_channels: int, image_size: int, patch_size: int = 7, embed_dim: int = 96,
        depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0) -> nn.Module:
    """Dosovitskiy et al.'s "An Image is Worth 16x16 Words" at Fashion-MNIST's scale: 28x28 images in 16 patches
    of 7x7 plus a class token. timm builds it, so attention, MLP and LayerNorm are the library's own modules,
    which Torch-Pruning and ONNX export know."""
    from timm.models.vision_transformer import VisionTransformer

    # bounded like the zoo's other sizes: a packed file names these, and 10^6 blocks would be built one by one
    for field, value, hi in (("patch_size", patch_size, image_size), ("embed_dim", embed_dim, 8192),
                             ("depth", depth, 64), ("num_heads", num_heads, embed_dim)):
        check_range(field, value, 1, hi, integer=True)
    check_range("mlp_ratio", mlp_ratio, 0.0625, 16.0)
    if embed_dim % num_heads:
        raise bad_value("num_heads", num_heads, f"a divisor of embed_dim={embed_dim} for model 'vit'")
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size} for model 'vit'")
    return VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_channels,
                             num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio, class_token=True, global_pool="token", qkv_bias=True)
