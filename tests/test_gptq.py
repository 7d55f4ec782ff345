"""GPTQ (explorer.compress.gptq): the lazy-batch Cholesky form equals the paper's Optimal Brain Surgeon updates written
out in numpy, it never does worse than round-to-nearest on the inputs it was fitted to, and the unfolded convolution
is the convolution."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.compress import gptq, qmath


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
        s, z = qmath.group_qparams(t, bits, symmetric, group)
        return qmath.expand_groups(s, w.shape[1], group), qmath.expand_groups(z, w.shape[1], group)
    s, z, _ = qmath.weight_qparams(t, bits, symmetric, True)
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
