import io
import os
import stat
import zipfile

import pytest

from explorer.models.safezip import extract_zip, tree_root


def _zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, b"x")
            else:
                z.writestr(name, data)
    return path


def test_normal_tree_extracts(tmp_path):
    z = _zip(tmp_path / "ok.zip", [("data/cat/1.png", b"a"), ("data/dog/2.png", b"b"), ("__MACOSX/._x", b"")])
    out = extract_zip(z, tmp_path / "out")
    assert out["files"] == 2 and out["skipped"] == ["__MACOSX/._x"]
    assert tree_root(tmp_path / "out") == tmp_path / "out" / "data"


@pytest.mark.parametrize("name,why", [("../evil.png", "climbs out"), ("a/../../evil.png", "climbs out"),
                                      ("/etc/evil.png", "absolute path"), ("C:/evil.png", "absolute path")])
def test_path_escapes_are_refused_and_nothing_is_left(tmp_path, name, why):
    z = _zip(tmp_path / "bad.zip", [("data/cat/1.png", b"a"), (name, b"x")])
    with pytest.raises(ValueError, match=why):
        extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()


def test_symlink_entry_is_refused(tmp_path):
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "link.zip", [("data/link", info)])
    with pytest.raises(ValueError, match="symbolic link"):
        extract_zip(z, tmp_path / "out")


def test_zip_bomb_is_refused_while_extracting(tmp_path):
    # 64 MB of zeros compresses about 1000x: within the size cap, over the ratio cap
    z = _zip(tmp_path / "bomb.zip", [("data/cat/zeros.png", b"\0" * (64 << 20))])
    assert (tmp_path / "bomb.zip").stat().st_size < 200_000
    with pytest.raises(ValueError, match="zip bomb"):
        extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="expands past the cap of 1 MB"):
        extract_zip(z, tmp_path / "out2", max_ratio=10_000, max_bytes=1 << 20)


def test_lying_header_is_caught_by_counting_bytes(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("data/a.png", b"y" * (3 << 20))
    raw = bytearray(buf.getvalue())
    # the central directory says 10 bytes; the bytes written must still be counted (zipfile also checks CRC)
    (tmp_path / "lie.zip").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="expands past the cap"):
        extract_zip(tmp_path / "lie.zip", tmp_path / "out", max_bytes=1 << 20)


def test_file_count_cap_and_bad_zip(tmp_path):
    z = _zip(tmp_path / "many.zip", [(f"d/c/{i}.png", b"a") for i in range(30)])
    with pytest.raises(ValueError, match="holds 30 entries, over the cap of 10 entries"):
        extract_zip(z, tmp_path / "out", max_files=10)
    (tmp_path / "no.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip file"):
        extract_zip(tmp_path / "no.zip", tmp_path / "out")


def test_folder_entries_count_toward_the_entry_cap(tmp_path, monkeypatch):
    """150,000 folder entries used to pass the 100,000-entry cap, which counted files only."""
    with zipfile.ZipFile(tmp_path / "dirs.zip", "w") as z:
        for i in range(150):
            z.writestr(zipfile.ZipInfo(f"d/{i}/"), b"")
        z.writestr("d/0/a.png", b"a")
    monkeypatch.setenv("EXPLORER_ZIP_MAX_FILES", "100")
    with pytest.raises(ValueError, match="holds 151 entries, over the cap of 100 entries"):
        extract_zip(tmp_path / "dirs.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_many_small_bombs_are_refused_over_the_whole_archive(tmp_path):
    """60 entries of 1 MiB of zeros (about 920x) passed the ratio cap of 200, which looked at entries over
    1 MiB only; the ratio now holds per entry and over the whole archive."""
    z = _zip(tmp_path / "many.zip", [(f"d/c/{i}.png", b"\0" * (1 << 20)) for i in range(60)])
    assert 60 * (1 << 20) / z.stat().st_size > 800
    with pytest.raises(ValueError, match="zip bomb"):
        extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # each entry alone, below a mebibyte, is checked too
    one = _zip(tmp_path / "one.zip", [("d/c/0.png", b"\0" * (512 << 10)), ("d/c/pad.png", os.urandom(1 << 20))])
    with pytest.raises(ValueError, match="zip entry 'd/c/0.png' expands past 200x"):
        extract_zip(one, tmp_path / "out1")


def test_ordinary_images_pass_the_ratio_checks(tmp_path):
    z = _zip(tmp_path / "ok.zip", [(f"d/c/{i}.png", os.urandom(100_000)) for i in range(5)]
             + [("d/c/empty.txt", b""), ("d/c/tiny.txt", b"\0" * 4000)])
    assert extract_zip(z, tmp_path / "out")["files"] == 7
