"""Run cache: hits, atomic entries, one computation per key across threads and processes, corruption,
failures, LRU eviction. Most tests inject a fake compute; one runs the real runner."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.core.version import SCHEMA_VERSION
from explorer.run import cache as cache_mod
from explorer.run import runner
from explorer.run.cache import RunCache

ROOT = Path(__file__).resolve().parent.parent
F = runner.FILES
ARTIFACTS = sorted(F[k] for k in ("packed", "onnx", "onnx_int8"))


def recipe(sparsity: float = 0.5) -> Recipe:
    return Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=sparsity),))


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "cache"}


class FakeCompute:
    """Writes small artifacts like the runner (plus a checkpoint copy the cache must drop) and counts calls."""

    def __init__(self, sleep: float = 0.0, fail: Exception | None = None, status: str = "ok"):
        self.sleep, self.fail, self.status = sleep, fail, status
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, r: Recipe, work: Path, progress):
        with self._lock:
            self.calls += 1
        if self.fail:
            raise self.fail
        payload = f"{r.canonical_json()}".encode() * 20
        for i, name in enumerate([*ARTIFACTS, F["checkpoint"]]):
            (work / name).write_bytes(bytes([i]) + payload)
        time.sleep(self.sleep)
        acc = {"top1": 0.91, "top3": 0.97, "top5": 0.99, "loss": 0.3}
        return {"schema": SCHEMA_VERSION, "status": self.status, "key": runner.run_key(r), "label": r.label(),
                "recipe": r.to_dict(), "model": r.model, "dataset": r.dataset, "accuracy": acc,
                "baseline_accuracy": acc, "accuracy_delta": 0.0, "test_samples": 100,
                "size": {"packed_bytes": len(payload) + 1}, "baseline_size": {"packed_bytes": 2 * len(payload)},
                "reduction_factor": {"vs_fp32_file": {"packed_bytes": 2.0}, "same_kind": {}},
                **({"error": "loss diverged"} if self.status != "ok" else {})}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EXPLORER_CACHE_MAX_MB", raising=False)
    return tmp_path / "cache"


def backdate(folder: Path, seconds: float = 60) -> None:
    t = time.time() - seconds
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (t, t))


def scratch(root: Path) -> list[str]:
    """Build folders left behind: in the scratch space, or in the cache root where earlier versions made them."""
    space = root / ".scratch"
    return ([p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".work-", ".trash-"))]
            + (sorted(p.name for p in space.iterdir()) if space.is_dir() else []))


def test_hit_returns_identical_result_without_computing(root):
    c, fake = RunCache(), FakeCompute()
    assert c.root == root
    first = c.get_or_run(recipe(), compute=fake)
    second = c.get_or_run(recipe(), compute=fake)
    third = RunCache().get_or_run(recipe(), compute=fake)  # another session, same disk
    assert fake.calls == 1
    assert first["cache"]["hit"] is False and second["cache"]["hit"] is True and third["cache"]["hit"] is True
    assert strip(first) == strip(second) == strip(third)
    assert "cache" not in c.get(first["key"])
    key = first["key"]
    assert sorted(os.listdir(root / key)) == sorted([*ARTIFACTS, "manifest.json", "result.json", "last_used"])
    assert c.artifact(key, F["packed"])[0] == ARTIFACTS.index(F["packed"])
    assert c.artifact(key, F["checkpoint"]) is None and c.artifact(key, "../manifest.json") is None
    assert scratch(root) == []
    c.get_or_run(recipe(0.6), compute=fake)  # a different recipe is a different key
    assert fake.calls == 2 and len(c.keys()) == 2
    with pytest.raises(ValueError, match="cache key"):
        c.get("../etc")


def test_verified_get_does_not_rehash(root, monkeypatch):
    c = RunCache()
    key = c.get_or_run(recipe(), compute=FakeCompute())["key"]
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)  # written "long ago": its ctime cannot be set back by a test
    assert c.get(key) is not None  # hashes once and remembers
    hashed = []
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(p) or "0")
    t = time.perf_counter()
    for _ in range(20):
        assert c.get(key) is not None
    assert hashed == [] and (time.perf_counter() - t) / 20 < 0.05
    (root / key / F["onnx"]).write_bytes((root / key / F["onnx"]).read_bytes())  # same bytes, new mtime: re-hash
    assert c.get(key) is None and hashed  # the stub's "0" checksum no longer matches


def test_change_within_one_clock_tick_is_still_detected(root):
    """A file rewritten in the same clock tick as its check keeps its mtime; such a fresh entry must not be
    trusted on its stats alone (git's "racy clean" problem)."""
    c = RunCache()
    key = c.get_or_run(recipe(), compute=FakeCompute())["key"]
    assert c.get(key) is not None
    packed = root / key / F["packed"]
    st = packed.stat()
    flip_byte(packed)
    os.utime(packed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert c.get(key) is None


def test_bytes_changed_in_place_are_never_served(root, monkeypatch):
    """In a long-running process (the page's server) the memo says a file was verified; a file then changed in
    place with its size and mtime kept must still not be handed out: artifacts and the result are checked
    against the manifest at the moment they are served, and the entry is dropped."""
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)  # every file remembered at once, as an old one would be
    c = RunCache()
    key = c.get_or_run(recipe(), compute=FakeCompute())["key"]
    backdate(root / key)
    assert c.get(key) is not None and c.artifact(key, F["packed"]) is not None  # verified and remembered
    packed = root / key / F["packed"]
    st = packed.stat()
    flip_byte(packed)
    os.utime(packed, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert packed.stat().st_ctime_ns != st.st_ctime_ns  # a write moves the ctime, which no program sets back
    assert c.artifact(key, F["packed"]) is None  # the changed bytes are refused when served
    assert not (root / key).exists() and c.get(key) is None and c.artifact_path(key, F["onnx"]) is None

    key = c.get_or_run(recipe(0.7), compute=FakeCompute())["key"]
    backdate(root / key)
    assert c.get(key) is not None
    result = root / key / "result.json"
    st = result.stat()
    text = result.read_text()
    result.write_text(text.replace('"top1": 0.91', '"top1": 0.99'))  # same size, another figure
    os.utime(result, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert result.stat().st_size == st.st_size
    assert c.peek(key) is None and c.get(key) is None and not (root / key).exists()


def flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "flip_packed": lambda e: flip_byte(e / F["packed"]),
    "delete_onnx": lambda e: (e / F["onnx"]).unlink(),
    "garbage_result": lambda e: (e / "result.json").write_text("{garbage"),
    "truncate_int8": lambda e: (e / F["onnx_int8"]).write_bytes(b""),
    "no_manifest": lambda e: (e / "manifest.json").unlink(),
    # checksums that match, over a result whose fields the views would fail on
    "no_accuracy": lambda e: rewrite_result(e, lambda r: r.pop("accuracy")),
    "label_of_wrong_type": lambda e: rewrite_result(e, lambda r: r.update(label={"a": 1})),
    "size_of_wrong_type": lambda e: rewrite_result(e, lambda r: r.update(size="big")),
}


def rewrite_result(entry: Path, change) -> None:
    import hashlib

    result = json.loads((entry / "result.json").read_text())
    change(result)
    raw = json.dumps(result).encode()
    (entry / "result.json").write_bytes(raw)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["result.json"].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))
    (entry / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupted_entry_is_discarded_and_recomputed(root, how):
    c, fake = RunCache(), FakeCompute()
    first = c.get_or_run(recipe(), compute=fake)
    entry = root / first["key"]
    backdate(entry)
    assert c.get(first["key"]) is not None  # verified and remembered before the damage
    CORRUPTIONS[how](entry)
    assert c.get(first["key"]) is None
    assert not entry.exists() and scratch(root) == []
    again = c.get_or_run(recipe(), compute=fake)
    assert fake.calls == 2 and again["cache"]["hit"] is False
    assert strip(again) == strip(first) and c.get(first["key"]) == strip(first)


def test_failed_compute_is_returned_and_never_stored(root):
    c = RunCache()
    r = recipe()
    failed = c.get_or_run(r, compute=FakeCompute(fail=RuntimeError("boom in fine-tuning")))
    assert failed["status"] == "failed" and "RuntimeError: boom in fine-tuning" in failed["error"]
    assert failed["cache"] == {"hit": False, "key": runner.run_key(r), "stored": False}
    reported = c.get_or_run(r, compute=FakeCompute(status="failed"))  # a run that reports its own failure
    assert reported["error"] == "loss diverged" and reported["cache"]["stored"] is False
    assert c.keys() == [] and scratch(root) == [] and c.get(runner.run_key(r)) is None
    good = FakeCompute()
    ok = c.get_or_run(r, compute=good)
    assert good.calls == 1 and ok["status"] == "ok" and ok["cache"]["stored"] is True
    with pytest.raises(ValueError, match="only a successful run"):
        c.commit(runner.run_key(r), root, {"status": "failed", "key": runner.run_key(r)})


def test_bad_input_raises_and_leaves_nothing(root, tmp_path):
    c, fake = RunCache(), FakeCompute()
    missing = Recipe(model="digits_cnn", checkpoint=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="missing.safetensors.*does not exist"):
        c.get_or_run(missing, compute=fake)
    assert fake.calls == 0
    with pytest.raises(ValueError, match="holds a"):
        c.get_or_run(recipe(), compute=FakeCompute(fail=ValueError("checkpoint holds a 'vgg13'")))
    assert c.keys() == [] and scratch(root) == []


def test_two_threads_compute_once(root):
    fake, barrier = FakeCompute(sleep=1.0), threading.Barrier(2)
    results, messages = [None, None], []

    def session(i):
        c = RunCache()
        barrier.wait(60)  # a session that failed to start breaks the barrier rather than holding the other
        results[i] = c.get_or_run(recipe(), compute=fake, progress=lambda f, m: messages.append(m))

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert fake.calls == 1
    assert sorted(r["cache"]["hit"] for r in results) == [False, True]
    assert strip(results[0]) == strip(results[1])
    assert len([m for m in messages if m.startswith("waiting")]) == 1


WORKER = """
import json, os, sys, time
from pathlib import Path
from explorer.run import cache, runner
from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.core.version import SCHEMA_VERSION
from tests.conftest import complete

mode, state = sys.argv[1], Path(sys.argv[2])

def compute(r, work, progress):
    with open(state / "calls", "a") as f:
        f.write(f"{os.getpid()}\\n")
    for kind in ("packed", "onnx", "onnx_int8"):
        (work / runner.FILES[kind]).write_bytes(kind.encode() * 500)
    (state / "computing").touch()
    time.sleep(600 if mode == "hang-in-compute" else 1.0)
    return complete({"status": "ok", "key": runner.run_key(r), "label": r.label()})

if mode == "hang-in-commit":  # artifacts and result.json are in the scratch folder, no manifest yet
    def stall(path):
        (state / "committing").touch()
        time.sleep(600)
    cache.sha256_file = stall
(state / f"ready-{os.getpid()}").touch()
while len(list(state.glob("ready-*"))) < int(sys.argv[3]):  # start both sessions together
    time.sleep(0.01)
result = cache.RunCache().get_or_run(Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5),)), compute=compute)
print(json.dumps(result))
"""


def start_worker(tmp_path: Path, mode: str, sessions: int = 1) -> subprocess.Popen:
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "state").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), mode, str(tmp_path / "state"),
                             str(sessions)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_two_processes_compute_once(root, tmp_path):
    procs = [start_worker(tmp_path, "normal", sessions=2) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert len((tmp_path / "state" / "calls").read_text().split()) == 1
    assert sorted(r["cache"]["hit"] for r in results) == [False, True]
    assert strip(results[0]) == strip(results[1]) == RunCache().get(results[0]["key"])


@pytest.mark.parametrize("mode", ["hang-in-compute", "hang-in-commit"])
def test_killed_process_leaves_nothing_served(root, tmp_path, mode):
    proc = start_worker(tmp_path, mode)
    marker = tmp_path / "state" / ("computing" if mode == "hang-in-compute" else "committing")
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "worker never reached the point to kill it"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    key = runner.run_key(recipe())
    left = sorted(scratch(root))  # what a killed process leaves (none of it an entry), all in the scratch space
    assert [n.split("-")[0] for n in left] == (["work"] if mode == "hang-in-compute" else ["commit", "work"])
    assert all((root / ".scratch" / n).is_dir() for n in left)
    c = RunCache()  # the next start removes them at once: their owner is dead, however young they are
    assert scratch(root) == []
    assert c.get(key) is None and c.keys() == []
    fake = FakeCompute()
    result = c.get_or_run(recipe(), compute=fake)  # the dead process's lock is gone: no wait
    assert fake.calls == 1 and result["status"] == "ok" and c.get(key) == strip(result)
    assert scratch(root) == []


def test_lru_eviction_removes_least_recently_used_first(root):
    c, fake = RunCache(), FakeCompute()
    keys = []
    for s in (0.1, 0.2, 0.3):
        keys.append(c.get_or_run(recipe(s), compute=fake)["key"])
        time.sleep(0.05)  # file times move in clock ticks
    assert c.get(keys[0]) is not None  # now keys[1] is the least recently used
    time.sleep(0.05)
    biggest = max(cache_mod.folder_bytes(root / k) for k in keys)
    small = RunCache(max_mb=3.5 * biggest / 2**20)  # room for three entries, not four
    new = small.get_or_run(recipe(0.4), compute=fake)["key"]
    assert set(small.keys()) == {keys[0], keys[2], new}
    assert small.total_bytes() <= small.max_bytes


def test_size_cap_from_environment(root, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_MAX_MB", "0.001")
    c, fake = RunCache(), FakeCompute()
    assert c.max_bytes == int(0.001 * 2**20)
    c.get_or_run(recipe(0.1), compute=fake)
    last = c.get_or_run(recipe(0.2), compute=fake)
    assert c.keys() == [last["key"]]  # the entry just stored stays even when it alone exceeds the cap
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv("EXPLORER_CACHE_MAX_MB", bad)
        with pytest.raises(ValueError, match=f"EXPLORER_CACHE_MAX_MB='{bad}' must be a number of megabytes >= 0"):
            RunCache()
    with pytest.raises(ValueError, match="max_mb=-2 must be"):
        RunCache(max_mb=-2)


def test_entries_verify_clear(root):
    c, fake = RunCache(), FakeCompute()
    a = c.get_or_run(recipe(0.1), compute=fake)["key"]
    time.sleep(0.05)
    b = c.get_or_run(recipe(0.2), compute=fake)["key"]
    rows = c.entries()
    assert [r["key"] for r in rows] == [b, a]  # most recently used first
    assert all(r["complete"] and r["status"] == "ok" and r["bytes"] > 3000 for r in rows)
    assert rows[0]["label"] == recipe(0.2).label() and datetime.fromisoformat(rows[0]["last_used"])
    flip_byte(root / a / F["packed"])
    (root / b / F["onnx"]).unlink()
    assert {r["key"]: r["complete"] for r in c.entries()} == {a: True, b: False}  # sizes only, no hashing
    problems = {a: f"{F['packed']} checksum mismatch", b: f"{F['onnx']} is missing"}
    assert c.verify() == [{"key": k, "problem": problems[k], "removed": False} for k in sorted(problems)]
    assert len(c.keys()) == 2
    assert [r["key"] for r in c.verify(fix=True)] == sorted(problems) and c.keys() == []
    c.get_or_run(recipe(0.3), compute=fake)
    c.get_or_run(recipe(0.4), compute=fake)
    assert c.verify() == []
    foreign = root / "explorer-time-x1"  # another tool's folder in the cache is neither listed nor removed
    foreign.mkdir()
    assert c.clear() == 2 and c.keys() == [] and c.total_bytes() == 0 and c.verify(fix=True) == []
    assert foreign.is_dir()


def _dead_leftover(space: Path, name: str) -> Path:
    """A build folder as kill -9 leaves it: its owner file there, the owner's lock gone with the process."""
    p = space / name
    (p / "work").mkdir(parents=True)
    (p / ".owner").touch()
    (p / "work" / "model.onnx").write_bytes(b"x" * 1000)
    return p


def test_a_dead_process_leftovers_go_at_once_and_live_runs_stay(root):
    """A killed run's 24 MB work folder used to sit in the cache root for an hour and survive restarts and
    verify --fix. Build folders now live in the scratch space, and the next start (or verify --fix) removes
    one as soon as its owner is dead, while a live run's folder stays; the root-level folders earlier
    versions and sweeps made go too, once nobody holds their key."""
    c = RunCache()
    dead_key, live_key = runner.run_key(recipe(0.1)), runner.run_key(recipe(0.2))
    legacy_dead, legacy_live = (root / f".work-{k}-4242-ab12cd34" for k in (dead_key, live_key))
    lookalike = root / ".work-notes-1-ab"  # not named by a run key: not ours
    for p in (legacy_dead, legacy_live, lookalike):
        p.mkdir()
        (p / "x").write_bytes(b"x")
    with c.workspace("work", live_key) as live, c.lock(live_key):  # a long run in progress
        (live / "model.xpk").write_bytes(b"x")
        assert live.parent.parent == root / ".scratch"
        dead = _dead_leftover(root / ".scratch", f"work-{dead_key}-4242-deadbeef")
        RunCache()  # a new start
        assert not dead.exists() and not legacy_dead.exists()
        assert live.is_dir() and legacy_live.is_dir() and lookalike.is_dir()
        dead = _dead_leftover(root / ".scratch", f"commit-{dead_key}-4243-deadbeef")
        removed = c.verify(fix=True)
        assert [r["key"] for r in removed] == [dead.name] and not dead.exists()
        assert live.is_dir() and legacy_live.is_dir() and lookalike.is_dir()
    assert not live.parent.exists()  # the run ended: its folder went with it
    assert [r["key"] for r in c.verify(fix=True)] == [legacy_live.name]
    assert lookalike.is_dir() and scratch(root) == [lookalike.name]


def test_real_runner_second_call_is_a_fast_hit(root):
    c = RunCache()
    t0 = time.perf_counter()
    first = c.get_or_run(recipe(0.5))
    t1 = time.perf_counter()
    second = c.get_or_run(recipe(0.5))
    t2 = time.perf_counter()
    assert first["status"] == "ok", first.get("error")
    assert first["cache"]["hit"] is False and second["cache"]["hit"] is True
    assert strip(first) == strip(second)
    assert t2 - t1 < 0.5 and t2 - t1 < (t1 - t0) / 5, (t1 - t0, t2 - t1)
    stored = set(os.listdir(root / first["key"]))
    assert {F["packed"], F["onnx"]} <= stored and F["checkpoint"] not in stored
    assert len(c.artifact(first["key"], F["packed"])) == first["size"]["packed_bytes"]
    assert scratch(root) == []


def test_an_attached_file_is_checked_when_served_and_goes_with_its_entry(root):
    c = RunCache(root)
    res = c.get_or_run(recipe(), compute=FakeCompute())
    key = res["cache"]["key"]
    assert c.artifact(key, "sensitivity.json") is None  # nothing attached yet
    c.attach(key, "sensitivity.json", b'{"conv1": 0.5}')
    assert c.artifact(key, "sensitivity.json") == b'{"conv1": 0.5}'
    assert c.get(key) is not None  # the entry stays intact with the new file in its manifest
    for bad in ("../x", ".hidden", "manifest.json", "result.json", ""):
        with pytest.raises(ValueError, match="cannot attach"):
            c.attach(key, bad, b"x")
    with pytest.raises(ValueError, match="not stored intact"):
        c.attach("0" * 20, "sensitivity.json", b"x")
    # changed in place, size kept: the bytes are refused when served and the entry goes, file and all
    path = root / key / "sensitivity.json"
    path.write_bytes(b'{"conv1": 0.9}')
    assert c.artifact(key, "sensitivity.json") is None and not (root / key).exists()


def test_clear_removes_attached_files_and_the_old_sensitivity_folder(root):
    (root / ".sensitivity").mkdir(parents=True)
    (root / ".sensitivity" / f"{'0' * 20}.json").write_text("{}")  # named by its run key
    c = RunCache(root)  # start-up removes what earlier versions kept outside the entries
    assert not (root / ".sensitivity").exists()
    key = c.get_or_run(recipe(), compute=FakeCompute())["cache"]["key"]
    c.attach(key, "sensitivity.json", b"{}")
    assert c.clear() == 1 and not list(root.glob("*/sensitivity.json"))


def test_a_fixed_technique_gets_new_keys_and_the_others_keep_theirs(monkeypatch):
    """A step whose revision is raised (a fix that changes what it computes) no longer finds the runs cached
    before the fix; every other recipe keeps its key, so the fix recomputes nothing else."""
    unstructured = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5, scope="layer"),))
    channel = Recipe(model="digits_cnn", steps=(PruneConfig(granularity="channel", sparsity=0.5),))
    layer = Recipe(model="digits_cnn", steps=(PruneConfig(granularity="channel", sparsity=0.5, scope="layer"),))
    lamp = recipe()  # global unstructured: ranked by layer-adaptive scores since revision 2
    assert channel.steps[0].revision() == lamp.steps[0].revision() == 2
    assert unstructured.steps[0].revision() == layer.steps[0].revision() == 1
    after = [runner.run_key(r) for r in (unstructured, channel, layer, lamp)]
    monkeypatch.setattr(PruneConfig, "revision", lambda self: 1)
    before = [runner.run_key(r) for r in (unstructured, channel, layer, lamp)]
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1] and after[3] != before[3]


