"""Every transformer technique on a tiny Vision Transformer from the zoo: the compressed model exports to ONNX,
and ONNX Runtime's predictions equal PyTorch's (the int8 runtime paths: ONNX Runtime's own integer model,
compared with the explorer's simulation of it)."""

import onnx
import pytest
import torch
from torch import nn
from vit_tiny import ARCH, digits, trained

from explorer.artifact.pack import pack, unpack
from explorer.compress.base import Context, compressible, step_type_of
from explorer.compress.cluster import ClusterConfig
from explorer.compress.lowrank import Factorized, LowRankConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.measure.onnx_export import deploy_int8, export_onnx, onnx_logits

FLOAT_EXPORTS = [
    PruneConfig(sparsity=0.5, granularity="heads"), PruneConfig(sparsity=0.5, granularity="neurons"),
    PruneConfig(sparsity=0.5, granularity="nm", layers="inner"), PruneConfig(sparsity=0.5),
    QuantizeConfig(bits=4, group_size=32), QuantizeConfig(bits=8, group_size=64),
    QuantizeConfig(bits=4, group_size=128, symmetric=False), LowRankConfig(rank_ratio=0.25, layers="mlp"),
    PruneConfig(sparsity=0.5, granularity="block"), ClusterConfig(clusters=16), QuantizeConfig(bits=16, mode="fp16"),
]


def _apply(cfg):
    return step_type_of(cfg).apply(trained(), cfg, Context(data=digits(), seed=0))


def _predictions(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("cfg", FLOAT_EXPORTS, ids=lambda c: c.label().replace(" ", "-"))
def test_onnx_runtime_predicts_what_pytorch_predicts_after_each_technique(cfg, tmp_path):
    out = _apply(cfg)
    x = digits().test.x
    export_onnx(out.model, digits().input_shape, tmp_path / "m.onnx")
    ort = torch.from_numpy(onnx_logits(tmp_path / "m.onnx", x.numpy()))
    assert torch.equal(ort.argmax(1), _predictions(out.model, x))
    assert torch.allclose(ort, out.model(x).detach(), atol=1e-4)
    again = unpack(pack(out.model, out.state, ARCH)).model  # and the packed file gives the same model
    assert torch.equal(again(x[:32]), out.model(x[:32]))


def test_channel_pruning_of_a_transformer_is_refused_in_words():
    with pytest.raises(ValueError, match="granularity='channel'.*transformer.*use granularity 'heads'"):
        _apply(PruneConfig(sparsity=0.25, granularity="channel"))


def test_two_four_prunes_every_inner_linear_layer_of_the_transformer():
    out = _apply(PruneConfig(sparsity=0.5, granularity="nm", layers="inner"))
    layers = dict(compressible(out.model, "inner"))
    assert len(layers) == 2 * 4  # qkv, proj, fc1, fc2 in each of 2 blocks; patch embedding and head left out
    for name, m in layers.items():
        nonzero = (m.weight != 0).reshape(-1, 4).sum(1)
        assert isinstance(m, nn.Linear) and int(nonzero.max()) <= 2, name
    assert out.state.info["prune"][0]["achieved"] == pytest.approx(0.5, abs=1e-3)


def test_low_rank_on_the_mlps_factorises_fc1_and_fc2_only():
    out = _apply(LowRankConfig(rank_ratio=0.25, layers="mlp"))
    mlps = [f"blocks.{i}.mlp.{f}" for i in range(2) for f in ("fc1", "fc2")]
    assert sorted(out.state.info["lowrank"]["ranks"]) == mlps
    factorised = [n for n, m in out.model.named_modules() if isinstance(m, Factorized)]
    assert factorised == sorted(out.state.info["lowrank"]["ranks"])
    assert all(r == 8 for r in out.state.info["lowrank"]["ranks"].values())  # 0.25 of min(32, 64)


@pytest.mark.parametrize("mode, integer_op, agree",
                         [("dynamic", "MatMulInteger", 0.97), ("static", "QuantizeLinear", 0.95)])
def test_int8_on_onnx_runtime_agrees_with_the_simulated_model(mode, integer_op, agree, tmp_path):
    """Dynamic int8 quantises the Linear layers' inputs at run time (DynamicQuantizeLinear, MatMulInteger), the
    CPU path for transformers; static int8 uses calibrated ranges (QDQ). ONNX Runtime quantises a few more
    operators than the simulation, so predictions may differ on a few images, not more."""
    out = _apply(QuantizeConfig(bits=8, mode=mode, calibration_samples=64))
    assert out.state.deploy.mode == mode
    d = digits()
    x, y = d.test.x.numpy(), d.test.y.numpy()
    export_onnx(out.model, d.input_shape, tmp_path / "m.onnx")
    rec = deploy_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", out.state.deploy, d.calibration(64).numpy(), x, y)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert integer_op in ops
    ort = onnx_logits(tmp_path / "q.onnx", x).argmax(1)
    pt = _predictions(out.model, d.test.x).numpy()
    assert (ort == pt).mean() >= agree
    assert abs(rec["accuracy"]["top1"] - 100 * (pt == y).mean()) <= 2.0


def test_looking_for_transformer_blocks_imports_no_library_a_model_does_not_use():
    """A first page's run of a small CNN never imports timm or torchvision (seconds) to learn it holds none of
    their modules; a timm ViT's blocks are still found (its library is imported to build it)."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from explorer.compress.base import _mlp_types\n"
            "from explorer.artifact.architecture import _attention\n"
            "assert _mlp_types() == () and _attention() is None\n"
            "assert not {'timm', 'torchvision', 'torch_pruning'} & set(sys.modules), sorted(sys.modules)\n"
            "import timm\n"
            "assert _attention() is timm.layers.Attention and timm.layers.Mlp in _mlp_types()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
