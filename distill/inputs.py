"""Input files checked before any model loads: they exist, and text files hold text.

    from distill.inputs import check_text_file, check_train_inputs
    check_text_file("data/heldout.txt", "--text")        # UserError if empty, binary or not UTF-8
    protected = check_train_inputs(cfg)                   # the recipe's local input paths, all checked

Why: a missing `data.path` was once reported after the teacher and student had loaded, and an empty, binary
or non-UTF-8 corpus gave datasets' "An error occurred while generating the dataset".
"""

from __future__ import annotations

import codecs
from pathlib import Path

from distill.errors import UserError

_TEXT_SUFFIXES = {".txt", ".text", ".json", ".jsonl", ".csv"}
_CHUNK = 1 << 20


def text_file_problem(path: Path) -> str | None:
    """'empty', 'binary (a NUL byte at offset N)' or 'not UTF-8 (...)' for a file that is not usable text;
    None for a good one. Reads the whole file in 1 MiB chunks (a streaming decoder, little memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, any_text = 0, False
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            nul = chunk.find(b"\0")
            if nul >= 0:
                return f"binary (a NUL byte at offset {offset + nul})"
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return f"not UTF-8 (byte 0x{chunk[exc.start]:02x} at offset {offset + exc.start}); convert it with iconv"
            any_text = any_text or bool(text.strip())
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "not UTF-8 (it ends inside a multi-byte character)"
    return None if any_text else "empty" if offset == 0 else "empty (only whitespace)"


def check_text_file(path, what: str) -> None:
    problem = text_file_problem(Path(path))
    if problem:
        raise UserError(f"{what} {path} is {problem}; give a UTF-8 text file")


def check_data_path(path: str, what: str) -> None:
    """A corpus path: it exists, and each text file in it (a folder: every .txt/.json/.jsonl/.csv) is text."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} {path!r} does not exist")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _TEXT_SUFFIXES)
    for f in files:
        if f.suffix in _TEXT_SUFFIXES:  # parquet is binary by design; other suffixes are refused by data.py
            check_text_file(f, what if f == p else f"{what} file")


def _local(path: str | None) -> Path | None:
    """A recipe path that names a local file or folder (hub ids and None give None)."""
    if not path:
        return None
    p = Path(path).expanduser()
    return p if p.exists() or path.startswith((".", "/", "~")) or path.endswith(".gguf") else None


def check_train_inputs(cfg) -> list[Path]:
    """Check the recipe's local inputs before any model loads; returns them (an --overwrite may not touch
    them). Model folders are only checked to exist here; `models` checks what is inside them."""
    inputs = []
    for role in ("teacher", "student"):
        m = getattr(cfg, role)
        for key in ("name_or_path", "tokenizer"):
            p = _local(getattr(m, key))
            if p is not None and p.suffix == ".gguf":
                inputs.append(p)  # models.load_* refuses a missing GGUF file with the fetch hint, before loading
            elif p is not None:
                if not p.exists():
                    raise UserError(f"{role}.{key} {getattr(m, key)!r} does not exist; give a local model dir, "
                                    "a .gguf file or a hub id")
                inputs.append(p)
    for key in ("path", "validation_path"):
        value = getattr(cfg.data, key)
        if value:
            check_data_path(value, f"data.{key}")
            inputs.append(Path(value).expanduser())
    for key in ("lexicon", "names"):
        value = getattr(cfg.crr, key)
        if value:
            if not Path(value).expanduser().is_file():
                raise UserError(f"crr.{key} file {value!r} not found")
            inputs.append(Path(value).expanduser())
    ts = cfg.data.transfer_set
    if ts is not None and ts.seed_prompts:
        inputs.append(Path(ts.seed_prompts).expanduser())
    if cfg.train.probe:
        from distill.train.fairness import validation_professions

        validation_professions(cfg.train.probe_prompts)  # a prompt set without a validation half: one line now
        if cfg.train.probe_prompts != "professions":
            inputs.append(Path(cfg.train.probe_prompts).expanduser())
    return inputs