def _plant_lookalikes(folder: Path) -> dict[str, bytes]:
    """What a shared folder such as ~/.cache holds beside the explorer's entries: folders named with letters
    and digits, a 64-hex folder (a content-addressed store's), a folder named exactly like a run key but
    without our manifest, and plain files. Returns every file planted, with its bytes."""
    planted = {}
    for rel in ("Documents/thesis.tex", "pip/http/ab/cd", "torch/hub/checkpoints/resnet.pth",
                "huggingface/hub/models--x/config.json", f"{'ab12' * 16}/blob", f"{'0' * 20}/notes.txt",
                "notes.txt", "TODO"):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode() * 100)
        planted[rel] = rel.encode() * 100
    return planted


def _survivors(folder: Path, planted: dict[str, bytes]) -> dict[str, bytes]:
    return {rel: (folder / rel).read_bytes() for rel in planted if (folder / rel).is_file()}


def test_clear_verify_and_the_size_cap_remove_only_entries_the_cache_wrote(root):
    """clear, verify --fix and the size cap used to delete every folder named with letters and digits in the
    cache folder (Documents/, pip/, torch/, huggingface/ under EXPLORER_CACHE_DIR=~/.cache) with everything
    inside. Only a folder named exactly like a run key and holding our manifest.json is an entry."""
    c, fake = RunCache(), FakeCompute()
    planted = _plant_lookalikes(root)
    assert c.keys() == [] and c.entries() == [] and c.total_bytes() == 0  # none of it is listed
    a = c.get_or_run(recipe(0.1), compute=fake)["key"]
    b = c.get_or_run(recipe(0.2), compute=fake)["key"]
    assert c.keys() == sorted([a, b]) and len(a) == 20
    assert c.evict() == [] and RunCache(max_mb=0).evict() == sorted([a, b], key=c._last_used)
    assert _survivors(root, planted) == planted
    c.get_or_run(recipe(0.1), compute=fake)
    last = RunCache(max_mb=0).get_or_run(recipe(0.3), compute=fake)["key"]  # a run under a zero cap evicts
    assert c.keys() == [last] and _survivors(root, planted) == planted
    (root / last / F["packed"]).write_bytes(b"damaged")
    assert [r["key"] for r in c.verify(fix=True)] == [last] and c.keys() == []
    assert _survivors(root, planted) == planted
    c.get_or_run(recipe(0.4), compute=fake)
    assert c.clear() == 1 and c.keys() == []
    assert _survivors(root, planted) == planted
    with pytest.raises(RuntimeError, match="is in the way"):  # a run whose key names a folder not ours
        c.commit("0" * 20, root, {"status": "ok", "key": "0" * 20})
    assert c.get("0" * 20) is None and _survivors(root, planted) == planted


def test_run_keys_have_one_exact_form(root):
    key = runner.run_key(recipe())
    assert cache_mod.is_key(key) and len(key) == 20  # what runner.run_key makes is what the cache accepts
    for bad in ("Documents", "pip", "ab12" * 16, key.upper(), key[:-1], key + "0", f"{key}/..", 12345):
        assert not cache_mod.is_key(bad)
        with pytest.raises(ValueError, match=r"must be a run key \(20 lowercase hex digits"):
            RunCache().get(bad)
