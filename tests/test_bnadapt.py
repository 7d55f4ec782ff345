import pytest
import torch
from torch import nn

from explorer.compress import compress
from explorer.compress.base import Context, config_from_dict
from explorer.compress.bnadapt import BNAdaptConfig, apply
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.models.baselines import baseline_data, load_baseline
from explorer.run import runner


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, 16), nn.Dropout(0.5), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


class _Data:  # what apply needs of a DataBundle: training images to draw from
    def __init__(self, x):
        self.train = type("Split", (), {"x": x, "__len__": lambda s: len(x)})()

    def calibration(self, n, seed=0):
        return self.train.x[torch.randperm(len(self.train.x), generator=torch.Generator().manual_seed(seed))[:n]]


def test_statistics_are_the_exact_moments_of_each_layers_inputs_at_inference():
    model, x = _net(), torch.randn(300, 1, 8, 8) * 2 + 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = apply(model, BNAdaptConfig(samples=300, batch_size=300), Context(data=_Data(x))).model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is untouched
    seen = {}
    for name, m in out.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(lambda mod, args, _n=name: seen.__setitem__(_n, args[0].detach()))
    out.eval()(x)  # one batch of everything: what each layer sees now at inference, dropout off
    for name, inputs in seen.items():
        bn = out.get_submodule(name)
        dims = [0, 2, 3] if inputs.dim() == 4 else [0]
        torch.testing.assert_close(bn.running_mean, inputs.mean(dims), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, inputs.var(dims, unbiased=True), rtol=1e-4, atol=1e-5)
        assert bn.momentum == 0.1 and not bn.training
    # nothing but BatchNorm buffers changed
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.split(".")[0] in ("1", "6") and "running" in k or "num_batches" in k for k in changed)


def test_a_model_without_batchnorm_is_left_as_it_is():
    model, card = load_baseline("models/digits_cnn-digits.safetensors")
    r = apply(model, BNAdaptConfig(), Context(data=baseline_data(card)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in r.model.state_dict().items())
    assert any("no BatchNorm" in n for n in r.state.notes)


@pytest.mark.slow  # about 25-60 s on two cores: run by `make test-all`
def test_adaptation_rescues_one_shot_two_four_sparsity_on_vgg13(tmp_path):
    """Without fine-tuning, 2:4 sparsity leaves vgg13's BatchNorm statistics stale and the net at chance;
    re-measured, it is back within two points, measured on the model rebuilt from the packed file."""
    prune = PruneConfig(granularity="nm", sparsity=0.5, layers="inner")
    plain = runner.prepare(Recipe(model="vgg13", steps=(prune,)), tmp_path / "plain")
    adapted = runner.prepare(Recipe(model="vgg13", steps=(prune, BNAdaptConfig())), tmp_path / "adapted")
    assert plain["accuracy"]["top1"] < 50
    assert adapted["accuracy"]["top1"] > adapted["baseline_accuracy"]["top1"] - 2
    assert adapted["sparsity"] == pytest.approx(plain["sparsity"])  # the masks held
    assert adapted["compression"]["bn_adapt"][0]["layers"] > 0 and adapted["label"] == "prune 50% nm -> BN adapt"


def test_order_and_invalid_configs_are_refused():
    with pytest.raises(ValueError, match=r"step 2 \(bn_adapt\) must come before the quantize steps"):
        Recipe(model="vgg13", steps=(QuantizeConfig(bits=4), BNAdaptConfig()))
    Recipe(model="vgg13", steps=(PruneConfig(), BNAdaptConfig(), QuantizeConfig(bits=4)))
    with pytest.raises(ValueError, match="bn_adapt must come before the quantize steps"):
        model, card = load_baseline("models/vgg13-digits.safetensors")
        compress(model, [QuantizeConfig(mode="fp16", bits=16), BNAdaptConfig()], baseline_data(card))
    with pytest.raises(ValueError, match=r"samples=0 must be an integer in \[16, 1000000\]"):
        BNAdaptConfig(samples=0)
    with pytest.raises(ValueError, match="batch_size=1 must be"):
        BNAdaptConfig(batch_size=1)
    assert config_from_dict({"kind": "bn_adapt", "samples": 512}) == BNAdaptConfig(samples=512)
