"""The page reads local folders only inside EXPLORER_DATA_ROOTS (issue 21: `/etc` answered with its subfolder
names, `/usr/share` loaded 113 "classes"). Symbolic links and `..` are resolved before the check, and the answer
for a folder outside says nothing about whether it exists."""

import os
from pathlib import Path

import pytest

from explorer.app import service
from explorer.core.roots import ENV, check_page_folder, data_roots


def test_no_roots_by_default_and_the_parsing(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert data_roots() == ()
    assert data_roots(f" {tmp_path} {os.pathsep}{os.pathsep}/srv/x ") == (tmp_path.resolve(), Path("/srv/x"))
    with pytest.raises(ValueError, match=rf"{ENV}='data': 'data' is not an absolute path"):
        data_roots("data")


def test_folders_inside_pass_and_outside_are_one_line_that_names_the_roots(tmp_path):
    root = tmp_path / "allowed"
    (root / "cats").mkdir(parents=True)
    assert check_page_folder(root / "cats", [root.resolve()]) == (root / "cats").resolve()
    assert check_page_folder(root, [root.resolve()]) == root.resolve()
    answers = []
    for outside in ("/etc", "/usr/share", "/", "/no/such/folder", str(root / ".." / ".."), f"{root}/../allowed-not"):
        with pytest.raises(ValueError) as e:
            check_page_folder(outside, [root.resolve()])
        msg = str(e.value)
        assert "\n" not in msg and repr(outside) in msg and str(root.resolve()) in msg and ENV in msg
        answers.append(msg.replace(repr(outside), "PATH"))
    assert len(set(answers)) == 1, "the answer differs between folders that exist and those that do not"


def test_a_symbolic_link_out_of_a_root_is_refused(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "etc").symlink_to("/etc")
    with pytest.raises(ValueError, match="outside the folders this page may read"):
        check_page_folder(root / "etc", [root.resolve()])


def test_without_roots_the_page_reads_no_folder_but_its_uploads(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("EXPLORER_USER_DATA", str(tmp_path / "uploads"))
    (tmp_path / "uploads" / "mine").mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"'/etc' refused: this page reads no local folders .*{ENV}"):
        service.page_folder("/etc")
    assert service.page_folder(str(tmp_path / "uploads" / "mine")) == (tmp_path / "uploads" / "mine").resolve()
    # the service refuses before any work, whatever the page sends
    with pytest.raises(ValueError, match="'/usr/share' refused"):
        service.add_model(str(tmp_path / "none.pt"), arch="digits_cnn", dataset="imagefolder", root="/usr/share",
                          name=None)
