"""Re-timing later (issue 22): a stored run whose speed figures failed their checks is timed again from its
stored artifacts when the machine is quieter, as the landscape's low-priority work, and its cache entry is
rewritten in one step with a record of the re-time."""

import json

import pytest

from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.core.engines import B256, ORT_CPU_INT8
from explorer.run import landscape as L
from explorer.run import retime
from explorer.run.cache import RunCache
from explorer.run.controls import DEFAULTS, build
from explorer.run.result import disturbed_figures, needs_retime, speed, untimed
from explorer.run.runner import run_key
from tests.conftest import complete

FIG = f"speed-up {ORT_CPU_INT8} {B256}"


def _disturbed(key: str = "a" * 20, later=()) -> dict:
    return complete({"status": "ok", "key": key,
                     "speedup": {ORT_CPU_INT8: {B256: {"ratio": 43.85, "ci": [4.35, 183.76], "rounds": 10,
                                                       "status": "disturbed"}}},
                     "timing_quality": {"disturbed": [FIG], "retimes": 2, "later": list(later)}})


def test_the_machine_is_quiet_enough_below_one_waiting_process_per_core():
    assert retime.quiet_enough(0.5, 2) and retime.quiet_enough(1.99, 2) and retime.quiet_enough(None, 2)
    assert not retime.quiet_enough(2.0, 2) and not retime.quiet_enough(5.3, 2)


def test_a_disturbed_run_is_due_after_a_wait_that_doubles_and_at_most_three_times():
    r = _disturbed()
    assert not retime.due(r, now=1000 + retime.FIRST_WAIT_S - 1, timed_at=1000)
    assert retime.due(r, now=1000 + retime.FIRST_WAIT_S, timed_at=1000)
    once = _disturbed(later=[{"when": 2000}])
    assert not retime.due(once, now=2000 + retime.FIRST_WAIT_S, timed_at=1000)
    assert retime.due(once, now=2000 + 2 * retime.FIRST_WAIT_S, timed_at=1000)
    spent = _disturbed(later=[{"when": 1}] * retime.MAX_LATER)
    assert not retime.due(spent, now=10**9)
    clean = {**_disturbed(), "timing_quality": {"disturbed": []}}
    assert not retime.due(clean, now=10**9)


def test_the_next_re_time_goes_in_the_order_given_and_never_on_a_busy_machine():
    stored = {"p": {**_disturbed(), "timing_quality": {"disturbed": []}}, "q": _disturbed(), "r": _disturbed()}
    peek = stored.get
    assert retime.next_key(["p", "q", "r"], peek, now=10**9, load1=0.3, cores=2) == "q"
    assert retime.next_key(["r", "q"], peek, now=10**9, load1=0.3, cores=2) == "r"
    assert retime.next_key(["p", "q", "r"], peek, now=10**9, load1=2.5, cores=2) is None
    assert retime.next_key(["p", "missing"], peek, now=10**9, load1=0.3, cores=2) is None


def test_the_merge_records_each_later_re_time():
    timed = {**_disturbed(), "timing_quality": {"disturbed": [], "retimes": 0}}
    first = retime.merge(_disturbed(), timed, when=5000.4, load=[0.4, 0.5, 0.6])
    assert first["timing_quality"]["later"] == [{"when": 5000, "load_average": [0.4, 0.5, 0.6], "before": [FIG],
                                                 "after": []}]
    second = retime.merge(first, {**timed, "timing_quality": {"disturbed": [FIG]}}, when=6000, load=[])
    assert [x["when"] for x in second["timing_quality"]["later"]] == [5000, 6000]
    assert second["timing_quality"]["later"][1]["after"] == [FIG]


def _stored(tmp_path, key: str, packed: bytes) -> RunCache:
    """A cache holding a disturbed run `key` with a packed file."""
    cache = RunCache(tmp_path / "cache")
    work = tmp_path / "w"
    work.mkdir()
    (work / "model.xpk").write_bytes(packed)
    cache.commit(key, work, _disturbed(key))
    return cache


