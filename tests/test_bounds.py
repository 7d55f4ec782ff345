"""A packed file's header is checked before anything is built from it (issue 33): the layers it declares must be
the file's tensors and within the caps, its JSON nests only so deep, every field has its type. Each hostile file
here is unpacked in a child process under 500 MB more address space than it starts with, and must be refused
with PackError, in one line, within 2 s; before the fix each one allocated gigabytes, ran for tens of seconds or
raised another error."""

import pytest
import torch

from explorer.artifact import bounds, pack
from explorer.artifact.architecture import SMALL
from explorer.artifact.pack import PackError, unpack
from explorer.compress.base import CompressionState
from explorer.models.baselines import load_baseline
from tests import packfiles
from tests.packfiles import Limited, nested

MODEL, CARD = load_baseline("models/digits_cnn-digits.safetensors")
ARCH = {"name": "digits_cnn", "kwargs": CARD["arch_kwargs"]}
GOOD = pack.pack(MODEL, CompressionState(), ARCH)


def forged(change, blob: bytes = GOOD) -> bytes:
    return packfiles.forged(change, blob)


def linear(i: int, o: int) -> dict:
    return {"in_features": i, "out_features": o, "bias": True}


def conv(i: int, o: int, k: int) -> dict:
    return {"in_channels": i, "out_channels": o, "kernel_size": [k, k], "stride": [1, 1], "padding": [0, 0],
            "dilation": [1, 1], "groups": 1, "bias": True, "padding_mode": "zeros"}


def layer(path: str, kind: str, args: dict) -> dict:
    return {"path": path, "type": kind, "args": args}


def declare(*entries: dict):
    return lambda h: h.update(structure=list(entries))


def tensor(name: str, **fields):
    """Changes the named tensor's table entry."""
    def change(h: dict) -> None:
        next(e for e in h["tensors"] if e["name"] == name).update(fields)
    return change


def both(*changes):
    def change(h: dict) -> None:
        for c in changes:
            c(h)
    return change


@pytest.fixture(scope="module")
def limited():
    child = Limited(GOOD, cap_mb=500)
    yield child
    child.close()


def refused(limited: Limited, blob: bytes, match: str) -> str:
    kind, msg, seconds, grown = limited.unpack(blob)
    assert kind == "PackError", f"{kind}: {msg}"
    assert "\n" not in msg and match in msg, msg
    assert seconds < 2.0 and grown < 500 * 2**20, (seconds, grown)
    return msg


