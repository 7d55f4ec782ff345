"""Scratch space: one folder the explorer owns; a killed process's folders are removed at the next start-up,
a live one's never."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer.core import scratch
from tests.conftest import ROOT


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_a_live_folder_is_kept_and_removed_on_exit(env):
    with scratch.folder("run") as p:
        (p / "model.xpk").write_bytes(b"x")
        assert p.parent == env / "cache" / ".scratch"
        assert scratch.clean() == [] and p.is_dir()
    assert not p.exists()


def test_a_folder_renamed_while_clean_looks_is_passed_over(env, monkeypatch):
    """A folder is born hidden and renamed once its owner holds the lock: `clean` (another page starting up)
    may list the hidden name an instant before the rename. It passes over it; it does not fail the page."""
    with scratch.folder("work") as live:
        born = live.with_name("." + live.name)
        real = os.scandir

        def listed_before_the_rename(path):
            born.mkdir()
            entries = sorted(real(path), key=lambda e: e.name != born.name)  # the hidden name listed first
            born.rmdir()  # renamed away before `clean` looks at it
            return _Listing(entries)

        monkeypatch.setattr(scratch.os, "scandir", listed_before_the_rename)
        assert scratch.clean() == [] and live.is_dir()


class _Listing(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_folders_of_a_killed_process_are_removed_at_start_up(env):
    code = ("from explorer.core import scratch; import time\n"
            "with scratch.folder('run') as p:\n    (p / 'model.onnx').write_bytes(b'x'); print(p, flush=True); "
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "EXPLORER_CACHE_DIR": str(env / "cache")})
    path = Path(proc.stdout.readline().strip())
    assert path.is_dir() and scratch.clean() == []  # its owner is alive
    proc.kill()
    proc.wait()
    assert path.is_dir()  # kill -9 runs no clean-up of its own
    assert scratch.clean() == [path.name] and not path.exists()


def test_a_killed_run_leaves_nothing_in_the_system_temp_directory(env, tmp_path):
    """`kill -9` of `run` used to leave explorer-run-* folders in /tmp, some holding every artifact."""
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": "vgg13", "steps": [{"kind": "prune", "sparsity": 0.5,
                                                               "finetune_epochs": 3}]}))
    system_tmp = tmp_path / "systmp"
    system_tmp.mkdir()
    run_env = {**os.environ, "EXPLORER_CACHE_DIR": str(env / "cache"), "TMPDIR": str(system_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "explorer", "run", "--recipe", str(recipe), "--no-cache"],
                            cwd=ROOT, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = env / "cache" / ".scratch"
    deadline = time.time() + 120
    while time.time() < deadline and not (base.is_dir() and any(base.iterdir())):
        time.sleep(0.2)
    assert base.is_dir() and any(base.iterdir()), "the run made no scratch folder"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not [p for p in system_tmp.iterdir() if p.name.startswith("explorer-")]
    left = sorted(p.name for p in base.iterdir())
    assert left and all(n.startswith("run-") for n in left)
    r = subprocess.run([sys.executable, "-m", "explorer", "cache", "ls"], cwd=ROOT, env=run_env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert list(base.iterdir()) == []  # the next start-up cleared them


def _old(path: Path) -> Path:
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    return path


def test_a_scratch_folder_that_is_a_link_is_refused_and_its_target_left_alone(env, tmp_path, capsys):
    """`clean` ran at every start and deleted every old folder in the scratch folder: a link there deleted another
    project's folders (`explorer cache ls` removed them)."""
    from explorer.app.cli import main

    victim = tmp_path / "victim"
    (victim / "important-1-project").mkdir(parents=True)
    (victim / "important-1-project" / "thesis.tex").write_text("do not delete")
    _old(victim / "important-1-project")
    assert main(["cache", "ls"]) == 0  # the cache folder is made and marked
    if scratch.root().exists():
        scratch.root().rmdir()
    os.symlink(victim, scratch.root())
    assert main(["cache", "ls"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        ".scratch' is a symbolic link: the explorer deletes old folders in it, so it must be a real folder it made; "
        "remove it, or set EXPLORER_CACHE_DIR elsewhere")
    assert (victim / "important-1-project" / "thesis.tex").read_text() == "do not delete"


def test_clean_removes_only_folders_named_as_the_explorer_names_them(env):
    from explorer.core import cachedir

    base = scratch.root()
    base.mkdir(parents=True, exist_ok=True)
    cachedir.claim(base.parent)  # the explorer's cache (marked), whose scratch folder gained someone's folder
    ours, other = _old_dir(base / "run-123-abcd_xyz"), _old_dir(base / "holiday photos")
    assert scratch.clean() == ["run-123-abcd_xyz"]
    assert not ours.exists() and other.exists()


def _old_dir(path: Path) -> Path:
    path.mkdir()
    return _old(path)
