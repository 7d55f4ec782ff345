import gzip
import os

import numpy as np
import pytest
import torch

from explorer.compress import compress
from explorer.compress.cluster import ClusterConfig
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.core.train import evaluate, predict_logits
from explorer.measure import compute, size
from explorer.measure.hardware import describe, hardware
from explorer.measure.latency import summarise, torch_cuda
from explorer.measure.onnx_export import export_onnx, onnx_accuracy, quantize_int8
from explorer.measure.speedup import measure_latency
from explorer.models.baselines import baseline_data, load_baseline
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def baseline():
    model, card = load_baseline("models/digits_cnn-digits.safetensors")
    return model, baseline_data(card)


KINDS = {
    "unstructured": [PruneConfig(sparsity=0.8)],
    "structured": [PruneConfig(granularity="channel", sparsity=0.5)],
    "clustered": [ClusterConfig(clusters=16)],
    "fp16": [QuantizeConfig(mode="fp16", bits=16)],
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_export_gives_the_same_top1_as_pytorch(baseline, kind, tmp_path):
    model, data = baseline
    m = compress(model, KINDS[kind], data).model
    export_onnx(m, data.input_shape, tmp_path / "m.onnx")
    x, y = data.test.x.numpy(), data.test.y.numpy()
    ours = evaluate(m, data.test)
    theirs = onnx_accuracy(tmp_path / "m.onnx", x, y)
    assert theirs["top1"] == ours["top1"] and theirs["top5"] == ours["top5"]
    from explorer.measure.onnx_export import onnx_logits

    np.testing.assert_allclose(onnx_logits(tmp_path / "m.onnx", x), predict_logits(m, data.test.x).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_int8_onnx_within_half_a_point_of_pytorch(baseline, tmp_path):
    model, data = baseline
    m = compress(model, [QuantizeConfig(mode="static")], data).model
    export_onnx(m, data.input_shape, tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=data.calibration(256).numpy())
    ours = evaluate(m, data.test)["top1"]
    theirs = onnx_accuracy(tmp_path / "q.onnx", data.test.x.numpy(), data.test.y.numpy())["top1"]
    assert abs(theirs - ours) <= 0.5 + 1e-9
    assert os.path.getsize(tmp_path / "q.onnx") < 0.4 * os.path.getsize(tmp_path / "m.onnx")
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_module_of_node_follows_the_exporters_scope_names():
    from explorer.measure.onnx_export import module_of_node

    assert module_of_node("/features/features.0/Conv") == "features.0"
    assert module_of_node("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_of_node("/conv1/Conv") == "conv1"
    assert module_of_node("Conv_3") == ""


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_onnx_keeps_the_layers_the_recipe_left_float(baseline, tmp_path, mode):
    """layers="inner" quantises all but the first and last layer: the deployed int8 graph does the same."""
    import onnx

    model, data = baseline
    state = compress(model, [QuantizeConfig(mode=mode, layers="inner")], data).state
    assert state.deploy["keep_float"] == ["features.0", "classifier.4"]
    export_onnx(model, data.input_shape, tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", mode=mode, calibration=data.calibration(64).numpy(),
                  keep_float=set(state.deploy["keep_float"]))
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    by_module = {}
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm", "ConvInteger", "MatMulInteger", "MatMul"):
            w = n.input[1]
            quantised = w not in floats or (w in producers and producers[w].op_type == "DequantizeLinear")
            by_module.setdefault(n.name.split("/")[2] if n.name.count("/") > 2 else n.name, []).append(quantised)
    assert by_module["features.0"] == [False] and by_module["classifier.4"] == [False], by_module
    assert all(all(v) for k, v in by_module.items() if k not in ("features.0", "classifier.4")), by_module
    acc = onnx_accuracy(tmp_path / "q.onnx", data.test.x.numpy(), data.test.y.numpy())["top1"]
    assert acc >= evaluate(model, data.test)["top1"] - 2
    with pytest.raises(Exception, match="no_such_layer"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "x.onnx", mode=mode, calibration=data.calibration(64).numpy(),
                      keep_float={"no_such_layer"})


@pytest.mark.parametrize("mode,per_channel", [("static", False), ("dynamic", True), ("static", True)])
def test_int8_onnx_weights_follow_the_recipes_symmetry(baseline, tmp_path, mode, per_channel):
    """Asymmetric weights get zero points, except per-channel static QDQ, which ONNX Runtime always makes
    symmetric (its integer convolutions take one zero point per tensor); runner.deployed_symmetry says so."""
    import onnx
    from onnx import numpy_helper

    from explorer.measure.onnx_export import deployed_symmetry

    model, data = baseline
    export_onnx(model, data.input_shape, tmp_path / "m.onnx")
    zero_points = {}
    for symmetric in (True, False):
        out = tmp_path / f"q{symmetric}.onnx"
        quantize_int8(tmp_path / "m.onnx", out, mode=mode, calibration=data.calibration(64).numpy(),
                      symmetric=symmetric, per_channel=per_channel)
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
        # the weights' zero points: per output channel, next to the int8 weight tensors
        zero_points[symmetric] = [v for k, v in inits.items() if k.endswith("weight_zero_point")
                                  or k.endswith("weight_quantized_zero_point") or k.endswith("Transposed_zero_point")]
        assert zero_points[symmetric], sorted(inits)
        acc = onnx_accuracy(out, data.test.x.numpy(), data.test.y.numpy())["top1"]
        assert acc >= evaluate(model, data.test)["top1"] - 2
    assert all((z == 0).all() for z in zero_points[True])
    deployed = deployed_symmetry({"mode": mode, "per_channel": per_channel, "symmetric": False})
    assert any((z != 0).any() for z in zero_points[False]) == (not deployed)
    assert deployed == (mode == "static" and per_channel)


def test_dynamic_int8_onnx(baseline, tmp_path):
    model, data = baseline
    export_onnx(model, data.input_shape, tmp_path / "m.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "d.onnx", mode="dynamic")
    acc = onnx_accuracy(tmp_path / "d.onnx", data.test.x.numpy(), data.test.y.numpy())["top1"]
    assert acc >= evaluate(model, data.test)["top1"] - 2


def test_latency_results_carry_hardware_and_statistics(baseline, tmp_path):
    model, data = baseline
    export_onnx(model, data.input_shape, tmp_path / "m.onnx")
    lat = measure_latency(model, data.input_shape, onnx_fp32=str(tmp_path / "m.onnx"), batches=(1, 8),
                          budget_s=0.05)
    hw = lat["hardware"]
    assert hw["cpu"] and isinstance(hw["isa"], list) and hw["threads"] == 1 and "gpu" in hw
    for engine in ("torch_cpu_fp32", "onnxruntime_cpu_fp32"):
        for b in ("b1", "b8"):
            r = lat["engines"][engine][b]
            assert r["available"] and r["runs"] >= 10 and 0 < r["median_ms"] <= r["p90_ms"]
    int8 = lat["engines"]["onnxruntime_cpu_int8"]["b1"]
    assert int8 == {"available": False, "reason": "no int8 model (the recipe has no int8 step)"}
    assert "thread" in describe(hw)


def test_gpu_path_is_skipped_cleanly_without_cuda(baseline):
    model, data = baseline
    if torch.cuda.is_available():
        r = torch_cuda(model, data.test.x[:4], torch.float16)
        assert r["available"] and r["median_ms"] > 0
        return
    r = torch_cuda(model, data.test.x[:4], torch.float32)
    assert r == {"available": False, "reason": "no CUDA GPU on this machine"}
    assert hardware(1)["gpu"] is None
    assert "GPU: not available on this machine" in describe(hardware(1))


def test_summarise_median_and_p90():
    s = summarise([5.0, 1.0, 2.0, 4.0, 3.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert s["median_ms"] == 5.5 and s["p90_ms"] == 9.0 and s["min_ms"] == 1.0 and s["runs"] == 10


def test_sizes_come_from_real_files(baseline, tmp_path):
    model, _ = baseline
    n = size.write_checkpoint(model, tmp_path / "m.safetensors")
    assert n == os.path.getsize(tmp_path / "m.safetensors")
    tensors = size.state_dict_bytes(model)
    assert tensors == sum(t.numel() * 4 for t in model.state_dict().values())
    check = size.check_file_against_tensors(n, tensors, len(model.state_dict()))
    assert check["consistent"]
    g = size.gzip_file(tmp_path / "m.safetensors", tmp_path / "m.gz")
    assert g == len(gzip.compress((tmp_path / "m.safetensors").read_bytes(), 9, mtime=0))
    half = size.write_checkpoint(model, tmp_path / "h.safetensors", {k: "fp16" for k in model.state_dict()})
    assert abs(half - n / 2) < 0.05 * n
    rf = size.reduction_factors({"file_bytes": half, "gzip_bytes": g}, n, {"gzip_bytes": g})
    assert rf["vs_fp32_file"]["file_bytes"] == round(n / half, 4) and rf["same_kind"]["gzip_bytes"] == 1.0


def test_macs_match_hand_count(baseline):
    model, data = baseline
    m = compute.macs(model, data.input_shape)
    # conv: out_h*out_w*out_c*in_c*k*k; linear: in*out
    expected = {"features.0": 8 * 8 * 16 * 1 * 9, "features.2": 8 * 8 * 32 * 16 * 9, "features.5": 4 * 4 * 64 * 32 * 9,
                "classifier.1": 256 * 64, "classifier.4": 64 * 10}
    assert m["per_layer"] == expected and m["total"] == sum(expected.values())


def test_structured_pruning_lowers_macs_and_unstructured_does_not(baseline):
    model, data = baseline
    dense = compute.macs(model, data.input_shape)["total"]
    assert compute.macs(compress(model, KINDS["unstructured"], data).model, data.input_shape)["total"] == dense
    assert compute.macs(compress(model, KINDS["structured"], data).model, data.input_shape)["total"] < 0.5 * dense


def test_peak_rss_growth_sees_an_allocation():
    def alloc():
        a = np.ones(50_000_000, dtype=np.uint8)  # 50 MB touched
        return int(a[::4096].sum())

    _, growth = compute.peak_rss_growth(alloc)
    assert growth is None or growth > 30_000_000


def test_peak_rss_growth_sees_a_freed_peak_between_two_samples():
    """The compression stage samples every 50 ms (a 2 ms sampler slowed fine-tuning by a third): a peak freed
    before the next sample still counts where it is the process's new high-water mark. In a fresh process, so
    that the mark is this allocation's."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom explorer.measure import compute\n"
            "def f():\n    a = np.ones(100_000_000, dtype=np.uint8)\n    n = int(a[::4096].sum())\n    del a\n"
            "    return n\n"
            "print(compute.peak_rss_growth(f, interval_s=30)[1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = out.stdout.split()[-1]
    assert growth == "None" or int(growth) > 80_000_000, out.stdout


@pytest.mark.parametrize("hog", [False, True], ids=["idle", "under a CPU hog"])
def test_a_model_timed_against_itself_shows_no_measurable_speedup(baseline, hog):
    """Interleaved rounds put the same load on the baseline and the run, so the ratio of a model to itself
    keeps 1 inside its interval even while other processes fight for every core."""
    import subprocess
    import sys

    model, data = baseline

    def measure() -> dict:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)] \
            if hog else []
        try:
            return measure_latency(model, data.input_shape, batches=(1, 64), budget_s=0.3, gpu=False,
                                   reference=model, retimes=0)
        finally:
            for p in hogs:
                p.kill()
                p.wait()

    # a 95% interval misses the truth one time in twenty by construction: a miss is measured once more, and
    # only a second miss in a row (one time in 400 by chance) counts as a bias between baseline and run
    lat = measure()
    for b in ("b1", "b64"):
        s = lat["speedup"]["torch_cpu_fp32"][b]
        if not s["ci"][0] <= 1.0 <= s["ci"][1]:
            s = measure()["speedup"]["torch_cpu_fp32"][b]
        assert s["ci"][0] <= 1.0 <= s["ci"][1], (b, s)
        assert lat["engines"]["torch_cpu_fp32"][b]["ci_ms"][0] <= lat["engines"]["torch_cpu_fp32"][b]["median_ms"]


def test_timing_rounds_let_a_background_run_wait_between_them(baseline):
    """measure_latency calls between_rounds before each round of each batch, never inside a timed call, with
    the fraction done; a callback that blocks (the landscape while a page's run goes) delays the rounds."""
    import time

    model, _ = baseline
    seen, inside = [], {"now": False}
    real_forward = model.forward

    def forward(x):
        inside["now"] = True
        try:
            return real_forward(x)
        finally:
            inside["now"] = False

    model.forward = forward
    try:
        def between(fraction):
            assert not inside["now"]
            seen.append(fraction)
            time.sleep(0.01)  # waiting, as the background does while a page's run goes

        out = measure_latency(model, (1, 8, 8), batches=(1, 4), budget_s=0.02, gpu=False, rounds=5,
                              between_rounds=between, reference=model, retimes=0)
    finally:
        del model.forward
    # once before every round tried (a round dropped for want of the CPU is tried again at the same point), with
    # the share of kept rounds over both batches: the first batch below one half, the second from it
    sessions = out["timing_quality"]["sessions"]
    assert len(seen) == sum(s["rounds_kept"] + s["rounds_dropped"] for s in sessions) >= 10
    assert seen == sorted(seen) and seen[0] == 0 and 0.5 <= seen[-1] < 1
    assert sum(f < 0.5 for f in seen) == sessions[0]["rounds_kept"] + sessions[0]["rounds_dropped"]
    for s in sessions:
        assert s["rounds_kept"] == 5 or not s["cpu_ok"]
