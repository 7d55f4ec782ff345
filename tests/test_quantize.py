import numpy as np
import pytest
import torch

from explorer.compress import qmath
from explorer.compress.base import Context
from explorer.compress.quantize import QuantizeConfig, apply
from explorer.core.train import evaluate
from explorer.core.zoo import create_model
from explorer.models.baselines import baseline_data, load_baseline


@pytest.fixture(scope="module")
def baseline():
    model, card = load_baseline("models/digits_cnn-digits.safetensors")
    return model, baseline_data(card)


def _np_qparams(lo, hi, bits, symmetric):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return max(hi, -lo) / qmax, 0.0
    s = (hi - lo) / (2 ** bits - 1)
    return s, float(np.clip(np.round(-lo / s), 0, 2 ** bits - 1))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_qparams_match_the_seed_formulas(bits, symmetric):
    rng = np.random.default_rng(bits)
    x = rng.normal(0.2, 1.0, 1000).astype(np.float32)
    s, z = qmath.qparams(torch.tensor([x.min()]), torch.tensor([x.max()]), bits, symmetric)
    rs, rz = _np_qparams(float(x.min()), float(x.max()), bits, symmetric)
    assert s.item() == pytest.approx(rs, rel=1e-6) and z.item() == rz


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric,per_channel", [(True, True), (False, True), (True, False), (False, False)])
def test_kbit_error_at_most_half_a_step_and_at_most_2k_values_per_channel(bits, symmetric, per_channel):
    torch.manual_seed(bits)
    w = torch.randn(8, 3, 3, 3) * torch.linspace(0.1, 2, 8)[:, None, None, None]
    scale, zp, axis = qmath.weight_qparams(w, bits, symmetric, per_channel)
    q = qmath.quantize(w, scale, zp, bits, symmetric, axis)
    deq = qmath.dequantize(q, scale, zp, axis)
    qmin, qmax = qmath.qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax
    s = scale.reshape(-1, 1, 1, 1) if axis == 0 else scale
    lo = (qmin - zp.reshape(-1, 1, 1, 1) if axis == 0 else qmin - zp) * s
    hi = (qmax - zp.reshape(-1, 1, 1, 1) if axis == 0 else qmax - zp) * s
    inside = (w >= lo) & (w <= hi)
    err = (w - deq).abs()
    assert inside.float().mean() > 0.9
    assert (err[inside] <= (s.expand_as(w)[inside] / 2) * (1 + 1e-5)).all()
    for c in range(w.shape[0]):
        assert torch.unique(deq[c]).numel() <= 2 ** bits


def test_zero_stays_exactly_zero():
    w = torch.tensor([[0.0, 0.3, -1.2, 0.0, 2.5]])
    for symmetric in (True, False):
        s, z, axis = qmath.weight_qparams(w, 3, symmetric, True)
        deq = qmath.dequantize(qmath.quantize(w, s, z, 3, symmetric, axis), s, z, axis)
        assert deq[0, 0] == 0 and deq[0, 3] == 0


def test_fake_quantize_passes_gradient_straight_through():
    x = torch.randn(20, requires_grad=True)
    s, z = qmath.qparams(x.detach().min().reshape(1), x.detach().max().reshape(1), 4, False)
    qmath.fake_quantize(x, s, z, 4, False).sum().backward()
    assert torch.equal(x.grad, torch.ones(20))


def test_calibration_methods_order():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(200_000))
    x[:20] = 50.0  # outliers
    mm = qmath.calibrated_range(x, "minmax")
    pc = qmath.calibrated_range(x, "percentile", 99.9)
    en = qmath.calibrated_range(x, "entropy", bits=8)
    assert mm == (0.0, 50.0)
    assert pc[1] < 10 and en[1] < 50 and en[1] > 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ptq_model_weights_sit_on_the_recorded_grid(baseline, bits):
    model, data = baseline
    r = apply(model, QuantizeConfig(bits=bits), Context(data=data))
    for name, rec in r.state.quant.items():
        w = r.model.get_parameter(name).detach()
        q = qmath.quantize(w, rec.scale, rec.zero_point, rec.bits, rec.symmetric, rec.axis)
        assert torch.equal(qmath.dequantize(q, rec.scale, rec.zero_point, rec.axis), w)
        for c in range(w.shape[0]):
            assert torch.unique(w[c]).numel() <= 2 ** bits


