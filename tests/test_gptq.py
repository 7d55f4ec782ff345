"""GPTQ (explorer.compress.gptq): the lazy-batch Cholesky form equals the paper's Optimal Brain Surgeon updates written
out in numpy, it never does worse than round-to-nearest on the inputs it was fitted to, the unfolded convolution is
the convolution, and a model rounded by GPTQ packs, unpacks and exports like one rounded to nearest."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.artifact.pack import pack, unpack
from explorer.compress import compress, gptq, qmath
from explorer.compress.base import Context
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig, apply
from explorer.core.data import load_dataset
from explorer.core.train import evaluate
from explorer.core.zoo import create_model


def numpy_obs(w, h, scale, zero, qmin, qmax, damp, act_order, keep=None):
    """GPTQ as the paper states it (its equations 2 and 3, after Optimal Brain Surgeon), with none of the
    implementation's tricks: the full inverse Hessian, updated by Gaussian elimination after each column, and every
    remaining weight of every row moved by each column's error. float64 throughout."""
    W = w.astype(np.float64).copy()
    H = h.astype(np.float64).copy()
    rows, cols = W.shape
    S, Z = np.broadcast_to(scale, W.shape).astype(np.float64), np.broadcast_to(zero, W.shape).astype(np.float64)
    K = np.ones(W.shape, bool) if keep is None else np.broadcast_to(keep, W.shape)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    H += damp * np.mean(np.diag(H)) * np.eye(cols)
    Hinv = np.linalg.inv(H)
    codes = np.zeros(W.shape, np.int64)
    for j in order:
        q = np.clip(np.round(W[:, j] / S[:, j]) + Z[:, j], qmin, qmax)
        q = np.where(K[:, j], q, Z[:, j])
        codes[:, j] = q
        err = (W[:, j] - (q - Z[:, j]) * S[:, j]) / Hinv[j, j]
        W -= np.outer(err, Hinv[j])  # Hinv's rows of columns already rounded are zero: they stay as rounded
        Hinv -= np.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
    return codes


def _problem(rows=12, cols=40, n=300, seed=0):
    rng = np.random.default_rng(seed)
    # correlated inputs with unequal energy, as a layer's inputs are (the case where compensation pays)
    x = rng.normal(size=(cols, n)) * rng.uniform(0.2, 3.0, size=(cols, 1))
    x[1:] += 0.6 * x[:-1]
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    return w, 2.0 / n * x @ x.T, x


def _grid(w, bits, symmetric, group=0):
    t = torch.from_numpy(w)
    if group:
        s, z = qmath.group_qparams(t, bits, symmetric, group, grid="full")
        return qmath.expand_groups(s, w.shape[1], group), qmath.expand_groups(z, w.shape[1], group)
    s, z, _ = qmath.weight_qparams(t, bits, symmetric, True, grid="full")
    return s.reshape(-1, 1), z.reshape(-1, 1)


@pytest.mark.parametrize("bits,symmetric,group", [(2, True, 0), (3, True, 0), (4, False, 0), (3, True, 16),
                                                  (8, True, 0), (4, False, 8)])
@pytest.mark.parametrize("act_order", [True, False])
def test_lazy_batch_cholesky_gptq_equals_the_numpy_obs_updates(bits, symmetric, group, act_order):
    w, h, _ = _problem(seed=bits)
    s, z = _grid(w, bits, symmetric, group)
    qmin, qmax = qmath.qrange(bits, symmetric)
    ref = numpy_obs(w, h, s.numpy(), z.numpy(), qmin, qmax, 0.01, act_order)
    # blocks of 8 columns: 40 columns take five lazy batches, so the across-block update is exercised
    got = gptq.gptq_codes(torch.from_numpy(w), torch.from_numpy(h), s, z, qmin, qmax, damp=0.01,
                          act_order=act_order, block=8)
    assert np.array_equal(got.numpy(), ref)
    assert got.min() >= qmin and got.max() <= qmax
    near = torch.clamp(torch.round(torch.from_numpy(w) / s) + z, qmin, qmax).to(torch.int64)
    assert not torch.equal(got, near), "GPTQ moved no weight off round-to-nearest"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_output_error_on_the_calibration_inputs_is_at_most_round_to_nearests(bits):
    w, h, x = _problem(rows=32, cols=64, n=500, seed=10 + bits)
    s, z = _grid(w, bits, True)
    qmin, qmax = qmath.qrange(bits, True)
    codes = gptq.gptq_codes(torch.from_numpy(w), torch.from_numpy(h), s, z, qmin, qmax)
    q = qmath.dequantize(codes, s, z, 0).numpy()
    near = qmath.dequantize(qmath.quantize(torch.from_numpy(w), s, z, bits, True, 0), s, z, 0).numpy()
    ours, theirs = np.linalg.norm(w @ x - q @ x), np.linalg.norm(w @ x - near @ x)
    assert ours <= theirs
    if bits <= 4:
        assert ours < 0.8 * theirs, (ours, theirs)
    # output_error is the same quantity through H = 2/n X X^T
    n = x.shape[1]
    assert gptq.output_error(torch.from_numpy(w), torch.from_numpy(q), torch.from_numpy(h)) == \
        pytest.approx(ours ** 2 * 2 / n, rel=1e-6)


