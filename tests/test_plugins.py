"""Trusted plugins: found from an installed package's entry point and from --plugin / EXPLORER_PLUGINS, each a test
package written to a temporary folder on sys.path."""

import sys

import pytest
import torch

from explorer.app.cli import main
from explorer.core import data, plugins, zoo
from explorer.models import user as byo

PLUGIN = '''
import torch
from torch import nn

from explorer.core.data import register_dataset
from explorer.core.zoo import register_model


@register_model("{name}_net", description="a plugin's net", default_image_size=8)
def build(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


def stripes(root):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.rand(200, 1, 8, 8, generator=g) * 0.2
    x[y == 1, :, :, :4] += 0.8  # class 1: bright left half
    return x, y, ["dark", "left"], None


register_dataset("{name}_stripes", stripes)
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    """write(name, entry_point=...) puts a plugin module on sys.path, with a dist-info naming it in the
    explorer.plugins group when asked; what it registered is removed afterwards."""
    monkeypatch.setenv(plugins.ENV, "")
    names = []

    def write(name: str, entry_point: str | None = None, source: str = PLUGIN):
        (tmp_path / f"{name}.py").write_text(source.format(name=name))
        if entry_point is not None:
            info = tmp_path / f"{name}-0.1.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
            (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{name} = {entry_point}\n")
        names.append(name)
        monkeypatch.syspath_prepend(str(tmp_path))

    yield write
    for name in names:
        sys.modules.pop(name, None)
        zoo._REGISTRY.pop(f"{name}_net", None)
        data.PLUGIN_DATASETS.pop(f"{name}_stripes", None)
    plugins._done.clear()
    plugins._seen = None


def test_an_installed_entry_point_registers_an_architecture_and_a_data_set(package):
    package("plug_ep", entry_point="plug_ep")
    assert "plug_ep_net" in zoo.list_models() and "plug_ep_stripes" in data.list_datasets()
    model = zoo.create_model("plug_ep_net", num_classes=2, in_channels=1, image_size=8)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 2)
    bundle = data.load_dataset("plug_ep_stripes")
    assert bundle.classes == ("dark", "left") and len(bundle.test) == 40 and bundle.input_shape == (1, 8, 8)
    assert plugins.loaded() == {"entry point 'plug_ep' (plug_ep)": None}


def test_an_entry_point_may_name_a_function_called_once(package):
    source = "calls = []\n\ndef register():\n    calls.append(1)\n"
    package("plug_fn", entry_point="plug_fn:register", source=source)
    zoo.list_models()
    zoo.list_models()
    assert sys.modules["plug_fn"].calls == [1]


def test_plugin_from_the_command_line_reaches_the_checking_process(package, tmp_path, monkeypatch, capsys):
    """--plugin names a module; the child process that checks an added model imports it too."""
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    package("plug_cli")
    assert main(["--plugin", "plug_cli", "models", "plug_cli"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "plug_cli_net"
    net = zoo.create_model("plug_cli_net", num_classes=2, in_channels=1, image_size=8)
    from safetensors.torch import save_file

    save_file(dict(net.state_dict()), str(tmp_path / "w.safetensors"))
    card = byo.add_model(tmp_path / "w.safetensors", arch="plug_cli_net", dataset="plug_cli_stripes",
                         name="plugged")
    assert card["architecture"] == "plug_cli_net" and card["test_samples"] == 40


def test_a_plugin_that_fails_to_import_or_a_bad_name_is_one_line(package, monkeypatch, capsys):
    assert main(["--plugin", "no_such_plugin_xyz", "models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plugin module 'no_such_plugin_xyz' could not be loaded: ModuleNotFoundError" in err
    monkeypatch.setenv(plugins.ENV, "")
    assert main(["--plugin", "bad name", "models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plugin='bad name': 'bad name' is not a Python module name" in err
    package("plug_broken", source="raise RuntimeError('half-written plugin')\n")
    monkeypatch.setenv(plugins.ENV, "plug_broken")
    with pytest.raises(ValueError, match="plugin module 'plug_broken' could not be loaded: RuntimeError: half-written"):
        zoo.list_models()
    monkeypatch.setenv(plugins.ENV, "")  # unnamed again: the zoo answers
    assert "lenet5" in zoo.list_models()


def test_the_example_plugin_loads_its_weights(monkeypatch, tmp_path):
    """examples/tiny_plugin: the README's walk-through, by the functions the command line calls."""
    monkeypatch.setenv(plugins.ENV, "explorer_tiny_plugin")
    monkeypatch.setenv("EXPLORER_USER_MODELS", str(tmp_path / "user"))
    monkeypatch.syspath_prepend("examples/tiny_plugin")
    try:
        card = byo.add_model("examples/tiny_plugin/tinynet-digits.safetensors", arch="tinynet", name="tiny")
        assert card["architecture"] == "tinynet" and card["params"] == 3022 and card["accuracy"]["top1"] > 90
    finally:
        sys.modules.pop("explorer_tiny_plugin", None)
        zoo._REGISTRY.pop("tinynet", None)
        plugins._done.clear()
        plugins._seen = None


def test_the_page_has_no_way_to_name_a_plugin():
    """Only whoever starts the explorer names plugins: nothing under explorer/app/ui or app.py mentions them."""
    from pathlib import Path

    for p in [Path("app.py"), *Path("explorer/app/ui").glob("*.py")]:
        text = p.read_text()
        assert "plugin" not in text.lower() and plugins.ENV not in text, p


def test_module_names_are_validated():
    assert plugins.module_names(" a.b , c,,a.b ") == ("a.b", "c")
    for bad in ("a-b", "1x", "a..b", "a b", "a/b"):
        with pytest.raises(ValueError, match="is not a Python module name"):
            plugins.module_names(bad)


def test_a_plugin_that_calls_sys_exit_is_one_line_naming_it(package, monkeypatch, capsys):
    """Issue 33: a plugin that called sys.exit() as it was imported ended the command silently with its status,
    instead of the one line naming the plugin. A Ctrl-C while a plugin loads is still an interruption, not the
    plugin's failure."""
    package("plug_exit", source="import sys\nsys.exit(3)\n")
    assert main(["--plugin", "plug_exit", "models"]) == 2
    assert capsys.readouterr().err == ("error: plugin module 'plug_exit' could not be loaded: SystemExit: it called "
                                       "sys.exit(3) (plugins come from the 'explorer.plugins' entry points, --plugin "
                                       "and EXPLORER_PLUGINS)\n")
    monkeypatch.setenv(plugins.ENV, "")
    package("plug_exit_fn", entry_point="plug_exit_fn:register",
            source="import sys\n\ndef register():\n    sys.exit('no GPU here')\n")
    with pytest.raises(ValueError, match=r"^plugin entry point 'plug_exit_fn' \(plug_exit_fn:register\) could not be "
                                         r"loaded: SystemExit: it called sys.exit\('no GPU here'\) "):
        zoo.list_models()
    package("plug_interrupted", source="raise KeyboardInterrupt\n")
    monkeypatch.setenv(plugins.ENV, "plug_interrupted")
    with pytest.raises(KeyboardInterrupt):
        zoo.list_models()
    assert "module 'plug_interrupted'" not in plugins.loaded()  # not marked as failed: the next look-up tries again


LIBRARY_NAME = '''
from torch import nn

