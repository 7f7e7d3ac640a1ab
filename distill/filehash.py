"""A file's sha256, computed once per version of the file: remembered in a JSON memo by path, size and mtime.

    from distill.filehash import file_sha256
    digest = file_sha256(Path("cache/teacher/x.gguf"), Path("cache/teacher/.file_hashes.json"))

Used to key caches on content (the transfer set on its teacher's files, the de-quantized teacher on its GGUF)
without reading a 100 MB file on every run. A file rewritten in place gets a new mtime, so it is hashed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from distill.atomic import write_text_atomic


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, memo_path: Path) -> str:
    st = path.stat()
    memo = {}
    if memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
    key = str(path.resolve())
    hit = memo.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_of(path)}
    try:
        write_text_atomic(memo_path, json.dumps(memo, indent=1))
    except OSError:
        pass  # a memo that cannot be written (read-only folder) only costs hashing the file again next time
    return memo[key]["sha256"]
