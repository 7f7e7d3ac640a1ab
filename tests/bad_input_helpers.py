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