def test_pruned_weights_stay_zero_and_dead_inputs_round_to_nearest():
    w, h, _ = _problem(seed=3)
    h[5, :] = h[:, 5] = 0.0  # input 5 was zero on every calibration image
    keep = np.random.default_rng(1).random(w.shape) > 0.5
    s, z = _grid(w, 3, True)
    ref = numpy_obs(w, h, s.numpy(), z.numpy(), -4, 3, 0.01, True, keep)
    got = gptq.gptq_codes(torch.from_numpy(w), torch.from_numpy(h), s, z, -4, 3, keep=torch.from_numpy(keep), block=16)
    assert np.array_equal(got.numpy(), ref)
    assert (got.numpy()[~keep] == 0).all()
    near = qmath.quantize(torch.from_numpy(w), s, z, 3, True, 0).numpy()
    col = keep[:, 5]
    assert np.array_equal(got.numpy()[col, 5], near[col, 5])


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
    nn.Conv2d(4, 8, (3, 2), groups=4, bias=False), nn.Conv2d(3, 5, 1)], ids=["plain", "grouped", "depthwise", "1x1"])
def test_the_unfolded_convolution_is_the_convolution(conv):
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, 9, 8)
    cols = gptq.layer_columns(conv, x)  # (groups, row inputs, samples)
    rows = gptq.weight_rows(conv)  # (groups, rows, row inputs)
    out = torch.bmm(rows, cols)  # (groups, rows, n * positions)
    ref = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    n, c, hh, ww = ref.shape
    g = conv.groups
    ref = ref.reshape(n, g, c // g, hh * ww).permute(1, 2, 0, 3).reshape(g, c // g, -1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_linear_layers_columns_are_its_tokens():
    lin = nn.Linear(6, 4)
    x = torch.randn(2, 5, 6)  # (batch, tokens, features), as a transformer's layers see it
    cols = gptq.layer_columns(lin, x)
    torch.testing.assert_close((gptq.weight_rows(lin)[0] @ cols[0]).t(), (x @ lin.weight.t()).reshape(-1, 4))


class Small(nn.Module):
    """A grouped and a depthwise convolution, then Linear layers: every layer kind GPTQ rounds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, padding=1)
        self.fc1 = nn.Linear(8 * 6 * 6, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.grouped(torch.relu(self.conv(x))))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_each_layer_is_rounded_from_the_inputs_of_the_layers_rounded_before_it(digits):
    torch.manual_seed(0)
    model = Small().eval()
    cfg = QuantizeConfig(bits=3, rounding="gptq", calibration_samples=512)
    out = apply(model, cfg, Context(data=digits))
    x = digits.calibration(512, seed=0)
    # replay by hand: each layer's Hessian from a model whose earlier layers hold the rounded weights
    replay = Small().eval()
    replay.load_state_dict(model.state_dict())
    for name in ("conv", "grouped", "depthwise", "fc1", "fc2"):
        layer = getattr(replay, name)
        h = gptq.layer_hessian(replay, layer, x)
        rows = gptq.weight_rows(layer)
        rec = out.state.quant[f"{name}.weight"]
        per, scale, zero = rows.shape[1], rec.scale.reshape(-1, 1), rec.zero_point.reshape(-1, 1)
        codes = torch.cat([gptq.gptq_codes(rows[g], h[g], scale[g * per:(g + 1) * per], zero[g * per:(g + 1) * per],
                                           -4, 3) for g in range(rows.shape[0])])
        want = qmath.dequantize(codes.reshape(layer.weight.shape), rec.scale, rec.zero_point, 0)
        assert torch.equal(getattr(out.model, name).weight, want), name
        with torch.no_grad():
            layer.weight.copy_(want)
    report = out.state.info["quantize"][-1]
    assert report["rounding"] == "gptq" and report["grid"] == "full" and report["gptq"]["seconds"] >= 0
    assert [r["layer"] for r in report["gptq"]["layers"]] == ["conv", "grouped", "depthwise", "fc1", "fc2"]
    assert all(r["output_error_vs_nearest"] <= 1.0 for r in report["gptq"]["layers"])


@pytest.mark.parametrize("group", [0, 32])
def test_a_gptq_model_packs_unpacks_and_exports_like_one_rounded_to_nearest(digits, group, tmp_path):
    from explorer.measure.onnx_export import export_onnx, onnx_accuracy

    torch.manual_seed(0)
    model = create_model("digits_cnn").eval()
    steps = [PruneConfig(sparsity=0.5), QuantizeConfig(bits=4, rounding="gptq", calibration_samples=512,
                                                       group_size=group)]
    out = compress(model, steps, digits)
    for name, mask in out.state.masks.items():  # pruned weights stay pruned
        assert (out.model.get_parameter(name)[~mask] == 0).all()
    again = unpack(pack(out.model, out.state, {"name": "digits_cnn", "kwargs": {}})).model
    for k, v in out.model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    export_onnx(again, digits.input_shape, tmp_path / "m.onnx")
    ours = evaluate(again, digits.test)
    theirs = onnx_accuracy(tmp_path / "m.onnx", digits.test.x.numpy(), digits.test.y.numpy())
    assert theirs["top1"] == ours["top1"]
    near = compress(model, [steps[0], QuantizeConfig(bits=4, group_size=group)], digits).model
    assert not torch.equal(near.state_dict()["classifier.1.weight"], out.model.state_dict()["classifier.1.weight"])


def test_w4a8_gptq_keeps_the_activation_path(digits):
    import copy

    from explorer.compress.quantize import attach_activation_quant, remove_activation_quant

    model = create_model("digits_cnn").eval()
    near = apply(model, QuantizeConfig(bits=4, activation_bits=8, calibration_samples=512), Context(data=digits))
    out = apply(model, QuantizeConfig(bits=4, activation_bits=8, rounding="gptq", calibration_samples=512),
                Context(data=digits))
    assert out.state.activations == near.state.activations  # ranges calibrated on the float model, as before
    rebuilt = attach_activation_quant(remove_activation_quant(copy.deepcopy(out.model)), out.state.activations)
    torch.testing.assert_close(rebuilt(digits.test.x), out.model(digits.test.x))


def test_gptq_is_refused_where_it_does_not_apply_and_stays_out_of_old_recipes():
    from explorer.compress.base import config_from_dict
    from explorer.compress.cluster import ClusterConfig
    from explorer.compress.recipe import Recipe

    for mode, bits in (("static", 8), ("dynamic", 8), ("fp16", 16), ("qat", 4), ("mixed", 8)):
        extra = {"finetune_epochs": 1} if mode == "qat" else {"budget_bits": 4.0} if mode == "mixed" else {}
        with pytest.raises(ValueError, match=rf"^rounding='gptq' must be 'nearest' for mode '{mode}'"):
            QuantizeConfig(mode=mode, bits=bits, rounding="gptq", calibration_samples=512, **extra)
    with pytest.raises(ValueError, match=r"^calibration_samples=256 must be at least 512 with rounding 'gptq'"):
        QuantizeConfig(bits=4, rounding="gptq")
    with pytest.raises(ValueError, match=r"^rounding='obq' must be one of: nearest, gptq"):
        QuantizeConfig(bits=4, rounding="obq")
    with pytest.raises(ValueError, match=r"^gptq_damp=0.1 must be 0.01 unless rounding is 'gptq'"):
        QuantizeConfig(bits=4, gptq_damp=0.1)
    with pytest.raises(ValueError, match=r"^gptq_damp=0 must be a number in"):
        QuantizeConfig(bits=4, rounding="gptq", calibration_samples=512, gptq_damp=0)
    with pytest.raises(ValueError, match="cannot follow clustering"):
        Recipe(model="digits_cnn", steps=(ClusterConfig(clusters=8),
                                          QuantizeConfig(bits=4, rounding="gptq", calibration_samples=512)))
    d = QuantizeConfig(bits=4).to_dict()
    assert not {"rounding", "gptq_damp", "act_order", "grid"} & set(d)
    cfg = QuantizeConfig(bits=3, rounding="gptq", calibration_samples=1024, act_order=False, gptq_damp=0.05)
    assert config_from_dict(cfg.to_dict()) == cfg and cfg.label() == "W3 ptq GPTQ"
    assert "error-compensating rounding (GPTQ)" in cfg.words() and cfg.to_controls() is None


def test_the_pages_rounding_control_builds_gptq_only_where_it_applies():
    from explorer.run.controls import DEFAULTS, effective

    card = {"architecture": "lenet5", "dataset": "fashion-mnist", "name": "lenet5-fashion-mnist", "path": None,
            "batchnorm": False}
    c = effective({**DEFAULTS, "bits": "3", "rounding": "gptq"}, card)
    cfg = QuantizeConfig.from_controls(c, card, ())
    assert cfg == QuantizeConfig(bits=3, rounding="gptq", calibration_samples=1024)
    assert cfg.to_controls()["rounding"] == "gptq"
    static = effective({**DEFAULTS, "bits": "8", "rounding": "gptq"}, card)  # 8 bits: static int8, no GPTQ
    assert static["rounding"] == "nearest" and QuantizeConfig.from_controls(static, card, ()).rounding == "nearest"
