"""The packed format: exact round trips for every encoding and layout, sizes, corruption, bit-level maths."""

import copy
import hashlib
import math
import os
import struct
import time

import numpy as np
import pytest
import torch

import explorer.artifact.pack as packing
from explorer.artifact import bitpack
from explorer.artifact.pack import MAGIC, PackError, pack, tensor_report, theoretical_bits, unpack
from explorer.compress import compress
from explorer.compress.base import CompressionState
from explorer.compress.cluster import ClusterConfig
from explorer.compress.lowrank import Factorized, LowRankConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig, remove_activation_quant
from explorer.core.zoo import create_model
from explorer.models.baselines import baseline_data, load_baseline

CKPT = "models/digits_cnn-digits.safetensors"

VARIANTS = {
    "prune50": [PruneConfig(sparsity=0.5)],
    "prune95": [PruneConfig(sparsity=0.95)],
    "int4": [QuantizeConfig(bits=4)],
    "int8_channel_sym": [QuantizeConfig(bits=8)],
    "int8_channel_asym": [QuantizeConfig(bits=8, symmetric=False)],
    "int8_tensor_sym": [QuantizeConfig(bits=8, per_channel=False)],
    "int8_tensor_asym": [QuantizeConfig(bits=8, per_channel=False, symmetric=False)],
    "cluster16": [ClusterConfig(clusters=16)],
    "prune50_cluster16": [PruneConfig(sparsity=0.5), ClusterConfig(clusters=16)],
    "fp16": [QuantizeConfig(mode="fp16", bits=16)],
    "channel50": [PruneConfig(granularity="channel", sparsity=0.5)],
    "lowrank": [LowRankConfig(rank_ratio=0.25, layers="all")],
    "act8": [QuantizeConfig(bits=8, activation_bits=8)],
    "prune90_int4": [PruneConfig(sparsity=0.9), QuantizeConfig(bits=4)],
}
# the value encoding every conv/linear weight must get in each variant (the state says so; data agrees)
WEIGHT_ENCODING = {"int4": "int4", "int8_channel_sym": "int8", "int8_channel_asym": "int8",
                   "int8_tensor_sym": "int8", "int8_tensor_asym": "int8", "cluster16": "codebook",
                   "prune50_cluster16": "codebook", "fp16": "fp16", "act8": "int8", "prune90_int4": "int4"}


@pytest.fixture(scope="module")
def env():
    model, card = load_baseline(CKPT)
    data = baseline_data(card)
    return {"model": model, "arch": {"name": card["architecture"], "kwargs": card["arch_kwargs"]},
            "x": data.test.x, "data": data, "cache": {}}