from explorer.core.zoo import register_model


@register_model("timm:resnet18", description="not timm's resnet18")
def build(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))
'''


def test_a_plugin_cannot_take_a_library_name_nor_the_zoos_own(package, monkeypatch):
    """Issue 33: a plugin could register 'timm:resnet18' and so silently replace timm's architecture in every card
    that names it. A name with a ':' is the libraries' and refused, as a name of the zoo's own (or of a built-in data
    set) already was; the library's architecture stays what the name builds."""
    try:
        package("plug_lib", source=LIBRARY_NAME)
        monkeypatch.setenv(plugins.ENV, "plug_lib")
        with pytest.raises(ValueError, match=r"^plugin module 'plug_lib' could not be loaded: RuntimeError: model "
                                             r"'timm:resnet18' has a ':', which names a library's architecture "):
            zoo.list_models()
        assert "timm:resnet18" not in zoo._REGISTRY
    finally:
        zoo._REGISTRY.pop("timm:resnet18", None)
    for name, source in (("plug_zoo", LIBRARY_NAME.replace("timm:resnet18", "lenet5")),
                         ("plug_data", "from explorer.core.data import register_dataset\n"
                                       "register_dataset('digits', lambda root: None)\n")):
        package(name, source=source)
        monkeypatch.setenv(plugins.ENV, name)
        with pytest.raises(ValueError, match=rf"^plugin module '{name}' could not be loaded: RuntimeError: "
                                             r"(model 'lenet5'|dataset 'digits') registered twice"):
            zoo.list_models()
    monkeypatch.setenv(plugins.ENV, "")
    assert zoo.model_entry("timm:resnet18").description == "timm's resnet18"
    assert zoo.model_entry("lenet5").description.startswith("LeNet-5")