HOSTILE = {
    # the four reproductions (the 149 KB file, the 8 GB one, the 63 s one, the RecursionError)
    "one Linear(40000, 40000)": (
        forged(declare(layer("classifier.1", "Linear", linear(40000, 40000)))),
        "the declared layers need tensor classifier.1.weight as float32 [40000, 40000] (1,600,000,000 parameters); "
        "the file stores float32 [64, 256]"),
    "one Conv2d(4096, 4096, 11x11)": (
        forged(declare(layer("features.0", "Conv2d", conv(4096, 4096, 11)))),
        "tensor features.0.weight as float32 [4096, 4096, 11, 11] (2,030,043,136 parameters)"),
    "3,000 declared layers": (
        forged(declare(*[layer("classifier.1", "Linear", linear(1024, 1024))] * 3000)),
        "the structure lists 3,000 layers; architecture 'digits_cnn' has 16 modules, so at most 48 are allowed"),
    "a header 100,000 lists deep": (
        nested(GOOD, 100_000),
        "header nests 100,001 levels deep; at most 64 are allowed"),
    "a plain header of 13 million empty objects": (  # 39 MB, which json made into 900 MB of dictionaries
        packfiles.with_text(b"[" + b"{}," * 13_000_000 + b"{}]", GOOD, version=1),
        "header of 39000004 bytes is past the 4194304 allowed: refused"),
    "a number where an encoding's name belongs": (
        forged(lambda h: h["tensors"][0]["encoding"].update(kind=4)),
        "tensor features.0.weight: value encoding is 4; allowed: 'raw', 'offset', 'fp16', 'bf16', 'codebook', "
        "'palette' or int<bits>"),
    # the same layers with a tensor table forged to match them (a few bytes each would claim the shapes)
    "Linear(40000, 40000) and its tensors": (
        forged(both(declare(layer("classifier.1", "Linear", linear(40000, 40000))),
                    tensor("classifier.1.weight", shape=[40000, 40000]), tensor("classifier.1.bias", shape=[40000]))),
        "the file's tensors hold 1,600,063,946 parameters, over the cap of 1,000,000,000 (EXPLORER_PACK_MAX_PARAMS)"),
    "Linear(12000, 12000) and its tensors, under the cap": (
        forged(both(declare(layer("classifier.1", "Linear", linear(12000, 12000))),
                    tensor("classifier.1.weight", shape=[12000, 12000]), tensor("classifier.1.bias", shape=[12000]))),
        "the declared layers hold 144,035,946 parameters; a compressed 'digits_cnn' holds at most 1,129,364 "
        "(twice the architecture's 40,394, and 1,048,576)"),
    "a new layer beside the architecture's": (
        forged(declare(layer("extra", "Linear", linear(20000, 20000)))),
        "packed structure names layer 'extra', which is not a layer of the architecture"),
    "an architecture of 64 blocks of width 8192": (
        forged(lambda h: h.update(architecture={"name": "vit", "kwargs": {
            "num_classes": 10, "in_channels": 1, "image_size": 8, "patch_size": 4, "embed_dim": 8192,
            "depth": 64, "num_heads": 8}})),
        "architecture 'vit' holds more than 1,000,000,000 parameters, the cap EXPLORER_PACK_MAX_PARAMS"),
    "an architecture of 2,000 blocks": (
        forged(lambda h: h.update(architecture={"name": "vit", "kwargs": {
            "num_classes": 10, "in_channels": 1, "image_size": 8, "patch_size": 4, "embed_dim": 4, "depth": 2000,
            "num_heads": 1}})),
        "depth=2000 must be an integer in [1, 64]"),
    "a device among a layer's arguments": (
        forged(declare(layer("classifier.1", "Linear", {**linear(256, 64), "device": "cuda"}))),
        "the arguments of layer 'classifier.1' include 'device'; allowed: in_features, out_features, bias"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_header_is_refused_in_one_line_within_2_s_and_500_mb(limited, case):
    blob, match = HOSTILE[case]
    refused(limited, blob, match)


def zeros(model: torch.nn.Module, arch: dict) -> bytes:
    """The packed file of `model` with every value zero: next to no bytes of data, whatever its size."""
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()
    return pack.pack(model, CompressionState(), arch)


def test_a_model_of_zeros_is_refused_for_the_bytes_it_does_not_store(limited):
    """A 1.3 KB file (all header: zeros take no bytes of data) held ResNet-50's 25.6 million parameters and loaded,
    taking 424 MB and 2.4 s; a layer declared with its tensors forged over a small model's zeros loaded as well."""
    from explorer.core.zoo import create_model

    arch = {"name": "torchvision:resnet50", "kwargs": {"num_classes": 1000, "in_channels": 3, "image_size": 224}}
    blob = zeros(create_model(arch["name"], **arch["kwargs"]), arch)
    assert len(blob) < 2000
    refused(limited, blob, "the file's tensors hold 25,610,205 parameters in 0 bytes of data")
    small = zeros(create_model("digits_cnn", **ARCH["kwargs"]), ARCH)
    wide = forged(both(declare(layer("classifier.1", "Linear", linear(256, 40000))),
                       tensor("classifier.1.weight", shape=[40000, 256]), tensor("classifier.1.bias", shape=[40000])),
                  small)
    refused(limited, wide, "per byte and 1,048,576 more (the sparsest model a recipe makes stores about 250)")


def test_the_good_file_loads_in_the_limited_process_and_describes_its_own_layers(limited):
    """The harness lets an honest file through, and an honest file that lists its own layers (as a channel-pruned
    one does) still loads: the structure's entries are checked against the architecture, not refused as such."""
    assert limited.unpack(GOOD)[0] == "ok"
    same = forged(declare(layer("classifier.1", "Linear", linear(256, 64)), layer("features.0", "Conv2d", {
        **conv(1, 16, 3), "padding": [1, 1]})))
    kind, msg, _, _ = limited.unpack(same)
    assert kind == "ok", msg


@pytest.mark.parametrize("change,match", [
    (lambda h: h["tensors"][0].update(shape="16x1x3x3"), "tensor features.0.weight: shape is '16x1x3x3'; allowed: a "
                                                          "JSON list"),
    (lambda h: h["tensors"][0].update(shape=[16, 1, 3, 3.0]), "tensor features.0.weight: dimension is 3.0"),
    (lambda h: h["tensors"][0].update(dtype=32), "tensor features.0.weight: dtype is 32; allowed: 'bfloat16'"),
    (lambda h: h["tensors"][0]["encoding"].update(bits="32"), "value width in bits is '32'; allowed: a whole number "
                                                              "in [1, 64]"),
    (lambda h: h["tensors"][0]["layout"].update(kind=["dense"]), "layout is ['dense']; allowed: 'dense', 'bitmask', "
                                                                 "'csr'"),
    (lambda h: h["tensors"][0].update(entropy=None), "entropy coding is None; allowed: 'none', 'zstd'"),
    (lambda h: h["tensors"][0].update(offset=-1), "tensor features.0.weight: offset is -1"),
    (lambda h: h["tensors"].append(7), "a tensor table entry is 7; allowed: a JSON object"),
    (lambda h: h.update(architecture={"name": 5, "kwargs": {}}), "the architecture's name is 5; allowed: a model's"),
    (lambda h: h.update(architecture={"name": "digits_cnn", "kwargs": [1]}), "the architecture's arguments is [1]"),
    (lambda h: h.update(structure={"path": "x"}), "the structure is {'path': 'x'}; allowed: a JSON list"),
    (declare(layer("classifier.1", "Linear", linear(256, True))), "out_features of layer 'classifier.1' (Linear) is "
                                                                  "True; allowed: a whole number in [1, 67108864]"),
    (declare(layer("classifier.1", "Lambda", {})), "the type of layer 'classifier.1' is 'Lambda'; allowed: 'Conv2d'"),
    (declare(layer("features.0", "Conv2d", {**conv(1, 16, 3), "padding_mode": 0})), "padding_mode of layer "
                                                                                    "'features.0' (Conv2d) is 0"),
    (declare(layer("features.1", "BatchNorm2d", {"num_features": 16})),
     "packed structure puts a BatchNorm2d at 'features.1', where the architecture has a ReLU; allowed: a layer of "
     "the same type"),
    (declare(layer("classifier.1", "Linear", linear(256, 64)), layer("classifier.1", "Linear", linear(256, 64))),
     "packed structure names layer 'classifier.1', which is listed twice"),
    (lambda h: h.update(activations={"bits": 10**9, "dynamic": False, "ranges": {}}),
     "the activation quantisation's bits is 1000000000; allowed: a whole number in [1, 32]"),
    (lambda h: h.update(activations={"bits": 8, "dynamic": False, "ranges": {"features.0": [0, "1"]}}),
     "the activation range of 'features.0' is '1'"),
    (lambda h: h.update(architecture={"name": "vit", "kwargs": {"image_size": 8, "patch_size": 4, "embed_dim": 32,
                                                                "num_heads": 3}}),
     "num_heads=3 must be a divisor of embed_dim=32 for model 'vit'"),  # timm's AssertionError before
    (lambda h: h.update(format="onnx"), "the header's format is 'onnx'; allowed: 'xpk'"),
])
def test_every_wrong_field_is_one_packerror_naming_the_value(change, match):
    """In this process: these build nothing, so they need no limits; before the fix several were a TypeError,
    an AttributeError or passed to torch."""
    blob = forged(change)
    with pytest.raises(PackError) as e:
        unpack(blob)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    if "tensor" in match or "a tensor table" in match:  # the per-layer size report reads the same table
        with pytest.raises(PackError):
            pack.tensor_report(blob)


def test_the_cap_is_a_setting(monkeypatch):
    monkeypatch.setenv("EXPLORER_PACK_MAX_PARAMS", "40000")
    with pytest.raises(PackError, match=r"^the file's tensors hold 40,394 parameters, over the cap of 40,000 "
                                        r"\(EXPLORER_PACK_MAX_PARAMS\)$"):
        unpack(GOOD)
    monkeypatch.setenv("EXPLORER_PACK_MAX_PARAMS", "40394")
    assert unpack(GOOD).model is not None


def test_depth_skips_brackets_inside_strings_and_unclosed_ones_cost_one_pass():
    assert bounds.depth(b'{"a": [1, {"b": "[[[[{{"}], "c\\"[": []}') == 3
    assert bounds.depth(b"[" * 70 + b"]" * 70) == 70
    assert bounds.depth(b'"' + b'\\"' * 1_000_000) == 0  # every quote after the first is escaped: linear, not n^2


def test_an_architecture_the_meta_device_cannot_build_is_built_for_real_under_the_cap(monkeypatch):
    """A builder that reads a large tensor's data (which the meta device has not) is built for real instead, its
    tensors counted as they are made: the file still loads, and the cap still holds."""
    from explorer.core import zoo

    def reads_its_data(num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
        assert int(torch.ones(SMALL + 1).sum()) == SMALL + 1
        return zoo.DigitsCNN(num_classes, in_channels, image_size)

    monkeypatch.setitem(zoo._REGISTRY, "reads_its_data", zoo.ModelEntry("reads_its_data", reads_its_data, "", 4, 8))
    blob = pack.pack(MODEL, CompressionState(), {"name": "reads_its_data", "kwargs": ARCH["kwargs"]})
    out = unpack(blob).model.state_dict()
    assert all(torch.equal(out[k], v) for k, v in MODEL.state_dict().items())
    # on the meta device it stops at 65,537 values; for real it makes those and the model's 40,394 as well
    monkeypatch.setenv("EXPLORER_PACK_MAX_PARAMS", "100000")
    with pytest.raises(PackError, match=r"^architecture 'reads_its_data' holds more than 100,000 parameters"):
        unpack(blob)


def test_only_the_files_tensors_are_allocated_not_the_layers_they_replace(limited):
    """A VGG-13 of width 1/16 described against VGG-13 of width 4 (every layer replaced): 143 KB that made the loader
    build the 154.7 million parameters it then replaced, 766 MB and 1.9 s. The replaced layers are now never built."""
    from explorer.artifact.architecture import _args
    from explorer.core.zoo import create_model

    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 8}
    small = create_model("vgg13", width=0.0625, **kwargs)
    blob = pack.pack(small, CompressionState(), {"name": "vgg13", "kwargs": {**kwargs, "width": 0.0625}})
    entries = [layer(p, type(m).__name__, _args(m)) for p, m in small.named_modules() if p and _args(m) is not None]
    wide = forged(lambda h: h.update(architecture={"name": "vgg13", "kwargs": {**kwargs, "width": 4.0}},
                                     structure=entries), blob)
    kind, msg, seconds, grown = limited.unpack(wide)
    assert kind == "ok" and seconds < 2.0 and grown < 500 * 2**20, (kind, msg, seconds, grown)
    out = unpack(wide).model
    assert all(torch.equal(out.state_dict()[k], v) for k, v in small.state_dict().items())


def test_a_large_buffer_the_file_does_not_hold_is_built_as_the_architecture_builds_it(monkeypatch):
    """A module may keep a table its builder computes and the state dict leaves out; one too large to be made while
    the model is measured is made by building the model for real, as before."""
    from explorer.core import zoo

    def with_table(num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
        m = zoo.DigitsCNN(num_classes, in_channels, image_size)
        m.register_buffer("table", torch.arange(SMALL + 1, dtype=torch.float32), persistent=False)
        return m

    monkeypatch.setitem(zoo._REGISTRY, "with_table", zoo.ModelEntry("with_table", with_table, "", 4, 8))
    model = with_table(**ARCH["kwargs"])
    model.load_state_dict(MODEL.state_dict())
    out = unpack(pack.pack(model, CompressionState(), {"name": "with_table", "kwargs": ARCH["kwargs"]})).model
    assert torch.equal(out.table, torch.arange(SMALL + 1, dtype=torch.float32))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(out(x), MODEL.eval()(x))