def variant(env, name):
    if name not in env["cache"]:
        env["cache"][name] = compress(env["model"], VARIANTS[name], env["data"])
    return env["cache"][name]


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def assert_same_bits(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(bits_of(sa[k]), bits_of(sb[k])), k


def roundtrip(env, model, state, **kw):
    blob = pack(model, state, env["arch"], **kw)
    out = unpack(blob)
    assert_same_bits(model, out.model)
    assert not out.model.training
    with torch.no_grad():
        assert torch.equal(out.model(env["x"]), model(env["x"]))
    return blob, out


def weight_rows(blob):
    return [r for r in tensor_report(blob) if r["name"].endswith("weight")]


# ---------------------------------------------------------------- round trips


def test_baseline_is_dense_raw_float32(env):
    blob, out = roundtrip(env, env["model"], CompressionState())
    rows = tensor_report(blob)
    assert {(r["encoding"], r["bits"], r["layout"]) for r in rows} == {("raw", 32, "dense")}
    assert out.header["format"] == "xpk" and out.header["version"] == packing.VERSION and out.header["structure"] == []
    hlen = struct.unpack_from("<I", blob, 6)[0]
    assert len(blob) == 4 + 2 + 4 + hlen + sum(r["bytes"] for r in rows) + 32  # every byte accounted for


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_round_trips_bit_exactly(env, name):
    res = variant(env, name)
    blob, _ = roundtrip(env, res.model, res.state)
    if name in WEIGHT_ENCODING:
        assert {r["encoding"] for r in weight_rows(blob)} == {WEIGHT_ENCODING[name]}
    if WEIGHT_ENCODING.get(name) == "int4":
        assert all(r["bits"] == 4 for r in weight_rows(blob))


def test_sparse_layouts_both_occur_and_beat_dense(env):
    layouts = {}
    for name in ("prune50", "prune95", "prune50_cluster16", "prune90_int4"):
        res = variant(env, name)
        for r in weight_rows(pack(res.model, res.state, env["arch"])):
            layouts.setdefault(r["layout"], []).append(r)
    assert "bitmask" in layouts and "csr" in layouts
    assert {r["index_bits"] for r in layouts["csr"]} <= set(bitpack.CSR_INDEX_BITS)
    for r in layouts["bitmask"] + layouts["csr"]:
        assert r["nonzero"] < r["numel"]
        if r["encoding"] == "raw":  # no side arrays: chosen only where storing the zeros would cost more
            assert r["raw_bytes"] < r["numel"] * 4


def test_entropy_modes(env):
    res = variant(env, "int4")
    auto = pack(res.model, res.state, env["arch"])
    plain, _ = roundtrip(env, res.model, res.state, entropy="none")
    forced, _ = roundtrip(env, res.model, res.state, entropy="zstd")
    assert "zstd" in {r["entropy"] for r in tensor_report(auto)}
    assert {r["entropy"] for r in tensor_report(plain)} == {"none"}
    assert {r["entropy"] for r in tensor_report(forced)} == {"zstd"}
    assert len(auto) < len(plain) and len(auto) <= len(forced)
    with pytest.raises(ValueError, match="entropy='lz4'"):
        pack(res.model, res.state, env["arch"], entropy="lz4")


@pytest.mark.parametrize("name", ["channel50", "lowrank"])
def test_reshaped_models_are_rebuilt(env, name):
    res = variant(env, name)
    _, out = roundtrip(env, res.model, res.state)
    base_shapes = {k: v.shape for k, v in env["model"].state_dict().items()}
    assert any(base_shapes.get(k) != v.shape for k, v in out.model.state_dict().items())
    assert out.header["structure"]
    if name == "lowrank":
        assert any(isinstance(m, Factorized) for m in out.model.modules())


def test_activation_quantisation_is_restored(env):
    res = variant(env, "act8")
    _, out = roundtrip(env, res.model, res.state)  # outputs equal the compressed model's
    assert out.header["activations"]["bits"] == 8
    with torch.no_grad():
        without = remove_activation_quant(out.model)(env["x"])
        assert not torch.equal(without, res.model(env["x"]))  # so the hooks are what made them equal


def test_off_grid_weights_fall_back_exactly(env):
    res = variant(env, "prune90_int4")
    model = copy.deepcopy(res.model)
    w = model.get_parameter("classifier.1.weight")
    with torch.no_grad():
        flat = w.view(-1)
        i = int(torch.nonzero(flat)[0])
        flat[i] = torch.nextafter(flat[i], torch.tensor(math.inf))  # one ulp off the grid
        flat[int(torch.nonzero(flat == 0)[0])] = -0.0  # a different bit pattern from the +0.0 every grid gives
    blob, _ = roundtrip(env, model, res.state)
    row = next(r for r in tensor_report(blob) if r["name"] == "classifier.1.weight")
    assert row["encoding"] != "int4"


def test_a_section_that_does_not_decode_exactly_is_replaced(env, monkeypatch):
    """The last line of defence: even if an encoding's own check were wrong, the serialised section is
    decoded and compared, and the next option (finally raw dense bits) is used."""
    res = variant(env, "prune90_int4")
    model = copy.deepcopy(res.model)
    with torch.no_grad():
        flat = model.get_parameter("classifier.1.weight").view(-1)
        i = int(torch.nonzero(flat)[0])
        flat[i] = torch.nextafter(flat[i], torch.tensor(math.inf))
    def optimistic(v, t, positions):  # claims every layout of every encoding is exact
        n, m, bits, side = t.numel(), len(positions), v.params["bits"], len(v.side)
        ib, entries = bitpack.best_csr(positions)
        return [(side + bitpack.nbytes(n, bits), {"kind": "dense"}),
                (side + (n + 7) // 8 + bitpack.nbytes(m, bits), {"kind": "bitmask"}),
                (side + bitpack.nbytes(entries, ib) + bitpack.nbytes(m, bits),
                 {"kind": "csr", "index_bits": ib, "entries": entries})]

    monkeypatch.setattr(packing, "_options", optimistic)
    blob, _ = roundtrip(env, model, res.state)
    assert next(r for r in tensor_report(blob) if r["name"] == "classifier.1.weight")["encoding"] != "int4"


def test_palette_without_state_and_narrow_integers():
    model = create_model("vgg13", num_classes=10, in_channels=1, image_size=8, width=0.0625)
    model.train()
    model(torch.randn(4, 1, 8, 8))  # moves running stats and num_batches_tracked off their defaults
    model.eval()
    with torch.no_grad():
        w = model.features[0].weight
        w.copy_(torch.tensor([-0.5, 0.25, 1.0])[torch.arange(w.numel()) % 3].reshape(w.shape))
    arch = {"name": "vgg13", "kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 8, "width": 0.0625}}
    blob = pack(model, CompressionState(), arch)
    out = unpack(blob)
    assert_same_bits(model, out.model)
    rows = {r["name"]: r for r in tensor_report(blob)}
    assert rows["features.0.weight"]["encoding"] == "palette" and rows["features.0.weight"]["bits"] == 2
    assert rows["features.1.num_batches_tracked"]["encoding"] == "offset"
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(out.model(x), model(x))


# ---------------------------------------------------------------- size


def test_90_sparse_4bit_is_under_12_percent_of_dense(env):
    res = variant(env, "prune90_int4")
    blob = pack(res.model, res.state, env["arch"])
    dense = pack(env["model"], CompressionState(), env["arch"])
    assert len(blob) < 0.12 * len(dense)
    assert len(blob) < 0.12 * os.path.getsize(CKPT)


def _csr_bits_by_hand(flat_nonzero: list[bool]) -> int:
    best = None
    for b in (2, 3, 4, 5, 6, 8):
        entries, gap = 0, 0
        for nz in flat_nonzero:
            gap += 1
            if nz:
                while gap > 2 ** b - 1:  # a filler covers 2^b - 1 positions
                    entries, gap = entries + 1, gap - (2 ** b - 1)
                entries, gap = entries + 1, 0
        best = entries * b if best is None else min(best, entries * b)
    return best


def test_theoretical_bits_match_a_hand_count(env):
    res = variant(env, "prune90_int4")
    theo = theoretical_bits(res.model, res.state)
    assert theo["kind"] == "theoretical"
    total = 0
    for name, t in res.model.state_dict().items():
        flat = (t != 0).reshape(-1).tolist()
        n, nnz = len(flat), sum(flat)
        vb = 4 if name in res.state.quant else 32
        options = [n * vb]
        if nnz < n:
            options += [nnz * vb + n, nnz * vb + _csr_bits_by_hand(flat)]
        total += min(options)
    assert theo["total_bits"] == total and theo["total_bytes"] == math.ceil(total / 8)
    nonzero_weights = sum(int((res.model.get_parameter(k) != 0).sum()) for k in res.state.quant)
    assert nonzero_weights * 4 < theo["total_bits"] < nonzero_weights * 4 + 8 * nonzero_weights + 32 * 200


# ---------------------------------------------------------------- corruption


@pytest.fixture(scope="module")
def blob(env):
    res = variant(env, "prune90_int4")
    return pack(res.model, res.state, env["arch"])


def _resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_bad_magic(blob):
    with pytest.raises(PackError, match="bad magic"):
        unpack(b"PK\x03\x04" + blob[4:])


def test_checksum_mismatch(blob):
    hlen = struct.unpack_from("<I", blob, 6)[0]
    bad = bytearray(blob)
    bad[10 + hlen + 5] ^= 0x01  # one payload bit
    with pytest.raises(PackError, match="checksum mismatch"):
        unpack(bytes(bad))
    with pytest.raises(PackError, match="checksum mismatch"):
        tensor_report(bytes(bad))


@pytest.mark.parametrize("cut", [lambda b: b[:-100], lambda b: b[:3], lambda b: b[:12]])
def test_truncated(blob, cut):
    with pytest.raises(PackError, match="truncated"):
        unpack(cut(blob))


def _header(blob: bytes) -> bytes:
    """The header JSON of a version-2 blob (one zstd frame)."""
    import zstandard

    hlen = struct.unpack_from("<I", blob, 6)[0]
    return zstandard.ZstdDecompressor().decompress(blob[10:10 + hlen])


def _with_header(blob: bytes, text: bytes, version: int = 2, compress_it: bool = True) -> bytes:
    """The blob with another header, re-signed so only the header differs."""
    import zstandard

    hlen = struct.unpack_from("<I", blob, 6)[0]
    new = zstandard.ZstdCompressor().compress(text) if compress_it else text
    return _resign(MAGIC + struct.pack("<HI", version, len(new)) + new + blob[10 + hlen:-32])


def test_unsupported_version(blob):
    future = _resign(MAGIC + struct.pack("<H", 3) + blob[6:-32])
    with pytest.raises(PackError, match="unsupported format version 3"):
        unpack(future)


def test_version_1_plain_json_header_still_reads(blob):
    v1 = _with_header(blob, _header(blob).replace(b'"version":2', b'"version":1'), version=1, compress_it=False)
    a, b = unpack(blob).model.state_dict(), unpack(v1).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_header_zstd_bomb_is_refused(blob):
    bomb = _with_header(blob, b" " * (packing.HEADER_CAP + 10))
    with pytest.raises(PackError, match="header inflates past"):
        unpack(bomb)


def test_header_not_json_and_bad_tensor(blob):
    with pytest.raises(PackError, match="header is not valid JSON"):
        unpack(_with_header(blob, b"!" + _header(blob)[1:]))
    header = _header(blob).replace(b'"nonzero":', b'"nonzero":1', 1)  # 1 prefixed to the first count
    with pytest.raises(PackError, match=r"tensor features.0.weight: decodes to (\d+) non-zero elements, the header "
                                        r"says 1\1$"):
        unpack(_with_header(blob, header))
    row = tensor_report(blob)[0]
    assert row["entropy"] == "zstd"
    old = b'"raw_length":%d' % row["raw_bytes"]
    header = _header(blob).replace(old, old + b"0", 1)  # ten times the bytes the frame declares
    with pytest.raises(PackError, match="tensor features.0.weight: zstd frame declares"):
        unpack(_with_header(blob, header))


# ---------------------------------------------------------------- bit-level maths


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 11, 16, 23, 32, 40, 64])
def test_pack_bits_matches_a_bit_string_reference(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** min(bits, 63), size=37, dtype=np.uint64)
    if bits == 64:
        codes[0] = np.uint64(2 ** 64 - 1)
    stream = "".join(format(int(c), f"0{bits}b")[::-1] for c in codes)  # LSB first
    stream += "0" * (-len(stream) % 8)
    ref = bytes(int(stream[i:i + 8][::-1], 2) for i in range(0, len(stream), 8))
    assert bitpack.pack_bits(codes, bits) == ref
    assert np.array_equal(bitpack.unpack_bits(ref, bits, len(codes)).astype(np.uint64), codes)


def test_csr_relative_indices_with_fillers():
    positions = np.array([1, 4, 20])  # gaps 2, 3, 16; 3-bit codes: a filler skips 7 positions
    codes = bitpack.csr_encode(positions, 3)
    assert codes.tolist() == [1, 2, 7, 7, 1]
    assert bitpack.csr_entries(positions, 3) == 5
    assert bitpack.csr_decode(codes, 3).tolist() == [1, 4, 20]
    rng = np.random.default_rng(0)
    pos = np.flatnonzero(rng.random(100_000) < 0.03)
    for b in bitpack.CSR_INDEX_BITS:
        assert np.array_equal(bitpack.csr_decode(bitpack.csr_encode(pos, b), b), pos)


def test_bit_packing_millions_of_codes_is_fast():
    codes = np.random.default_rng(0).integers(0, 16, size=4_000_000, dtype=np.uint8)
    t = time.perf_counter()
    packed = bitpack.pack_bits(codes, 4)
    back = bitpack.unpack_bits(packed, 4, len(codes))
    assert time.perf_counter() - t < 1.0
    assert len(packed) == 2_000_000 and np.array_equal(back, codes)


def test_a_header_that_gives_a_key_twice_is_refused(blob):
    """Security review (issue 21): with duplicate keys, which value wins depends on the JSON reader, so two
    readers of one file could rebuild two different models; the header is refused, naming the key."""
    header = _header(blob)
    assert header.startswith(b'{"format":"xpk"')
    twice = b'{"format":"xpk","format":"xpk"' + header[len(b'{"format":"xpk"'):]
    with pytest.raises(PackError, match=r"^header is ambiguous: key 'format' is given twice in one object"):
        unpack(_with_header(blob, twice))
