"""Weight-only group-wise quantisation of Linear layers (QuantizeConfig.group_size): the dequantised weights match
a numpy reference, and the packed file holds two 4-bit codes per byte and gives back the same weights."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from explorer.artifact import bitpack
from explorer.artifact.codecs import decode_values
from explorer.artifact.pack import pack, tensor_report, unpack
from explorer.compress.base import Context, config_from_dict
from explorer.compress.quantize import QuantizeConfig, apply
from explorer.core.data import load_dataset
from explorer.core.zoo import create_model


def numpy_groupwise(w: np.ndarray, bits: int, symmetric: bool, group: int, grid: str = "full") -> np.ndarray:
    """The textbook formulas, one group at a time: the range widened to include 0; symmetric s = max|x| / (2^(b-1)
    - 1) on the restricted grid, max(max / (2^(b-1) - 1), -min / 2^(b-1)) on the full one, q in [-2^(b-1),
    2^(b-1) - 1], or on "closest" whichever of the two gives the group the smaller squared error (the restricted one
    on a tie); asymmetric s = (max - min) / (2^b - 1), z = round(-min / s); round half to even (numpy's round, as
    torch's)."""
    out = np.empty_like(w, dtype=np.float64)
    for r in range(w.shape[0]):
        for start in range(0, w.shape[1], group):
            x = w[r, start:start + group].astype(np.float64)
            lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                rounded = {}
                for name, s in (("restricted", max(hi, -lo) / qmax), ("full", max(hi / qmax, -lo / (qmax + 1)))):
                    rounded[name] = np.clip(np.round(x / s), -2 ** (bits - 1), 2 ** (bits - 1) - 1) * s
                if grid == "closest":
                    err = {k: ((v - x) ** 2).sum() for k, v in rounded.items()}
                    grid_here = "full" if err["full"] < err["restricted"] else "restricted"
                else:
                    grid_here = grid
                out[r, start:start + group] = rounded[grid_here]
            else:
                s = (hi - lo) / (2 ** bits - 1)
                z = np.clip(np.round(-lo / s), 0, 2 ** bits - 1)
                q = np.clip(np.round(x / s) + z, 0, 2 ** bits - 1)
                out[r, start:start + group] = (q - z) * s
    return out


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 6 * 6, 70)  # 144 inputs: not a multiple of 64 or 128 (a shorter last group)
        self.fc2 = nn.Linear(70, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _quantised(bits, group, symmetric=True, grid="auto"):
    torch.manual_seed(0)
    model = TwoLinear()
    cfg = QuantizeConfig(bits=bits, group_size=group, symmetric=symmetric, grid=grid)
    return model, apply(model, cfg, Context())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric,grid", [(True, "auto"), (True, "full"), (True, "restricted"), (False, "auto")])
def test_dequantised_weights_match_numpy(bits, group, symmetric, grid):
    model, out = _quantised(bits, group, symmetric, grid)
    for name in ("fc1", "fc2"):
        w0 = getattr(model, name).weight.detach().numpy()
        got = getattr(out.model, name).weight.detach().numpy()
        ref = numpy_groupwise(w0, bits, symmetric, group, "closest" if grid == "auto" else grid)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
        rec = out.state.quant[f"{name}.weight"]
        assert rec.group_size == group and tuple(rec.scale.shape) == (w0.shape[0], math.ceil(w0.shape[1] / group))
    # the convolution keeps one scale per output channel
    assert out.state.quant["conv.weight"].group_size == 0 and out.state.quant["conv.weight"].scale.numel() == 4


def test_int4_codes_are_two_per_byte_low_nibble_first():
    codes = np.random.default_rng(0).integers(0, 16, size=1001).astype(np.uint64)
    packed = bitpack.pack_bits(codes, 4)
    padded = np.append(codes, 0).astype(np.uint8)
    assert packed == (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8).tobytes()
    assert np.array_equal(bitpack.unpack_bits(packed, 4, 1001), codes)


def test_packed_groupwise_int4_round_trips_at_half_a_byte_per_weight():
    _, out = _quantised(4, 32)
    from explorer.artifact import pack as packmod  # one tensor's section (the model is not in the zoo)

    entry, data = packmod._encode_tensor("fc1.weight", out.model.fc1.weight.detach(), out.state, "none")
    enc = entry["encoding"]
    assert (enc["kind"], enc["bits"], enc["group"], entry["layout"]["kind"]) == ("int4", 4, 32, "dense")
    groups = 70 * math.ceil(144 / 32)
    assert enc["channels"] == groups and len(data) == 8 * groups + 70 * 144 // 2  # scale+zp per group, nibbles
    back = packmod._decode_section(entry, data, torch.float32)
    assert torch.equal(back, out.model.fc1.weight.detach())


def test_a_zoo_model_quantised_group_wise_packs_and_unpacks_bit_exactly():
    torch.manual_seed(0)
    model = create_model("digits_cnn").eval()
    out = apply(model, QuantizeConfig(bits=4, group_size=32), Context(data=load_dataset("digits")))
    arch = {"name": "digits_cnn", "kwargs": {}}
    blob = pack(out.model, out.state, arch)
    again = unpack(blob).model
    for k, v in out.model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    rows = {r["name"]: r for r in tensor_report(blob)}
    linear = [n for n, m in out.model.named_modules() if isinstance(m, nn.Linear)]
    assert all(rows[f"{n}.weight"]["encoding"] == "int4" for n in linear)


def test_a_group_count_that_does_not_fit_the_shape_is_refused():
    p = {"kind": "int4", "bits": 4, "symmetric": True, "axis": 0, "channels": 3, "group": 32}
    side = np.ones(6, dtype="<f4").tobytes()
    with pytest.raises(ValueError, match="3 scales for groups of 32 of shape"):
        decode_values(p, side, np.zeros(70 * 144, dtype=np.uint64), [70, 144], torch.float32)


def test_group_size_is_weights_only_post_training_and_left_out_of_json_while_off():
    with pytest.raises(ValueError, match="group_size=48"):
        QuantizeConfig(bits=4, group_size=48)
    with pytest.raises(ValueError, match="group_size=32.*mode 'static'"):
        QuantizeConfig(bits=8, mode="static", group_size=32)
    with pytest.raises(ValueError, match="group_size=32.*activation_bits 8"):
        QuantizeConfig(bits=4, activation_bits=8, group_size=32)
    assert "group_size" not in QuantizeConfig(bits=4).to_dict()
    cfg = QuantizeConfig(bits=4, group_size=128)
    assert config_from_dict(cfg.to_dict()) == cfg and cfg.label() == "W4 ptq groups of 128"
