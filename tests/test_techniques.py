"""The contract every registered technique keeps (timm-style: parametrised over the registry, so a new
technique is held to it the day it is registered): its input model is untouched, an invalid config raises
a ValueError that repeats the bad value, its config round-trips through JSON, and its report lands in the
state under its kind."""

import dataclasses
import itertools
import json
from typing import ClassVar

import pytest
import torch
from torch import nn

from explorer.compress.base import (
    Context,
    Control,
    StepConfig,
    config_from_dict,
    config_to_dict,
    page_types,
    register_step,
    step_type_of,
    step_types,
)
from explorer.compress.bnadapt import BNAdaptConfig
from explorer.compress.cluster import ClusterConfig
from explorer.compress.distill import DistillConfig
from explorer.compress.finetune import FinetuneConfig
from explorer.compress.lowrank import LowRankConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import MODES, QuantizeConfig
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model

# valid configs, small enough to apply in a second each on the digits CNN; every quantisation mode has its
# own handler, so each is here
EXAMPLES = [
    PruneConfig(sparsity=0.5), PruneConfig(sparsity=0.25, granularity="channel"),
    QuantizeConfig(bits=16, mode="fp16"), QuantizeConfig(bits=16, mode="bf16"), QuantizeConfig(bits=4),
    QuantizeConfig(bits=8, mode="static", calibration_samples=64), QuantizeConfig(bits=8, mode="dynamic"),
    QuantizeConfig(bits=4, mode="qat", activation_bits=8, finetune_epochs=1, calibration_samples=64),
    QuantizeConfig(bits=6, mode="mixed", budget_bits=4.0), QuantizeConfig(bits=4, group_size=32),
    QuantizeConfig(bits=3, rounding="gptq", calibration_samples=512), QuantizeConfig(bits=4, grid="restricted"),
    ClusterConfig(clusters=4), LowRankConfig(rank_ratio=0.5), DistillConfig(epochs=1), BNAdaptConfig(samples=64),
    FinetuneConfig(epochs=1),
]
# one invalid setting per kind: (field, value)
INVALID = {"prune": ("sparsity", 1.5), "quantize": ("bits", 99), "cluster": ("clusters", 1),
           "lowrank": ("rank_ratio", 2.5), "distill": ("temperature", 0.25), "bn_adapt": ("samples", 3),
           "finetune": ("runs", 99)}


def _id(cfg: StepConfig) -> str:
    return cfg.label().replace(" ", "-")


def test_every_registered_technique_is_covered_here():
    kinds = set(step_types())
    assert kinds == {c.kind for c in EXAMPLES} == set(INVALID), "add the new technique to EXAMPLES and INVALID"
    assert {c.mode for c in EXAMPLES if isinstance(c, QuantizeConfig)} == set(MODES)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("digits_cnn", num_classes=10, in_channels=1, image_size=8)


@pytest.mark.parametrize("cfg", EXAMPLES, ids=_id)
def test_the_input_model_is_untouched_and_the_report_is_under_the_kind(cfg, data):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shape = repr(model)
    out = step_type_of(cfg).apply(model, cfg, Context(data=data, seed=0, baseline=model))
    assert repr(model) == shape and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert out.model is not model
    report = out.state.info[cfg.kind]
    assert isinstance(report, dict if cfg.one_record else list)


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_an_invalid_config_names_the_value(kind):
    name, value = INVALID[kind]
    with pytest.raises(ValueError) as e:
        step_types()[kind].config(**{name: value})
    assert name in str(e.value) and str(value) in str(e.value)
    with pytest.raises(ValueError) as e:  # the same through the recipe's JSON form
        config_from_dict({"kind": kind, name: value})
    assert str(value) in str(e.value)


@pytest.mark.parametrize("cfg", EXAMPLES, ids=_id)
def test_the_config_round_trips_through_json(cfg):
    text = json.dumps(config_to_dict(cfg))
    again = config_from_dict(json.loads(text))
    assert again == cfg and type(again) is type(cfg)
    assert json.loads(text)["kind"] == cfg.kind == step_type_of(cfg).kind


# ---------------------------------------------------------------- each technique knows itself


def _values(ctrl: Control) -> list:
    """A grid over one control: every choice, both states of a box, the ends and the middle of a range."""
    if ctrl.options:
        return list(ctrl.options)
    if isinstance(ctrl.default, bool):
        return [False, True]
    lo, hi, step = ctrl.lo, ctrl.hi, ctrl.step
    mid = lo + round((hi - lo) / 2 / step) * step
    cast = int if isinstance(ctrl.default, int) else float
    return sorted({cast(lo), cast(round(mid, 6)), cast(hi), cast(ctrl.default)})


