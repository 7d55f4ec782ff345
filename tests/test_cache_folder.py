"""Which folders the explorer may use from the environment: the run cache only in a folder it can prove is
its own (a marker it wrote, or contents it wrote), a bad EXPLORER_CACHE_DIR refused in one line naming it,
and an empty folder variable treated as unset rather than as the current folder."""

import json
import os
from pathlib import Path

import pytest

from explorer.app.cli import main
from explorer.core import cachedir, settings
from explorer.models import baselines
from explorer.models import user as byo
from explorer.run.cache import RunCache
from tests.conftest import ROOT
from tests.test_cache import FakeCompute, _plant_lookalikes, recipe


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what must survive a refusal."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME-like folder that EXPLORER_CACHE_DIR points at by mistake."""
    h = tmp_path / "home"
    _plant_lookalikes(h)
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(h))
    monkeypatch.delenv("EXPLORER_CACHE_MAX_MB", raising=False)
    return h


def test_a_folder_holding_other_things_is_refused_and_left_untouched(home, capsys):
    """`cache clear` and `cache verify --fix` with EXPLORER_CACHE_DIR=~/.cache used to delete Documents/,
    pip/, torch/ and huggingface/ with everything inside."""
    before = tree(home)
    with pytest.raises(ValueError) as e:
        RunCache()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"EXPLORER_CACHE_DIR={str(home)!r} must be a folder the explorer can "
                                              "write (empty, missing, or made by the explorer, which deletes only "
                                              "what it wrote): ")
    assert "it holds '00000000000000000000', 'Documents', 'TODO' and 5 more, which the explorer did not write" in msg
    with pytest.raises(ValueError, match="must be a folder the explorer can write"):
        RunCache(max_mb=0)
    for argv in (["cache", "clear"], ["cache", "verify", "--fix"], ["cache", "ls"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: EXPLORER_CACHE_DIR={str(home)!r} must be a folder")
    assert tree(home) == before and not (home / cachedir.MARKER).exists()


def test_a_refused_folder_passed_in_code_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("EXPLORER_CACHE_DIR")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match=rf"^the run cache folder {str(tmp_path)!r} must be a folder .*'photos'"):
        RunCache(tmp_path)


def test_an_empty_or_missing_folder_is_marked_and_used(tmp_path, monkeypatch):
    for folder in (tmp_path / "missing" / "cache", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        monkeypatch.setenv("EXPLORER_CACHE_DIR", str(folder))
        settings.check_all()  # the start-up check looks and creates nothing
        assert not (folder / cachedir.MARKER).exists() and (folder.name == "empty") == folder.exists()
        c = RunCache(folder)
        meta = json.loads((folder / cachedir.MARKER).read_text())
        assert "explorer run cache" in meta["what"]
        key = c.get_or_run(recipe(), compute=FakeCompute())["key"]
        assert RunCache(folder).keys() == [key]  # marked: used again, its own entries beside it
        (folder / "Documents").mkdir()  # later additions never make a marked folder refused, nor get removed
        assert RunCache(folder).clear() == 1 and (folder / "Documents").is_dir()


def test_a_fresh_clone_cache_folder_with_only_its_readme_is_adopted(tmp_path):
    """The repository's cache/ holds only README.md in git (.gitignore: cache/* and !cache/README.md)."""
    clone = tmp_path / "cache"
    clone.mkdir()
    (clone / "README.md").write_text("Run cache\n")
    (clone / ".gitkeep").touch()
    c = RunCache(clone)
    assert (clone / cachedir.MARKER).is_file() and c.keys() == []
    c.get_or_run(recipe(), compute=FakeCompute())
    assert c.clear() == 1 and (clone / "README.md").read_text() == "Run cache\n"
    assert cachedir.problem(ROOT / "cache") is None  # the repository's own folder, whatever a checkout holds


def test_a_folder_another_session_adopts_at_the_same_moment_is_not_refused(tmp_path, monkeypatch):
    """Two sessions adopting one empty folder: the first writes the marker after the second looked for it and
    before the second listed the folder. The second must take the marker as the explorer's, not refuse it
    (CI once failed so, and its waiting thread then held the test run open)."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / cachedir.MARKER).write_text("{}\n")
    monkeypatch.setattr(cachedir, "marked", lambda root: False)  # looked a moment before it was written
    assert cachedir.problem(folder) is None
    assert cachedir.claim(folder) == folder
    (folder / "notes.txt").write_text("x")
    assert "'notes.txt'" in cachedir.problem(folder)
    (folder / "notes.txt").unlink()
    (folder / cachedir.MARKER).unlink()
    (folder / cachedir.MARKER).mkdir()  # a folder by that name is not the marker
    assert cachedir.MARKER in cachedir.problem(folder)


def test_a_cache_an_earlier_version_wrote_is_adopted(tmp_path):
    """Caches written before the marker existed hold entries with their manifest, .locks and build folders;
    they are adopted as they are, entries kept."""
    old = tmp_path / "old"
    c = RunCache(old)
    keys = sorted(c.get_or_run(recipe(s), compute=FakeCompute())["key"] for s in (0.1, 0.2))
    (old / cachedir.MARKER).unlink()  # as the previous version left it
    (old / "README.md").write_text("x")
    (old / f".work-{keys[0]}-123-abcdefgh").mkdir()  # a killed run's folder, where that version made it
    (old / "_bench").mkdir()  # the benchmarks' own store
    assert {p.name for p in old.iterdir()} == {*keys, ".locks", ".scratch", "README.md", "_bench",
                                               f".work-{keys[0]}-123-abcdefgh"}
    adopted = RunCache(old)
    assert (old / cachedir.MARKER).is_file() and adopted.keys() == keys
    assert all(adopted.get(k) is not None for k in keys)
    assert not (old / f".work-{keys[0]}-123-abcdefgh").exists()  # nobody holds its key: a dead run's

    mixed = tmp_path / "mixed"  # the same, plus one thing the explorer did not write: refused, untouched
    RunCache(mixed).get_or_run(recipe(), compute=FakeCompute())
    (mixed / cachedir.MARKER).unlink()
    (mixed / "Documents").mkdir()
    (mixed / f"{'0' * 20}").mkdir()  # a run key's name without a manifest is not an entry
    before = tree(mixed)
    with pytest.raises(ValueError, match=r"it holds '00000000000000000000' and 'Documents', which the explorer"):
        RunCache(mixed)
    assert tree(mixed) == before


def test_a_folder_whose_scratch_folder_holds_other_things_is_not_adopted(tmp_path):
    """A folder holding only `.scratch` counted as an earlier version's cache: it was adopted and every old folder
    in `.scratch` deleted as a killed run's leftovers."""
    someone = tmp_path / "someone"
    (someone / ".scratch" / "build-cache-2019").mkdir(parents=True)
    (someone / ".scratch" / "build-cache-2019" / "blob").write_text("data")
    before = tree(someone)
    with pytest.raises(ValueError, match=r"it holds '.scratch/build-cache-2019', which the explorer did not write"):
        RunCache(someone)
    assert tree(someone) == before and not (someone / cachedir.MARKER).exists()


@pytest.mark.parametrize("value,why", [
    ("FILE", "it is not a folder"),
    ("/dev/null", "it is not a folder"),
    ("FILE/sub", "is not a folder"),
    ("/proc/self", ""),
])
def test_a_cache_setting_that_is_not_a_writable_folder_is_one_line(tmp_path, monkeypatch, capsys, value, why):
    """EXPLORER_CACHE_DIR set to a file, /dev/null or /proc/self used to end in FileExistsError without
    naming the variable."""
    file = tmp_path / "settings.txt"
    file.write_text("keep me")
    value = value.replace("FILE", str(file))
    monkeypatch.setenv("EXPLORER_CACHE_DIR", value)
    head = f"EXPLORER_CACHE_DIR={value!r} must be a folder the explorer can write ("
    for attempt in (RunCache, settings.check_all):
        with pytest.raises(ValueError) as e:
            attempt()
        assert str(e.value).startswith(head) and why in str(e.value) and "\n" not in str(e.value)
    assert main(["cache", "verify", "--fix"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {head}")
    assert file.read_text() == "keep me"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_folder_setting_is_the_default_not_the_current_folder(tmp_path, monkeypatch, value):
    """EXPLORER_USER_MODELS="" used to write added models into the current folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("EXPLORER_USER_MODELS", "EXPLORER_USER_DATA"):
        monkeypatch.setenv(name, value)
    assert byo.user_models_dir() == Path(baselines.MODELS_DIR) / "user"
    assert byo.user_data_dir() == Path(baselines.MODELS_DIR).parent / "data" / "user"
    monkeypatch.setenv("EXPLORER_CACHE_DIR", value)
    assert cachedir.cache_dir() == ROOT / "cache"
    assert os.listdir(tmp_path) == []