def test_fp16_and_bf16_values_are_representable(baseline):
    model, data = baseline
    for mode, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        r = apply(model, QuantizeConfig(mode=mode, bits=16), Context(data=data))
        for k, t in r.model.state_dict().items():
            if t.is_floating_point():
                assert torch.equal(t.to(dtype).float(), t), k
        assert evaluate(r.model, data.test)["top1"] >= evaluate(model, data.test)["top1"] - 0.5


def test_static_int8_calibrates_activations_and_records_the_runtime_path(baseline):
    model, data = baseline
    r = apply(model, QuantizeConfig(mode="static", calibration="percentile", calibration_samples=128),
              Context(data=data))
    spec = r.state.activations
    assert spec["bits"] == 8 and not spec["dynamic"] and spec["samples"] == 128
    assert set(spec["ranges"]) == {"features.0", "features.2", "features.5", "classifier.1", "classifier.4"}
    assert r.state.deploy["mode"] == "static"
    assert evaluate(r.model, data.test)["top1"] >= evaluate(model, data.test)["top1"] - 1.0


def test_activation_quantisation_changes_outputs_and_survives_deepcopy(baseline):
    import copy

    model, data = baseline
    w_only = apply(model, QuantizeConfig(bits=4), Context(data=data)).model
    wa = apply(model, QuantizeConfig(bits=4, activation_bits=4), Context(data=data)).model
    x = data.test.x[:16]
    assert not torch.equal(w_only(x), wa(x))
    assert torch.equal(copy.deepcopy(wa)(x), wa(x))


def test_qat_beats_ptq_at_two_bits(baseline):
    model, data = baseline
    ptq = apply(model, QuantizeConfig(bits=2), Context(data=data)).model
    qat = apply(model, QuantizeConfig(mode="qat", bits=2, finetune_epochs=3, lr=1e-3), Context(data=data)).model
    assert evaluate(qat, data.test)["top1"] > evaluate(ptq, data.test)["top1"] + 10


def test_qat_activation_ranges_are_calibrated_on_the_deployed_weights(baseline):
    # after QAT the activation ranges are measured again; they must describe the model as deployed,
    # weights on the grid, not the float weights training kept
    import copy

    from explorer.compress.quantize import _layer_names, calibrate, remove_activation_quant

    model, data = baseline
    cfg = QuantizeConfig(mode="qat", bits=2, activation_bits=2, finetune_epochs=1, lr=1e-3, learn_ranges=False)
    r = apply(model, cfg, Context(data=data))
    deployed = remove_activation_quant(copy.deepcopy(r.model))
    layers, _ = _layer_names(deployed, cfg)
    expected = calibrate(deployed, layers, data.calibration(cfg.calibration_samples, seed=0), cfg)["ranges"]
    assert r.state.activations["ranges"] == expected


def test_learned_activation_quantiser_is_the_deployed_one_and_learns():
    from explorer.compress.quantize import _LearnedActQuant

    x = torch.randn(4096) * 3
    for bits, (lo, hi) in ((2, (-1.3, 4.2)), (4, (0.0, 6.0)), (8, (-0.2, 0.1))):
        q = _LearnedActQuant(lo, hi, bits)
        scale, zp = qmath.qparams(torch.tensor([lo]), torch.tensor([hi]), bits, symmetric=False)
        torch.testing.assert_close(q(x), qmath.fake_quantize(x, scale, zp, bits, symmetric=False), rtol=0, atol=1e-5)
        assert q.range() == pytest.approx([lo, hi])
        q(x).pow(2).sum().backward()  # a loss that wants a narrower range reaches both bounds' parameters
        assert q.v.grad is not None and q.v.grad != 0 and (lo == 0 or q.u.grad != 0)