def test_a_stored_result_is_replaced_whole_and_checks_intact(tmp_path):
    key = "b" * 20
    cache = _stored(tmp_path, key, b"packed")
    new = {**_disturbed(key), "timing_quality": {"disturbed": []}}
    assert cache.replace_result(key, new)["timing_quality"]["disturbed"] == []
    got = cache.get(key)
    assert got is not None and not needs_retime(got) and cache.verify() == []
    assert cache.artifact(key, "model.xpk") == b"packed"  # the artifacts are left as they were
    manifest = json.loads((tmp_path / "cache" / key / "manifest.json").read_text())
    assert manifest["files"]["result.json"]["bytes"] == len((tmp_path / "cache" / key / "result.json").read_bytes())
    with pytest.raises(ValueError, match="only a successful run"):
        cache.replace_result(key, {**new, "key": "c" * 20})
    assert not list((tmp_path / "cache" / key).glob(".*tmp"))


def test_retime_times_the_stored_artifacts_again_and_writes_the_entry(tmp_path):
    key = "d" * 20
    cache = _stored(tmp_path, key, b"packed bytes")
    seen = {}

    def time_run(result, workdir):
        seen["files"] = sorted(p.name for p in workdir.iterdir())
        seen["packed"] = (workdir / "model.xpk").read_bytes()
        return {**result, "speedup": {ORT_CPU_INT8: {B256: {"ratio": 4.5, "ci": [4.4, 4.6], "rounds": 10,
                                                             "status": "measured"}}},
                "timing_quality": {"disturbed": [], "retimes": 0}}

    new = retime.retime(cache, key, time_run=time_run, now=7000)
    assert seen == {"files": ["model.xpk"], "packed": b"packed bytes"}
    stored = cache.get(key)
    assert stored == new and speed(stored, ORT_CPU_INT8, B256).text == "4.50x faster"
    assert stored["timing_quality"]["later"][0]["before"] == [FIG] and not needs_retime(stored)
    assert retime.retime(cache, key, time_run=time_run) is None  # nothing left to re-time


def test_the_landscape_re_times_a_pages_own_run_before_its_next_point_and_only_when_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    digits = {"architecture": "digits_cnn", "dataset": "digits", "name": "digits_cnn-digits", "path": None,
              "batchnorm": False}
    own = {**DEFAULTS, "sparsity": 0.35, "bits": "5"}  # not a grid point
    key = run_key(build(own, digits))
    stored = {key: _disturbed(key)}

    class FakeCache:
        def peek(self, k):
            return stored.get(k)

        def stored_at(self, k):
            return 0.0

    lands = L.Landscapes(FakeCache, run_key, idle_s=60, tick_s=3600)  # no tick: nothing runs
    land = lands.touch(digits, own)
    assert lands._retime_key(land, grid=False) is None  # the page's run is not known yet
    lands.after_run(digits, own)
    monkeypatch.setattr(L, "load_average", lambda: [0.2, 0.2, 0.2])
    assert lands._retime_key(land, grid=False) == key
    assert lands._recipes(land)[key].label() == build(own, digits).label()
    monkeypatch.setattr(L, "load_average", lambda: [50.0, 50.0, 50.0])  # a busy machine: it waits
    assert lands._retime_key(land, grid=False) is None
    lands.stop()


