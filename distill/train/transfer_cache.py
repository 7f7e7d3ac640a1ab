"""The transfer-set cache folder: written whole, verified on every reuse, built by one process at a time.

    from distill.train import transfer_cache
    manifest = transfer_cache.read_manifest(folder)     # None: missing, incomplete or damaged
    with transfer_cache.building(folder):               # the lock; says so when a damaged set is rebuilt
        with atomic_dir(folder) as tmp:
            ...write train.jsonl, heldout.jsonl, manifest.json into tmp...
            transfer_cache.write_checksums(tmp)         # last: a set without it was never finished
    transfer_cache.check_cache_dir(cfg)                 # before any model: writable, or the set is there

A set lives in CACHE_DIR/<key>/ (distill.train.transfer). The folder is renamed into place whole, but a file
can still be damaged afterwards (a disk that filled up while copying a cache, a truncated sync), and a
damaged set used to be reused as if valid, failing later with a generic datasets error on every rerun. So
`checksums.json`, written last, holds the sha256 and size of every file, as a checkpoint's files are checked
before a resume; a set whose files do not match is rebuilt, with one line saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distill.errors import UserError
from distill.filehash import sha256_of
from distill.rundir import RunLock, check_writable

CHECKSUMS = "checksums.json"
FILES = ("train.jsonl", "heldout.jsonl", "manifest.json")


def write_checksums(folder: Path) -> None:
    """checksums.json over FILES: call it after every other file of the set is written."""
    folder = Path(folder)
    sums = {name: {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size} for name in FILES}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n")


def problem(folder: Path) -> str | None:
    """What is wrong with the set in `folder` ('train.jsonl is truncated', ...), or None when it is complete
    and every file matches its checksum. A folder that does not exist has no problem: it is simply missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return f"it has no {CHECKSUMS} (its writing did not finish, or an older distill wrote it)"
    except (OSError, ValueError):
        return f"its {CHECKSUMS} is unreadable"
    for name in FILES:
        f = folder / name
        want = sums.get(name) if isinstance(sums, dict) else None
        if not isinstance(want, dict):
            return f"{CHECKSUMS} does not list {name}"
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want.get("bytes"):
            return f"{name} has {size} bytes, {want.get('bytes')} were written"
        if sha256_of(f) != want.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete, verified set in `folder`; None when it is missing or damaged."""
    folder = Path(folder)
    if not (folder / CHECKSUMS).is_file() or problem(folder) is not None:
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def lock_file(folder: Path) -> Path:
    """The lock of a set beside its folder (the folder itself is replaced by a rename)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def building(folder: Path) -> Iterator[None]:
    """Hold the set's lock while it is built: a second process building the same set (another `distill corpus`
    or `distill train` of the same recipe) is refused in one line naming this one's PID. Creating the lock
    is also the first write into the cache folder, so a folder that cannot be written is refused here, before
    any sampling. A damaged set found in `folder` is named on stdout: it is built again."""
    with RunLock(folder, "transfer set", lock_file=lock_file(folder),
                 advice="wait for it to finish: the set is then reused"):
        damaged = problem(folder)
        if damaged:
            print(f"transfer set {folder} is damaged ({damaged}); building it again")
        yield


def check_cache_dir(cfg, device=None) -> None:
    """Before any model loads: the recipe's data.transfer_set.cache_dir can be written, or it already holds this
    recipe's finished set (a read-only copy of sets built elsewhere is read as it is). Otherwise one line, where
    the set used to fail with an OSError only once the teacher was built."""
    tcfg = cfg.data.transfer_set
    if tcfg is None:
        return
    cache_dir = Path(tcfg.cache_dir).expanduser()
    try:
        check_writable(cache_dir, "data.transfer_set.cache_dir")
        return
    except UserError as exc:
        refusal = str(exc).split("; choose")[0]
    if _finished_set(cfg, cache_dir, device) is None:
        raise UserError(f"{refusal}, and it holds no finished transfer set of this recipe to reuse; set "
                        "data.transfer_set.cache_dir to a folder you can write")


def _finished_set(cfg, cache_dir: Path, device) -> Path | None:
    """This recipe's finished set in `cache_dir`, found without loading the teacher; None when it is not there
    or cannot be known without loading (a hub teacher not in the local cache)."""
    import torch

    from distill.train.transfer_identity import read_seed_prompts, teacher_identity, transfer_key

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    identity = teacher_identity(cfg, cache_dir / "file_hashes.json", device)
    if identity is None:
        return None
    tcfg = cfg.data.transfer_set
    folder = cache_dir / transfer_key(identity, tcfg, read_seed_prompts(tcfg.seed_prompts), cfg.seed)
    return folder if read_manifest(folder) is not None else None