def test_qat_learns_activation_ranges_and_deploys_them(baseline):
    import copy

    from explorer.compress.quantize import _layer_names, attach_activation_quant, calibrate, remove_activation_quant

    model, data = baseline
    # 5 epochs: with 3 the cosine schedule leaves the ranges too little time (learned and fixed tie at 2/2)
    cfg = QuantizeConfig(mode="qat", bits=2, activation_bits=2, finetune_epochs=5, lr=1e-3)
    learned = apply(model, cfg, Context(data=data))
    spec = learned.state.activations
    layers, _ = _layer_names(model, cfg)
    start = calibrate(model, layers, data.calibration(cfg.calibration_samples, seed=0), cfg)["ranges"]
    assert spec["method"].startswith("learned") and spec["ranges"].keys() == start.keys()
    moved = [abs(spec["ranges"][n][1] / start[n][1] - 1) for n in layers]
    assert max(moved) > 0.05, f"the ranges hardly moved from calibration: {moved}"
    # nothing of the training machinery is left on the model: same tensors as the input, fixed hooks only
    assert learned.model.state_dict().keys() == model.state_dict().keys()
    assert not any(hasattr(m, "explorer_act_quant") for m in learned.model.modules())
    # the model as deployed (weights on the grid, the learned ranges as fixed quantisers) is this model
    rebuilt = attach_activation_quant(remove_activation_quant(copy.deepcopy(learned.model)), spec)
    torch.testing.assert_close(rebuilt(data.test.x), learned.model(data.test.x))
    fixed = apply(model, QuantizeConfig(**{**cfg.__dict__, "learn_ranges": False}), Context(data=data))
    assert evaluate(learned.model, data.test)["top1"] > evaluate(fixed.model, data.test)["top1"]


def test_mixed_precision_fits_the_budget(baseline):
    model, data = baseline
    r = apply(model, QuantizeConfig(mode="mixed", bits=8, budget_bits=4.0), Context(data=data))
    bits = r.state.info["quantize"][-1]["layer_bits"]
    sizes = {k: model.get_parameter(k).numel() for k in bits}
    avg = sum(bits[k] * sizes[k] for k in bits) / sum(sizes.values())
    assert avg <= 4.0 and len(set(bits.values())) > 1
    assert all(r.state.quant[k].bits == b for k, b in bits.items())


def test_apply_never_changes_its_input(baseline):
    model, data = baseline
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for cfg in (QuantizeConfig(bits=3), QuantizeConfig(mode="fp16", bits=16),
                QuantizeConfig(mode="qat", bits=4, finetune_epochs=1)):
        apply(model, cfg, Context(data=data))
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match=r"bits=0 must be an integer in \[2, 8\]"):
        QuantizeConfig(bits=0)
    with pytest.raises(ValueError, match=r"bits=9 must be an integer in \[2, 8\]"):
        QuantizeConfig(bits=9)
    with pytest.raises(ValueError, match=r"bits=4 must be 8 for mode 'static'"):
        QuantizeConfig(mode="static", bits=4)
    with pytest.raises(ValueError, match=r"mode='int4' must be one of"):
        QuantizeConfig(mode="int4")
    with pytest.raises(ValueError, match=r"calibration='mse' must be one of: minmax, percentile, entropy"):
        QuantizeConfig(calibration="mse")
    with pytest.raises(ValueError, match="needs a dataset"):
        apply(create_model("digits_cnn"), QuantizeConfig(bits=8, activation_bits=8), Context())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_full_grid_uses_the_negative_end_and_clips_nothing(bits):
    """Symmetric weights on the full grid: s = max(max / (2^(b-1) - 1), -min / 2^(b-1)), so a channel whose largest
    weight is negative reaches the code -2^(b-1) and gets a finer step than on the restricted grid, and no weight is
    clipped; the restricted grid never uses that code."""
    w = torch.tensor([[-1.0, 0.2, 0.3, 0.1], [-0.3, 0.1, 0.9, 0.0]])
    qmin, qmax = qmath.qrange(bits, True)
    s, z, axis = qmath.weight_qparams(w, bits, True, True, grid="full")
    assert s.tolist() == pytest.approx([1.0 / -qmin, 0.9 / qmax]) and not z.any()
    q = qmath.quantize(w, s, z, bits, True, axis)
    assert q[0, 0] == qmin and q[1, 2] == qmax  # both ends in use, neither clipped
    assert (qmath.dequantize(q, s, z, axis) - w).abs().max() <= s.max() / 2 + 1e-6
    r, _, _ = qmath.weight_qparams(w, bits, True, True)
    assert r.tolist() == pytest.approx([1.0 / qmax, 0.9 / qmax])
    assert qmath.quantize(w, r, z, bits, True, axis).min() == -qmax


