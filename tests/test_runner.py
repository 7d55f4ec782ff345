import json
import os

import numpy as np
import pytest
import torch

from explorer.app.cli import main
from explorer.artifact import pack
from explorer.compress.prune import PruneConfig
from explorer.compress.quantize import QuantizeConfig
from explorer.compress.recipe import Recipe
from explorer.core.train import evaluate
from explorer.measure.onnx_export import ExportError
from explorer.run import runner

DESIGN_KEYS = {"recipe", "key", "accuracy", "baseline_accuracy", "accuracy_delta", "sparsity", "params",
               "nonzero_params", "macs", "size", "reduction_factor", "latency", "hardware", "layers", "timings",
               "status", "versions"}


@pytest.fixture(scope="module")
def run90(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.9, finetune_epochs=1), QuantizeConfig(bits=4)))
    return recipe, out, runner.run_recipe(recipe, workdir=out)


def test_run_result_has_the_design_keys(run90):
    _, _, res = run90
    assert DESIGN_KEYS <= set(res) and res["status"] == "ok"
    assert set(res["accuracy"]) >= {"top1", "top3", "top5"}
    assert set(res["size"]) == {"state_dict_bytes", "file_bytes", "gzip_bytes", "zstd_bytes", "packed_bytes",
                                "onnx_bytes", "onnx_int8_bytes"}
    assert res["versions"]["torch"] == torch.__version__
    json.dumps(res)  # JSON-able all the way down


def test_sizes_are_the_files_written_and_factors_follow(run90):
    _, out, res = run90
    for kind, name in (("packed_bytes", "model.xpk"), ("file_bytes", "model.safetensors"),
                       ("gzip_bytes", "model.safetensors.gz"), ("onnx_bytes", "model.onnx"),
                       ("onnx_int8_bytes", "model.int8.onnx")):
        assert res["size"][kind] == os.path.getsize(out / name), kind
    base = res["baseline_size"]["file_bytes"]
    assert base == os.path.getsize("models/digits_cnn-digits.safetensors")
    assert res["reduction_factor"]["vs_fp32_file"]["packed_bytes"] == pytest.approx(base / res["size"]["packed_bytes"],
                                                                                    abs=1e-4)
    assert res["size"]["packed_bytes"] < 0.12 * base
    assert res["size_check"]["consistent"]


def test_accuracy_is_measured_on_the_model_rebuilt_from_the_packed_file(run90):
    _, out, res = run90
    from explorer.models.baselines import baseline_data, read_card

    data = baseline_data(read_card("models/digits_cnn-digits.safetensors"))
    model = pack.unpack((out / "model.xpk").read_bytes()).model
    acc = evaluate(model, data.test)
    assert res["accuracy"]["top1"] == acc["top1"] and res["accuracy"]["top5"] == acc["top5"]
    assert res["accuracy_delta"] == pytest.approx(acc["top1"] - res["baseline_accuracy"]["top1"])
    assert abs(res["onnx"]["fp32"]["accuracy"]["top1"] - acc["top1"]) < 1e-9


def test_per_layer_table_and_histograms(run90):
    _, _, res = run90
    layers = res["layers"]
    assert [r["layer"] for r in layers] == ["features.0", "features.2", "features.5", "classifier.1", "classifier.4"]
    for r in layers:
        assert r["bits"] == 4 and r["distinct"] <= 2 ** 4 * int(r["shape"].split("x")[0]) and r["packed_bytes"] > 0
    assert sum(r["macs"] for r in layers) == res["macs"]
    h = res["histograms"]["features.2"]
    assert sum(h["before"]) == sum(h["after"]) == 32 * 16 * 9


def test_latency_carries_hardware_and_gpu_says_not_available(run90):
    _, _, res = run90
    assert res["hardware"]["cpu"] and res["latency_threads"] == 1
    assert res["latency"]["torch_cpu_fp32"]["b256"]["available"]
    assert res["latency"]["onnxruntime_cpu_int8"]["b1"]["available"]
    if not torch.cuda.is_available():
        assert res["latency"]["torch_cuda_fp32"]["b1"] == {"available": False, "reason": "no CUDA GPU on this machine"}