@pytest.mark.slow
def test_the_worker_re_times_a_real_stored_run_from_its_files(tmp_path, monkeypatch):
    """A real run, stored, its int8 speed-up planted as disturbed (as a busy machine leaves it): the landscape
    worker's re-time job times the stored files again and the entry carries a fresh figure."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5),))
    cache = RunCache()
    first = cache.get_or_run(recipe)
    key = first["key"]
    planted = {**first, "speedup": {**first["speedup"], ORT_CPU_INT8: {B256: {
        "ratio": 43.85, "ci": [4.35, 183.76], "rounds": 10, "status": "disturbed"}}},
        "timing_quality": {**first["timing_quality"], "disturbed": [FIG]}}
    planted.pop("cache", None)
    cache.replace_result(key, planted)
    out = L._retime(recipe.to_json(indent=None))
    assert out == {"status": "ok", "key": key, "retime": True}
    stored = cache.get(key)
    later = stored["timing_quality"]["later"]
    assert len(later) == 1 and later[0]["before"] == [FIG] and later[0]["after"] == disturbed_figures(stored)
    fresh = stored["speedup"][ORT_CPU_INT8][B256]
    assert fresh["ratio"] != 43.85 and fresh["ci"] != [4.35, 183.76]


def test_after_the_last_later_re_time_the_page_says_the_machine_was_too_busy():
    from explorer.app.ui.timing import busy_words

    r = _disturbed(later=[{"when": 1}] * retime.MAX_LATER)
    assert not needs_retime(r)
    assert speed(r, ORT_CPU_INT8, B256).text == "timing disturbed: the machine was too busy"
    assert "still failing after 3 later re-times" in busy_words(r)
    assert speed(_disturbed(), ORT_CPU_INT8, B256).text == "timing disturbed: re-timing"


def _untimed(key: str = "e" * 20) -> dict:
    return complete({"status": "ok", "key": key, "pending": ["latency"]})


def test_a_run_stored_untimed_is_due_at_once_even_on_a_busy_machine_and_its_timing_is_no_re_time():
    r = _untimed()
    assert untimed(r) and needs_retime(r) and retime.due(r, now=1.0, timed_at=1.0)
    assert speed(r, ORT_CPU_INT8, B256).text == "not timed yet"
    assert retime.next_key(["x", r["key"]], {r["key"]: r}.get, now=1.0, load1=50.0, cores=2) == r["key"]
    assert retime.next_key(["x"], {"x": _disturbed("x")}.get, now=1e9, load1=50.0, cores=2) is None
    timed = {**r, "speedup": {}, "timing_quality": {"disturbed": []}}
    first = retime.merge(r, timed, when=5.0, load=[0.1])
    assert "pending" not in first and "later" not in first["timing_quality"] and not needs_retime(first)


def test_the_landscape_times_its_untimed_grid_points_one_after_another(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    digits = {"architecture": "digits_cnn", "dataset": "digits", "name": "digits_cnn-digits", "path": None,
              "batchnorm": False}
    lands = L.Landscapes(RunCache, run_key, idle_s=60, tick_s=3600)  # no tick: nothing runs
    land = lands.touch(digits, DEFAULTS)
    keys = [k for k, _, _ in land.points]
    stored = {k: _untimed(k) for k in keys[:2]}

    class FakeCache:
        def peek(self, k):
            return stored.get(k)

        def stored_at(self, k):
            return 0.0

    lands._cache = FakeCache
    monkeypatch.setattr(L, "load_average", lambda: [50.0, 50.0, 50.0])  # busy: a first timing does not wait
    assert lands._retime_key(land, grid=True) == keys[0] and land.scanned == 0.0  # the next scan comes at once
    stored[keys[0]] = {**stored[keys[0]], "pending": []}
    assert lands._retime_key(land, grid=True) == keys[1]
    stored[keys[1]] = {**stored[keys[1]], "pending": []}
    assert lands._retime_key(land, grid=True) is None and land.scanned > 0  # none left: every RETIME_SCAN_S again
    lands.stop()


def test_a_run_stored_untimed_is_timed_from_its_files_when_asked_for_with_its_latency(tmp_path, monkeypatch):
    """A landscape point stored untimed: its accuracy and sizes at once; a page (or a sweep) asking for the run
    gets it timed first from the stored files, the untimed result streamed meanwhile, and the entry stored timed."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_LATENCY_BUDGET_S", "0.05")
    recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5, finetune_epochs=0),))
    cache = RunCache()
    first = cache.get_or_run(recipe, latency=False)
    key = first["key"]
    assert untimed(cache.get(key)) and not cache.get(key).get("speedup") and cache.get(key)["accuracy"]
    assert cache.get_or_run(recipe, latency=False)["cache"]["hit"]  # untimed is what was asked: a hit
    streamed = []
    timed = cache.get_or_run(recipe, partial=streamed.append)
    assert [s["status"] for s in streamed] == ["partial"] and streamed[0]["pending"] == ["latency"]
    assert timed["cache"]["hit"] and not untimed(timed) and "pending" not in timed
    assert speed(timed, ORT_CPU_INT8, B256).state != "pending" and timed["accuracy"] == first["accuracy"]
    stored = cache.get(key)
    assert not untimed(stored) and stored["speedup"] == timed["speedup"] and cache.verify() == []
    assert "later" not in stored["timing_quality"]  # a first timing, no re-time
