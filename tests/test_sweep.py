import contextlib
import ipaddress
import os
import types
from pathlib import Path

import pandas as pd
import pytest

from explorer.app.cli import main, parse_list
from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.run import workers
from explorer.run.cache import RunCache
from explorer.run.controls import grid_point
from explorer.run.executor import run_sweep
from explorer.run.grid import Grid
from explorer.run.result import results_frame

SMALL = Grid.of(sparsity=(0.0, 0.5), bits=(32, 8), clusters=(0,), finetune_epochs=(0,))
FIGURES = ["top1", "top5", "accuracy_delta", "packed_bytes", "file_bytes", "gzip_bytes", "onnx_bytes", "sparsity"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return RunCache(tmp_path / "cache")


def test_grid_builds_distinct_recipes():
    g = Grid.of(sparsity=(0.0, 0.5, 0.9), bits=(32, 16, 8, 4), clusters=(0, 16), finetune_epochs=(0, 2))
    rs = g.recipes()
    # at sparsity 0 the fine-tune epochs do not apply, so those points collapse
    assert len(rs) == 4 * 2 * (1 + 2 * 2) and len({r.canonical_json() for r in rs}) == len(rs)
    r = grid_point("digits_cnn", sparsity=0.9, bits=8, clusters=16)
    assert [type(s).__name__ for s in r.steps] == ["PruneConfig", "ClusterConfig", "QuantizeConfig"]
    assert r.steps[2].mode == "static" and grid_point("digits_cnn", bits=4).steps[0].mode == "ptq"
    assert grid_point("digits_cnn", bits=16).steps[0].mode == "fp16" and grid_point("digits_cnn").steps == ()
    adapted = grid_point("vgg13", sparsity=0.9, bits=8, bn_adapt=True)
    assert [type(s).__name__ for s in adapted.steps] == ["PruneConfig", "BNAdaptConfig", "QuantizeConfig"]
    assert grid_point("vgg13", bits=8, bn_adapt=True).steps == grid_point("vgg13", bits=8).steps  # nothing to adapt
    assert all("BN adapt" in r.label() for r in Grid.of(sparsity=(0.5,), bn_adapt=True).recipes())


def test_bad_grid_values_are_named():
    with pytest.raises(ValueError, match=r"bits=12 must be one of"):
        Grid.of(bits=(12,))
    with pytest.raises(ValueError, match="grid sparsity is empty"):
        Grid.of(sparsity=())
    with pytest.raises(ValueError, match=r"clusters=1 must be one of: off, 2, 4, 8, 16, 32, 64, 128, 256, 0"):
        Grid.of(clusters=(1,))
    with pytest.raises(ValueError, match=r"sparsity='x' must be a comma-separated list of floats"):
        parse_list("0.5,x", float, "sparsity")
    with pytest.raises(ValueError, match="the sweep is empty"):
        run_sweep([])


def test_local_sweep_caches_and_does_not_recompute(cache):
    seen = []
    df = run_sweep(SMALL.recipes(), workers=2, cache=cache, latency=False,
                   progress=lambda d, t, e: seen.append((d, t)))
    assert len(df) == 4 and (df["status"] == "ok").all() and not df["cache_hit"].any()
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    again = run_sweep(SMALL.recipes(), workers=2, cache=cache, latency=False)
    assert again["cache_hit"].all()
    pd.testing.assert_frame_equal(df[FIGURES], again[FIGURES])


def test_failed_run_does_not_stop_the_sweep_and_resume_computes_only_the_rest(cache, tmp_path):
    good = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.3),))
    # a 2:4 prune of a layer whose input size is 1 fails inside the run, not in the recipe
    bad = Recipe(model="digits_cnn", steps=(PruneConfig(granularity="nm", sparsity=0.5),))
    df = run_sweep([bad, good], workers=1, cache=cache, latency=False)
    assert list(df["status"]) == ["failed", "ok"]
    assert "multiple of 4" in df["error"].iloc[0]
    assert cache.get(df["key"].iloc[1]) is not None and len(cache.keys()) == 1
    # an interrupted sweep: one run in the cache already; only the other is computed
    third = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.4),))
    df2 = run_sweep([good, third], workers=1, cache=cache, latency=False)
    assert list(df2["cache_hit"]) == [True, False]


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_ray_backend_matches_local(cache, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    recipes = SMALL.recipes()
    local = run_sweep(recipes, workers=2, cache=RunCache(tmp_path / "a"), latency=False)
    try:
        distributed = run_sweep(recipes, backend="ray", workers=2, cache=RunCache(tmp_path / "b"), latency=False)
    finally:
        ray.shutdown()
    assert (distributed["status"] == "ok").all()
    pd.testing.assert_frame_equal(local[FIGURES], distributed[FIGURES])


def _bound_sockets() -> dict[int, tuple[str, int]]:
    """inode: (address, port) of every listening TCP socket and bound, unconnected UDP socket, from /proc/net."""
    out = {}
    for table, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == state:
                raw, port = f[1].split(":")
                words = [bytes.fromhex(raw[i:i + 8])[::-1] for i in range(0, len(raw), 8)]  # host-order words
                ip = ipaddress.ip_address(b"".join(words))
                mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # ::ffff:a.b.c.d
                out[int(f[9])] = (str(mapped or ip), int(port, 16))
    return out


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        with contextlib.suppress(ValueError, OSError):  # not a process, or one that ended meanwhile
            children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
    tree, todo = [], [root]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _listening(root: int) -> set[tuple[str, str, int]]:
    """(process name, address, port) of each socket that `root` or a process under it listens on."""
    bound, out = _bound_sockets(), set()
    for pid in _process_tree(root):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and int(link[8:-1]) in bound:
                        out.add((Path(f"/proc/{pid}/comm").read_text().strip(), *bound[int(link[8:-1])]))
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the sockets from Linux's /proc")
@pytest.mark.parametrize("address", [None, pytest.param("local", marks=pytest.mark.slow)])  # unset, or "local"
def test_local_ray_listens_only_on_loopback(cache, monkeypatch, address):
    """A Ray started here must not take programs from the network (ShadowRay, CVE-2023-48022): while the sweep
    runs, every port of its processes (GCS, raylet, agents, workers) is on loopback."""
    pytest.importorskip("ray")
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.delenv(workers.RAY_CLUSTER_SWITCH, raising=False)
    seen: set[tuple[str, str, int]] = set()

    def look(done, total, left):
        if done:  # a run came back from a Ray worker: every Ray process is up
            seen.update(_listening(os.getpid()))

    try:
        df = run_sweep(SMALL.recipes()[:1], backend="ray", workers=1, cache=cache, latency=False, progress=look)
        gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    finally:
        ray.shutdown()
    assert (df["status"] == "ok").all()
    assert gcs_port in {port for _, _, port in seen}  # the listing saw Ray's own ports
    assert sorted(s for s in seen if s[1] not in ("127.0.0.1", "::1")) == []
    assert workers.RAY_CLUSTER_SWITCH not in os.environ  # put back: a later RAY_ADDRESS is a cluster's again


def test_local_ray_on_a_network_address_is_stopped():
    class FakeRay:
        stopped = False

        def get_runtime_context(self):
            return types.SimpleNamespace(gcs_address="192.0.2.7:6379")

        def shutdown(self):
            self.stopped = True

    ray = FakeRay()
    with pytest.raises(RuntimeError, match="the local Ray came up on 192.0.2.7, reachable from the network"):
        workers._check_loopback(ray)
    assert ray.stopped


def test_ray_address_that_does_not_answer_is_one_clear_error(cache, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    with pytest.raises(ValueError, match=r"RAY_ADDRESS='127.0.0.1:9' does not answer"):
        run_sweep(SMALL.recipes()[:1], backend="ray", cache=cache, latency=False)
    assert cache.keys() == []


def test_results_frame_flattens_failed_and_ok_rows():
    df = results_frame([{"status": "failed", "error": "boom", "label": "x", "recipe": {"steps": []}}])
    assert df.loc[0, "error"] == "boom" and df.loc[0, "technique"] == "baseline"


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_cli_sweep_report_recommend(cache, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["sweep", "--sparsity", "0,0.5", "--bits", "32,8", "--clusters", "0", "--finetune-epochs", "0",
                 "--out", str(out), "--workers", "2"]) == 0
    df = pd.read_csv(out)
    assert len(df) == 4 and {"top1", "packed_bytes", "lat_onnxruntime_cpu_int8_b256_ms"} <= set(df.columns)
    html = tmp_path / "report.html"
    assert main(["report", str(out), "--html", str(html)]) == 0
    text = html.read_text()
    assert "Sparsity vs accuracy" in text and "Pareto front" in text and "plotly" in text and "<table" in text
    capsys.readouterr()
    assert main(["recommend", str(out), "--max-drop", "1", "--objective", "size"]) == 2  # bad objective name
    assert "objective='size' must be one of" in capsys.readouterr().err
    # 359 test images cannot make any run 95% sure of losing under 1 point: the command says so
    assert main(["recommend", str(out), "--max-drop", "1", "--objective", "smallest"]) == 1
    assert "the test set is too small to tell a drop under that" in capsys.readouterr().err
    assert main(["recommend", str(out), "--max-drop", "3", "--objective", "smallest"]) == 0
    text = capsys.readouterr().out
    assert "smallest of" in text and "95% sure to lose at most 3 points" in text and '"steps"' in text
    assert main(["recommend", str(out), "--max-drop", "1", "--confidence", "0"]) == 0  # point estimates
    assert "top-1 drop at most 1 point" in capsys.readouterr().out
    assert main(["recommend", str(out), "--max-drop", "0", "--size-budget-kb", "0.001", "--confidence", "0"]) == 1
    assert "no run meets" in capsys.readouterr().err
    assert main(["sweep", "--bits", "12", "--out", str(tmp_path / "x.csv")]) == 2
    assert "bits=12 must be one of" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


def test_a_sweep_says_its_progress_while_it_times_the_points_the_background_stored_untimed():
    """The Sweep tab sat at 'starting the sweep' for minutes: the background grid's points, stored without their
    timing, were timed one by one before the first progress report."""
    from explorer.run.result import UNTIMED
    from tests.conftest import complete

    recipes = SMALL.recipes()

    class Stored:  # every point stored untimed; asking for it with its latency times it
        def __init__(self):
            self.timed = set()

        def get(self, key):
            pending = {} if key in self.timed else {"pending": [UNTIMED]}
            return complete({"status": "ok", "key": key, "sparsity": 0.0, "params": 10, "baseline_params": 10,
                             "nonzero_params": 10, "macs": 100, **pending})

        def get_or_run(self, recipe):
            from explorer.run import runner

            self.timed.add(runner.run_key(recipe))
            return self.get(runner.run_key(recipe))

    said = []
    df = run_sweep(recipes, workers=1, cache=Stored(), progress=lambda done, total, eta: said.append((done, total)))
    assert len(df) == len(recipes) and said[0] == (0, len(recipes))
    assert [d for d, _ in said[1:len(recipes) + 1]] == list(range(1, len(recipes) + 1))  # one report per point timed


def test_a_sweep_says_its_time_before_it_starts_from_the_runs_measured_so_far():
    """The Sweep tab launched 40 configurations with no word of the time: the estimate is the measured runs'
    seconds against their training epochs (least squares), the rest shared by the workers, timing one at a time."""
    from explorer.app.ui.panels import sweep_estimate_words
    from explorer.run.executor import estimate

    def measured(epochs: int, seconds: float) -> dict:
        r = grid_point("digits_cnn", sparsity=0.5, finetune_epochs=epochs) if epochs else grid_point("digits_cnn")
        return {"recipe": r.to_dict(), "timings": {"total_prepare": seconds, "latency": 2.0}}

    runs = [measured(0, 3.0), measured(2, 13.0), measured(4, 23.0)]  # 3 s, then 5 s an epoch
    todo = [grid_point("digits_cnn", sparsity=s, finetune_epochs=e) for s, e in ((0.6, 2), (0.7, 4), (0.8, 0))]
    from explorer.run.runner import run_key

    est = estimate(todo, runs, frozenset({run_key(todo[2])}), workers=2)
    assert (est.total, est.stored, est.basis) == (3, 1, 3)
    assert est.seconds == pytest.approx(((3 + 10) + (3 + 20)) / 2 + 2 * 2.0)  # two runs left, each timed alone
    assert "about 22 s" in sweep_estimate_words(est) and "1 of them stored already" in sweep_estimate_words(est)
    assert estimate(todo, [], frozenset(), workers=2).seconds is None
    assert "cannot be estimated" in sweep_estimate_words(estimate(todo, [], frozenset(), workers=2))