def test_a_model_that_does_not_export_still_returns_a_result(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise ExportError("torchscript exporter: unsupported operator aten::frobnicate")

    monkeypatch.setattr(runner, "export_onnx", refuse)
    res = runner.run_recipe(Recipe(model="digits_cnn"), workdir=tmp_path, latency=True)
    assert res["status"] == "ok" and res["size"]["onnx_bytes"] is None
    assert "frobnicate" in res["onnx"]["fp32"]["reason"]
    assert res["latency"]["onnxruntime_cpu_fp32"]["b1"]["available"] is False
    assert "frobnicate" in res["latency"]["onnxruntime_cpu_fp32"]["b1"]["reason"]
    assert res["latency"]["torch_cpu_fp32"]["b1"]["available"]


def test_cli_run_json_and_out(tmp_path, capsys):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "digits_cnn", "steps": [{"kind": "quantize", "mode": "fp16", "bits": 16}]}))
    assert main(["run", "--recipe", str(recipe), "--json", "--out", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["label"] == "fp16" and abs(res["accuracy_delta"]) < 0.1
    # --out holds the deployables as the cache stored them, and their sizes are the result's
    assert res["size"]["packed_bytes"] == os.path.getsize(tmp_path / "o" / "model.xpk")
    assert res["size"]["onnx_bytes"] == os.path.getsize(tmp_path / "o" / "model.onnx")
    assert res["size"]["onnx_int8_bytes"] == os.path.getsize(tmp_path / "o" / "model.int8.onnx")
    assert json.loads((tmp_path / "o" / "result.json").read_text())["key"] == res["key"]


def test_cli_run_bad_recipe_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 1.2}]}))
    assert main(["run", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sparsity=1.2 must be a number in [0.0, 0.99]" in err


def test_qat_recipe_runs_although_it_reorders_the_state_dict(tmp_path):
    # QAT's parametrization leaves each weight after its bias in the state_dict; the packed-file check
    # must compare tensors by name, not by position
    recipe = Recipe(model="digits_cnn", steps=(QuantizeConfig(mode="qat", bits=8, finetune_epochs=1, lr=1e-3),))
    res = runner.prepare(recipe, tmp_path)
    assert res["status"] == "ok" and res["accuracy"]["top1"] > 90


@pytest.mark.slow  # about 25-60 s on two cores: run by `make test-all`
def test_a_recipe_gives_the_same_figures_whatever_threads_the_caller_runs(monkeypatch, tmp_path):
    """The page's process, the CLI and a sweep's one-thread workers compute with EXPLORER_TRAIN_THREADS
    threads, so one recipe gives one set of figures (vgg13's fine-tuning loss moves with the count)."""
    recipe = Recipe(model="vgg13", steps=(PruneConfig(sparsity=0.5, finetune_epochs=1),))
    before = torch.get_num_threads()
    try:
        got = []
        for caller in (2, 1):
            torch.set_num_threads(caller)
            res = runner.prepare(recipe, tmp_path / str(caller))
            assert res["threads"] == {"compress_and_evaluate": 1} and torch.get_num_threads() == 1
            got.append(res["accuracy"])
        assert got[0] == got[1]
        key = runner.run_key(recipe)
        monkeypatch.setenv("EXPLORER_TRAIN_THREADS", "2")
        assert runner.run_key(recipe) != key  # a result computed with another count is another entry
        for bad in ("0", "1.5", "many"):
            monkeypatch.setenv("EXPLORER_TRAIN_THREADS", bad)
            with pytest.raises(ValueError, match=f"EXPLORER_TRAIN_THREADS='{bad}'"):
                runner.run_key(recipe)
    finally:
        torch.set_num_threads(before)


def test_runs_keep_predictions_and_their_paired_comparison_with_the_baseline(tmp_path):
    """b and c recomputed from the two stored prediction files equal the stored ones; the baseline's own
    comparison is 0/0/1; the interval and the speed-ups are in the result."""
    from explorer.core.data import load_dataset
    from explorer.core.stats import wilson
    from explorer.measure.accuracy import load_predictions
    from explorer.run.cache import RunCache

    cache = RunCache(tmp_path / "cache")
    base = cache.get_or_run(Recipe(model="digits_cnn"))
    run = cache.get_or_run(Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.9, finetune_epochs=0),)))
    y = load_dataset("digits").test.y.numpy()
    pb, pr = (load_predictions(cache.artifact(r["key"], "predictions.npy")) for r in (base, run))
    assert pb.shape == pr.shape == y.shape and pr.dtype == np.int16
    b, c = int(((pb == y) & (pr != y)).sum()), int(((pb != y) & (pr == y)).sum())
    vs = run["vs_baseline"]
    assert (vs["baseline_only"], vs["run_only"]) == (b, c) and b > 0
    assert vs["delta_ci"][0] <= run["accuracy_delta"] <= vs["delta_ci"][1]
    assert run["accuracy"]["top1"] == pytest.approx(100 * (pr == y).mean(), abs=1e-4)
    k = int((pr == y).sum())
    assert run["accuracy_ci"]["top1"] == pytest.approx(list(wilson(k, len(y))), abs=1e-4)
    own = base["vs_baseline"]
    assert (own["baseline_only"], own["run_only"], own["p_value"]) == (0, 0, 1.0)
    from explorer.core.stats import ratio_of_medians

    for engine in ("torch_cpu_fp32", "onnxruntime_cpu_fp32", "onnxruntime_cpu_int8"):
        for batch in ("b1", "b256"):
            s = run["speedup"][engine][batch]
            assert s["ci"][0] <= s["ratio"] <= s["ci"][1] and s["rounds"] >= 5
            lat = run["latency"][engine][batch]
            assert lat["ci_ms"][0] <= lat["median_ms"] <= lat["ci_ms"][1]
            # like for like: against the baseline in the same engine, from the same rounds
            same = ratio_of_medians(run["baseline_latency"][engine][batch]["round_ms"], lat["round_ms"])
            assert (s["against"], s["ratio"], s["ci"]) == (engine, same["ratio"], same["ci"])
            # the baseline against itself: 1.0 by construction, not measured
            assert base["speedup"][engine][batch] == {"ratio": 1.0, "ci": [1.0, 1.0], "rounds": 0,
                                                      "status": "baseline"}
    assert set(run["deployment_gain"]) == {"onnxruntime_cpu_fp32", "onnxruntime_cpu_int8"}
    assert run["timing_quality"]["load_average"]["before"] and "sessions" in run["timing_quality"]


