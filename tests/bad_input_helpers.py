"""Shared pieces of tests/test_bad_input*.py: run the CLI in-process, read its stderr, snapshot folders."""

import hashlib
import re
from pathlib import Path

import pytest

from distill.cli import main

# tqdm bars and transformers' "Writing model shards" bars go to stderr too; they are not messages.
# "40%|" or "[00:03<": tqdm's own marks; "[1/2] name: loading ...": eval's per-model progress lines.
_PROGRESS = re.compile(r"\d+%\||\[\d+:\d\d[<,]|^\[\d+/\d+\] ")


def run_cli(*argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code


def message_lines(err: str) -> list[str]:
    """stderr lines that are not progress bars."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not _PROGRESS.search(ln)]


def assert_one_error_line(capsys, command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = message_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"distill {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict:
    """{relative path: sha256 or 'dir'} of everything under `root` (hidden files included)."""
    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def no_leftovers(root: Path) -> list[str]:
    """Lock files, set-aside runs, temporary folders and pending recipes that must not outlive a command."""
    root = Path(root)
    bad = (".lock", ".replaced-", ".tmp-", ".old-", ".recipe.pending", ".distill-probe-")
    return [str(p) for p in root.rglob("*") if any(p.name.startswith(b) for b in bad)] if root.exists() else []