@pytest.mark.parametrize("kind", sorted(step_types()))
def test_every_technique_describes_itself_and_declares_its_controls(kind):
    cls = step_types()[kind].config
    for cfg in [c for c in EXAMPLES if c.kind == kind]:
        words = cfg.words()
        assert words and "\n" not in words and cfg.label()
        internal = [f.name for f in dataclasses.fields(cfg) if "_" in f.name]
        assert not any(name in words for name in internal), f"{words!r} names a field"
    controls = cls.controls()
    assert all(isinstance(c, Control) for c in controls)
    for ctrl in controls:
        assert ctrl.default in ctrl.options if ctrl.options else ctrl.lo is not None or isinstance(ctrl.default, bool)
        if ctrl.lo is not None:
            assert ctrl.lo <= ctrl.default <= ctrl.hi and ctrl.step
    if controls:
        assert sum(ctrl.off is not None for ctrl in controls) == 1, "one switch turns the technique on and off"
        assert cls.section[1], "its sidebar section has a title"


@pytest.mark.parametrize("ctrl", [c for t in page_types() for c in t.controls()], ids=lambda c: c.name)
def test_every_control_says_how_the_page_draws_it(ctrl):
    """The sidebar, the Sweep tab and the command line draw every control from its own data: its words are
    for values it takes, every value it offers parses back from its text, and its grid values are its own."""
    assert ctrl.label and ctrl.label[0].isupper() and "_" not in ctrl.label, "a label in words"
    assert set(ctrl.words) <= set(ctrl.allowed()), "words only for values the control takes"
    assert ctrl.default in ctrl.allowed() or (ctrl.lo is not None and ctrl.lo <= ctrl.default <= ctrl.hi)
    for v in (*ctrl.offered(), *ctrl.sweep, *ctrl.skip_near):
        assert ctrl.parse(str(v)) == v, f"{v!r} does not read back from its text"
    for spelled, v in ctrl.aliases.items():
        assert ctrl.parse(spelled) == v and v in ctrl.allowed()
    assert ctrl.cli.startswith("--") and " " not in ctrl.cli
    with pytest.raises(ValueError, match=rf"^{ctrl.name}=.* (must|is not)"):
        ctrl.parse("nonsense-value")


def test_the_page_controls_belong_to_one_technique_each():
    names = [ctrl.name for t in page_types() for ctrl in t.controls()]
    assert len(names) == len(set(names)) and "baseline" not in names


@pytest.mark.parametrize("technique", page_types(), ids=lambda t: t.kind)
def test_controls_to_config_and_back_round_trip(technique):
    """For a grid of each technique's own controls: controls -> config -> controls -> the same config, and every
    control the config reads back is one the technique owns."""
    from explorer.run.controls import DEFAULTS, effective

    own = technique.controls()
    names = {ctrl.name for ctrl in own}
    card = {"architecture": "vgg13", "dataset": "digits", "name": "vgg13-digits", "path": None, "batchnorm": True}
    before = (PruneConfig(sparsity=0.5),)
    built = refused = 0
    for values in itertools.product(*(_values(ctrl) for ctrl in own)):
        c = effective({**DEFAULTS, **dict(zip([ctrl.name for ctrl in own], values, strict=True))}, card)
        try:
            cfg = technique.from_controls(c, card, before)
        except ValueError:
            refused += 1  # a combination the config refuses, repeating the value (tested with build)
            continue
        switch = next(ctrl for ctrl in own if ctrl.off is not None)
        assert (cfg is None) == (c[switch.name] == switch.off)
        if cfg is None:
            continue
        said = cfg.to_controls()
        assert said is not None and set(said) <= names
        again = technique.from_controls(effective({**c, **said}, card), card, before)
        assert again == cfg, f"{c} -> {cfg} -> {said} -> {again}"
        built += 1
    assert built > refused


def test_the_registry_refuses_a_technique_that_does_not_describe_itself():
    @dataclasses.dataclass(frozen=True)
    class Mute(StepConfig):
        kind: ClassVar[str] = "mute"

        def words(self) -> str:
            return "nothing"

    with pytest.raises(TypeError, match=r"'mute' \(Mute\) does not describe itself: it lacks controls\(\), "
                                        r"from_controls\(\), to_controls\(\)"):
        register_step(Mute)
    assert "mute" not in step_types()