def test_cli_run_json_prints_the_uncertainty(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.6,
                                                                     "finetune_epochs": 0}]}))
    assert main(["run", "--recipe", str(recipe), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["accuracy_ci"]) == {"top1", "top5"} and len(res["accuracy_ci"]["top1"]) == 2
    assert {"baseline_only", "run_only", "delta_ci", "p_value", "significant"} <= set(res["vs_baseline"])
    assert set(res["speedup"]["torch_cpu_fp32"]["b256"]) >= {"ratio", "ci"}
    assert main(["run", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "paired 95% CI" in out and "speed-up vs the baseline in the same engine" in out
    assert "deployment gain vs the baseline in PyTorch fp32" in out


def test_every_phase_of_a_run_reports_progress(tmp_path):
    seen = []
    runner.run_recipe(Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5, finetune_epochs=1),)),
                      workdir=tmp_path, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.8 < fractions[-1] <= 1.0
    said = " ".join(m for _, m in seen)
    for phase in ("epoch 1/1", "packing", "measuring accuracy", "exporting ONNX", "timing latency"):
        assert phase in said, phase


def test_a_stage_started_again_never_moves_the_bar_back():
    """Under load the timing is taken again from its first round; the bar stays where it was until the new
    rounds pass it."""
    seen = []
    report = runner._stages(lambda f, m: seen.append(f))("latency")
    for fraction in (0.2, 0.6, 0.1, 0.3, 0.8):
        report(fraction, "timing latency")
    lo, hi = runner.STAGES["latency"]
    assert seen == sorted(seen) and seen[-1] == pytest.approx(lo + (hi - lo) * 0.8)
    assert seen[2] == seen[1]


def test_a_models_baseline_is_scored_beside_its_first_compression_with_the_same_figures(monkeypatch, tmp_path):
    """The first run of a model scores the baseline in a thread of its own while it fine-tunes, and the
    rebuilt model on EXPLORER_EVAL_WORKERS threads; neither changes a figure, nor the run's key. A failure
    of that thread is the run's error, and the next run scores the baseline again."""
    import threading

    from explorer.models.baselines import baseline_data, load_baseline

    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.7, finetune_epochs=1),))
    real = runner.evaluate

    def broken_beside(*args, **kwargs):
        if threading.current_thread().name == "explorer-baseline-scores":
            raise RuntimeError("the baseline could not be scored")
        return real(*args, **kwargs)

    runner._scores.clear()
    monkeypatch.setattr(runner, "evaluate", broken_beside)
    with pytest.raises(RuntimeError, match="the baseline could not be scored"):
        runner.prepare(recipe, tmp_path / "broken")
    monkeypatch.setattr(runner, "evaluate", real)
    first = runner.prepare(recipe, tmp_path / "beside")  # scored again, beside the fine-tuning
    key = runner.run_key(recipe)
    monkeypatch.setenv("EXPLORER_EVAL_WORKERS", "1")
    assert runner.run_key(recipe) == key
    warm = runner.prepare(recipe, tmp_path / "warm")  # the scores are there already, one scoring thread
    assert warm["timings"]["baseline_scores_wait"] < 0.05
    for field in ("accuracy", "baseline_accuracy", "accuracy_delta", "accuracy_ci", "vs_baseline"):
        assert first[field] == warm[field], field
    base, card = load_baseline(recipe.checkpoint_path)
    assert first["baseline_accuracy"]["top1"] == evaluate(base, baseline_data(card).test)["top1"]
    monkeypatch.setenv("EXPLORER_EVAL_WORKERS", "0")
    with pytest.raises(ValueError, match="EXPLORER_EVAL_WORKERS='0'"):
        runner.eval_workers()


@pytest.mark.parametrize("step", [QuantizeConfig(bits=8, mode="static", activation_bits=8),
                                  QuantizeConfig(bits=4, mode="qat", activation_bits=8, finetune_epochs=1)])
def test_models_with_quantised_activations_score_the_same_in_several_threads(tmp_path, step):
    """The rebuilt models whose activations pass through quantisers (fixed or learned ranges) are scored in
    several threads by a run: their forward must leave them as they were, so the logits match one thread."""
    from explorer.core.train import predict_logits
    from explorer.models.baselines import baseline_data, read_card

    res = runner.prepare(Recipe(model="digits_cnn", steps=(step,)), tmp_path)
    model = pack.unpack((tmp_path / "model.xpk").read_bytes()).model
    test = baseline_data(read_card("models/digits_cnn-digits.safetensors")).test
    one = predict_logits(model, test.x, batch_size=32)
    assert torch.equal(predict_logits(model, test.x, batch_size=32, workers=4), one)
    assert res["accuracy"]["top1"] == evaluate(model, test)["top1"]
