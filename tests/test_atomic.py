from pathlib import Path

import pytest

from distill.atomic import atomic_dir, atomic_file, write_text_atomic


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]  # no temporary left behind
    with atomic_file(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # invisible until the block ends
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["a.txt"]


def test_atomic_dir_replaces_a_full_folder_and_keeps_it_on_failure(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "x.json").write_text("1")
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "y.json").write_text("2")
        raise OSError("disk full")
    assert _names(target) == ["x.json"]
    with atomic_dir(target) as tmp:
        (tmp / "y.json").write_text("2")
    assert _names(target) == ["y.json"]
    assert _names(tmp_path) == ["run"]  # neither the temporary nor the old folder is left


def test_atomic_dir_without_replace_keeps_what_is_there(tmp_path):
    target = tmp_path / "cache-key"
    with atomic_dir(target) as tmp:
        (tmp / "first").write_text("1")
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "second").write_text("2")
    assert _names(target) == ["first"]
    assert _names(tmp_path) == ["cache-key"]
