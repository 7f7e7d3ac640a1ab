"""Shared pieces of tests/test_bad_input*.py: run the CLI in-process, read its stderr, snapshot folders."""

import hashlib
import re
from pathlib import Path

import pytest

from distill.cli import main

# tqdm bars and transformers' "Writing model shards" bars go to stderr too; they are not messages.
# "40%|" or "[00:03<": tqdm's own marks; "[1/2] name: loading ...": eval's per-model progress lines;
# "... in 3 s (41.2 tokens/s)": the throughput line a sampling loop ends with.
_PROGRESS = re.compile(r"\d+%\||\[\d+:\d\d[<,]|^\[\d+/\d+\] |tokens/s\)$")


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


def tiny_model_run(root: Path) -> Path:
    """A folder marked as a distill training run whose final/ holds a 1-block random GPT-2 with the debug
    tokenizer; returns final/. Loads in a fraction of a second."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained("data/tiny_tokenizer")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tok)))
    run = Path(root) / "run"
    (run / "final").mkdir(parents=True)
    model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    (run / ".distill").write_text('{"tool": "distill", "kind": "run"}\n')
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run / "final"


def generations_file(path: Path, text: str = "He said she was a nurse.") -> Path:
    """A small generations.jsonl `distill score` accepts: two models, 2 professions x 2 prompts x 2 samples."""
    import json

    rows = []
    for model in ("a", "b"):
        for i, (cat, prof) in enumerate([("c1", "nurse"), ("c1", "nurse"), ("c2", "pilot"), ("c2", "pilot")]):
            for k in range(2):
                rows.append({"model": model, "category": cat, "profession": prof, "prompt_index": i, "sample": k,
                             "text": text if (i + k) % 2 else "She said he was a pilot."})
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(path)


def fail_writes_under(monkeypatch, root: Path, err: int, spare: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> None:
    """Every write under `root` fails with OSError(err), as on a read-only file system (EROFS), a full disk
    (ENOSPC) or a folder without permission (EACCES): os.open for writing, os.mkdir, open()/io.open for
    writing, and renames or links into `root`. Reads work. A path with a part matching one of the `spare`
    patterns (fnmatch) is still written (a lock file, the probe of the output check, a run set aside: a disk
    that fills up after the checks passed); with `only`, just paths with a part matching one of those fail."""
    import builtins
    import errno as errno_module
    import io
    import os
    from fnmatch import fnmatch

    root = Path(root).resolve()
    message = os.strerror(err)

    def hit(path) -> bool:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        if not (p == root or root in p.parents):
            return False
        parts = p.relative_to(root).parts or (p.name,)
        if any(fnmatch(part, pat) for part in parts for pat in spare):
            return False
        return not only or any(fnmatch(part, pat) for part in parts for pat in only)

    def fail(path):
        raise OSError(err, message, os.fsdecode(path))

    real_os_open, real_mkdir, real_open = os.open, os.mkdir, builtins.open
    real_replace, real_rename, real_link = os.replace, os.rename, os.link
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def os_open(path, flags, *a, **k):
        if flags & writing and hit(path):
            fail(path)
        return real_os_open(path, flags, *a, **k)

    def mkdir(path, *a, **k):
        if hit(path):
            fail(path)
        return real_mkdir(path, *a, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and hit(file):
            fail(file)
        return real_open(file, mode, *a, **k)

    def move(real):
        def moved(src, dst, *a, **k):
            if hit(dst):
                fail(dst)
            return real(src, dst, *a, **k)
        return moved

    assert err in (errno_module.EROFS, errno_module.ENOSPC, errno_module.EACCES, errno_module.EDQUOT)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "replace", move(real_replace))
    monkeypatch.setattr(os, "rename", move(real_rename))
    monkeypatch.setattr(os, "link", move(real_link))


def nan_loss_at(monkeypatch, n: int | None = None) -> None:
    """`distill train` diverges on demand: the loss of the n-th micro-batch (of every one if n is None) is NaN.
    Injected through kd_step's `loss_fn`, the argument the bench uses to swap the loss."""
    import functools

    from distill.train import loop
    from distill.train.losses import distill_loss

    calls = {"n": 0}

    def nan_loss(*args, **kwargs):
        total, kd, ce = distill_loss(*args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if n is None or calls["n"] == n else total), kd, ce

    monkeypatch.setattr(loop, "kd_step", functools.partial(loop.kd_step, loss_fn=nan_loss))