def test_the_grid_is_the_modes_own_unless_asked_and_a_changed_default_gets_a_new_revision():
    assert QuantizeConfig(bits=4).weight_grid == "closest" and QuantizeConfig(bits=4).revision() == 3
    assert QuantizeConfig(bits=4, grid="restricted").revision() == 1
    assert QuantizeConfig(bits=4, grid="full").revision() == 2
    assert QuantizeConfig(bits=4, grid="closest").canonical() == QuantizeConfig(bits=4)
    gptq = QuantizeConfig(bits=4, rounding="gptq", calibration_samples=1024)
    assert gptq.weight_grid == "full" and QuantizeConfig(bits=4, rounding="gptq", calibration_samples=1024,
                                                          grid="full").canonical() == gptq
    static = QuantizeConfig(bits=8, mode="static")
    assert static.weight_grid == "restricted" and static.revision() == 1 and "grid" not in static.to_dict()
    assert QuantizeConfig(bits=8, mode="static", grid="restricted").canonical() == static
    assert QuantizeConfig(bits=4, symmetric=False).weight_grid == "" and QuantizeConfig(bits=4, symmetric=False
                                                                                         ).revision() == 1
    assert QuantizeConfig(mode="fp16", bits=16).revision() == 1
    assert "all 16 codes" in QuantizeConfig(bits=4, grid="full").words()
    assert "whichever rounds it closer" in QuantizeConfig(bits=4).words()
    assert "15 of 16 codes" in QuantizeConfig(bits=4, grid="restricted").words()
    with pytest.raises(ValueError, match=r"^grid='full' must be 'restricted' or 'auto' for mode 'static'"):
        QuantizeConfig(bits=8, mode="static", grid="full")
    with pytest.raises(ValueError, match=r"^grid='restricted' must be 'auto': asymmetric"):
        QuantizeConfig(bits=4, symmetric=False, grid="restricted")
    with pytest.raises(ValueError, match=r"^grid='wide' must be one of: auto, full, restricted, closest"):
        QuantizeConfig(bits=4, grid="wide")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_full_grid_codes_pack_and_export(baseline, bits, tmp_path):
    from explorer.artifact.pack import pack, unpack
    from explorer.measure.onnx_export import export_onnx, onnx_accuracy

    model, data = baseline
    out = apply(model, QuantizeConfig(bits=bits), Context(data=data))
    qmin = qmath.qrange(bits, True)[0]
    used = [qmath.quantize(out.model.get_parameter(n).detach(), r.scale, r.zero_point, bits, True, r.axis).min()
            for n, r in out.state.quant.items()]
    assert min(used) == qmin  # the code the restricted grid never used is in the file
    again = unpack(pack(out.model, out.state, {"name": "digits_cnn", "kwargs": {}})).model
    assert all(torch.equal(again.state_dict()[k], v) for k, v in out.model.state_dict().items())
    export_onnx(again, data.input_shape, tmp_path / "m.onnx")
    assert onnx_accuracy(tmp_path / "m.onnx", data.test.x.numpy(), data.test.y.numpy())["top1"] == \
        evaluate(again, data.test)["top1"]


def test_the_closest_grid_takes_for_each_channel_the_grid_that_rounds_it_closer():
    """A channel of nine weights (a first convolution's) can round worse on the finer full grid: ResNet-8's 4-bit
    weights lost 4 points there. 'closest' compares the two grids' squared errors channel by channel."""
    torch.manual_seed(0)
    w = torch.randn(64, 9)
    w[::2, 0] = -w[::2].abs().max(1).values * 1.01  # half the channels' largest weight negative: the grids differ
    for bits in (2, 3, 4):
        qmin, qmax = qmath.qrange(bits, True)
        err = {}
        for grid in ("restricted", "full", "closest"):
            s, z, axis = qmath.weight_qparams(w, bits, True, True, grid)
            err[grid] = ((qmath.dequantize(qmath.quantize(w, s, z, bits, True, axis), s, z, axis) - w) ** 2).sum(1)
        assert torch.equal(err["closest"], torch.minimum(err["restricted"], err["full"]))
        assert (err["full"] < err["restricted"]).any() and (err["full"] > err["restricted"]).any()
