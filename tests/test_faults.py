"""Faults and concurrency: a dying worker, failing runs, and eight sessions at once."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.app import service
from explorer.compress.recipe import Recipe
from explorer.run import runner
from explorer.run.cache import RunCache
from explorer.run.executor import parallel as _parallel

ROOT = Path(__file__).resolve().parent.parent


def die_or_echo(job):
    """Worker function for the test: the job keyed 'die' kills its own process, like the OOM killer."""
    key, recipe_json = job
    if key == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"key": key, "result": {"status": "ok", "key": key}, "files": {}}


def test_a_killed_worker_fails_its_run_only_and_the_sweep_goes_on():
    r = Recipe(model="digits_cnn").to_json(indent=None)
    jobs = [("a", r), ("die", r), ("b", r), ("c", r)]
    out = {o["key"]: o["result"] for o in _parallel(jobs, "local", 2, fn=die_or_echo)}
    assert set(out) == {"a", "b", "c", "die"}
    assert out["die"]["status"] == "failed" and "worker process died" in out["die"]["error"]
    assert all(out[k]["status"] == "ok" for k in "abc")


def test_a_sweep_times_its_runs_in_the_cache_scratch_space_not_in_the_cache_root(tmp_path, monkeypatch):
    from explorer.run import executor

    cache = RunCache(tmp_path / "cache")
    seen = {}

    def killed(res, work):  # the parent killed while it times the run: where would its files be left?
        seen["work"] = Path(work)
        seen["files"] = sorted(p.name for p in Path(work).iterdir())
        raise RuntimeError("stopped")

    monkeypatch.setattr(runner, "time_run", killed)
    key = "0123456789abcdef0123"
    out = executor.finish(cache, key, Recipe(model="digits_cnn"),
                          {"result": {"status": "ok"}, "files": {"model.xpk": b"x"}}, latency=True)
    assert out["status"] == "failed" and seen["files"] == ["model.xpk"]
    assert (tmp_path / "cache" / ".scratch") in seen["work"].parents
    assert not [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith((".scratch", ".locks"))
                and p.name != ".explorer-cache"]


def test_exception_in_finetuning_is_recorded_and_not_cached(tmp_path, monkeypatch):
    from explorer.compress.prune import PruneConfig

    cache = RunCache(tmp_path / "cache")

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated) during fine-tuning")

    monkeypatch.setattr("explorer.compress.base.fit", boom)
    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5, finetune_epochs=1),))
    res = cache.get_or_run(recipe)
    assert res["status"] == "failed" and "out of memory (simulated)" in res["error"]
    assert cache.keys() == []
    monkeypatch.undo()
    assert cache.get_or_run(recipe)["status"] == "ok"


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_eight_sessions_compute_each_configuration_once_and_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    calls: list[str] = []
    real = runner.run_recipe

    def counting(recipe, **kw):
        calls.append(recipe.canonical_json())
        return real(recipe, **kw)

    monkeypatch.setattr(runner, "run_recipe", counting)
    digits = {"baseline": "digits_cnn-digits"}
    configs = [{**digits, "sparsity": "0.3"}, {**digits, "sparsity": "0.6"},
               {**digits, "sparsity": "0.6", "bits": "8", "quant_mode": "static"}]
    sessions = [configs[i % 3] for i in range(8)]
    shown: dict[int, tuple] = {}
    errors: list[str] = []
    apptest = threading.Lock()

    def session(i: int, query: dict):
        try:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
            for k, v in query.items():
                at.query_params[k] = v
            # AppTest keeps some state per process, so two AppTest runs must not overlap (a real server runs
            # each session's script in its own thread); the runs the pages queue are computed meanwhile
            with apptest:
                at.run()
            board = service.board()
            keys = board.watched(at.session_state["_session"])
            deadline = time.monotonic() + 500
            while not all(board.job(k).finished for k in keys) and time.monotonic() < deadline:
                time.sleep(0.2)
            with apptest:
                at.run()
            if at.exception or at.error:
                errors.append(f"session {i}: {[e.value for e in (*at.exception, *at.error)]}")
            m = {x.label: x.value for x in at.metric}
            shown[i] = (m.get("Top-1 (measured)"), m.get("Packed size"))
        except Exception as e:  # surfaced below: a crash in one session must not hide the others
            errors.append(f"session {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=session, args=(i, q)) for i, q in enumerate(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    # three configurations plus the baseline's own run, which every page shows beside its configuration
    assert len(calls) == len(set(calls)) == 4, "each distinct configuration computed exactly once"
    for i, q in enumerate(sessions):
        same = [shown[j] for j, q2 in enumerate(sessions) if q2 == q]
        assert len(set(same)) == 1 and same[0][0] is not None, (i, same)
    assert len(RunCache(tmp_path / "cache").keys()) == 4


@pytest.mark.parametrize("bad", ["nope"])
def test_bad_checkpoint_in_recipe_raises_before_work(tmp_path, bad):
    cache = RunCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="does not exist"):
        cache.get_or_run(Recipe(model="digits_cnn", checkpoint=str(tmp_path / f"{bad}.safetensors")))
    assert cache.keys() == []
