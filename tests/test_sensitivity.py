import pytest
import torch

from explorer.app import service
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core.train import evaluate
from explorer.models.baselines import baseline_data, load_baseline


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    return tmp_path


def test_sensitivity_is_the_drop_with_one_layer_compressed(cache_env):
    res = service.run(Recipe(model="digits_cnn", steps=(QuantizeConfig(bits=2),)))
    assert service.sensitivity(res) is None  # not computed until asked
    sens = service.sensitivity(res, compute=True)
    assert set(sens) == {"features.0", "features.2", "features.5", "classifier.1", "classifier.4"}
    # reference: quantise one layer by hand from the packed run and measure it
    model, card = load_baseline("models/digits_cnn-digits.safetensors")
    data = baseline_data(card)
    from explorer.artifact import pack

    packed = pack.unpack(service.artifact(res["key"], "model.xpk")).model
    probe = load_baseline("models/digits_cnn-digits.safetensors")[0]
    with torch.no_grad():
        probe.classifier[1].weight.copy_(packed.classifier[1].weight)
    want = evaluate(model, data.test)["top1"] - evaluate(probe, data.test)["top1"]
    assert sens["classifier.1"] == pytest.approx(want, abs=1e-3)
    assert max(sens.values()) > 0  # 2-bit weights hurt somewhere
    assert service.sensitivity(res) == sens  # stored beside the cache


def test_sensitivity_blank_for_layers_whose_shape_changed(cache_env):
    res = service.run(Recipe(model="digits_cnn", steps=(PruneConfig(granularity="channel", sparsity=0.5),)))
    sens = service.sensitivity(res, compute=True)
    assert sens["features.0"] is None and sens["classifier.4"] is None
