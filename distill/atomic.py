"""Write a file or a folder whole or not at all: fill a temporary sibling, then rename it into place.

A rename within one filesystem is atomic, so a reader (or a crash) sees the old version or the new one, never a
half-written one. Every writer of results, checkpoints, caches and downloads goes through these two helpers:

    with atomic_file(path) as tmp:      # tmp: a path beside `path`; write it, then it replaces `path`
        tmp.write_text(text)
    with atomic_dir(folder) as tmp:     # tmp: an empty folder beside `folder`; fill it, then it replaces `folder`
        (tmp / "a.json").write_text("{}")

If the block raises, the temporary sibling is removed and the target is left as it was. The temporary names
(`.tmp-NAME-PID`, `.old-NAME-PID`) hold the process id, so concurrent writers never share one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{tag}-{path.name}-{os.getpid()}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _name_target(exc, tmp, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data) -> None:
    """`data` as indented JSON with a final newline, written whole or not at all (its folder made if missing)."""
    import json

    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """An empty temporary folder beside `path`, renamed onto it when the block ends without an error.

    An existing `path` is moved aside first and deleted only after the new one is in place (a folder cannot be
    renamed over a non-empty folder). With replace=False an existing `path` is kept and the new one dropped:
    for caches, where another process that finished the same folder first has written the same thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if path.exists() and not replace:
            return
        old = _sibling(path, "old") if path.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        _name_target(exc, tmp, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _name_target(exc: OSError, tmp: Path, path: Path) -> None:
    """Let a failed write name what the user asked for (`path`, or the file inside it), not the temporary
    sibling, and name it at all when the OS names nothing (a write() on a full disk): its one-line message
    (distill.errors.os_error_line) then says which output could not be written."""
    if exc.errno is None:  # OSError("message"): no OS error to place; naming a file would hide the message
        return
    name = os.fsdecode(exc.filename) if exc.filename is not None else None
    if name is None:
        exc.filename = str(path)
    elif name == str(tmp) or name.startswith(str(tmp) + os.sep):
        exc.filename = str(path) + name[len(str(tmp)):]


def rescue_copy(text: str, prefix: str, suffix: str) -> str | None:
    """After a failed write at the end of a long job: `text` into a fresh temporary file, whose path the
    one-line error names; None when that fails too."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return name
    except OSError:
        return None
