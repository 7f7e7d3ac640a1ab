"""Which transfer set a recipe names: the teacher's identity, the seed prompts, and the key of the set's folder.

    from distill.train.transfer_identity import read_seed_prompts, teacher_identity, transfer_key
    key = transfer_key(teacher_identity(cfg, memo, device), cfg.data.transfer_set, prompts, cfg.seed)

Apart from `distill.train.transfer` because the cache's checks (`transfer_cache`) look a finished set up by its
key before any teacher loads, and the builder uses the cache: both read the key from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from distill.config import Config, TransferSetConfig
from distill.errors import UserError
from distill.filehash import file_sha256 as _file_sha256

MANIFEST_VERSION = 3  # 3: checksums.json beside the files; seed prompts that name no scored profession
# Settings that change where or how fast the set is built, not what is sampled: left out of the key.
_NOT_IN_KEY = ("batch_size", "cache_dir")


def read_seed_prompts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data.transfer_set.seed_prompts: {str(path)!r} not found (one prompt a line)")
    # Trailing spaces are stripped: a prompt ending in a space makes a BPE tokenizer continue oddly (BOLD's
    # prompts have this problem), because words carry their leading space inside the token.
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise UserError(f"data.transfer_set.seed_prompts: {str(path)!r} has no prompts")
    return prompts


# ---------------------------------------------------------------------------------------------------------
# Teacher identity: a content hash, cheap on the second call (per-file hashes cached by path, size, mtime).


def _path_identity(name_or_path: str, memo_path: Path) -> str | None:
    """sha256 over the files of a .gguf / model dir; None for a hub id not in the local cache."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _file_sha256(path, memo_path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        parts = [f"{f.name}:{_file_sha256(f, memo_path)}" for f in files]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    if name_or_path.endswith(".gguf") or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return None  # a missing local path: loading it gives the proper error
    try:  # a hub id: the snapshot's commit hash pins it, if the model is already in the local cache
        from huggingface_hub import snapshot_download

        snap = snapshot_download(name_or_path, local_files_only=True)
        return f"hub:{name_or_path}@{Path(snap).name}"
    except Exception:  # not cached (or not a hub id): known only after loading
        return None


def teacher_identity(cfg: Config, memo_path: Path, device=None) -> str | None:
    """The teacher's content hash and the dtype it samples in (`auto` resolved for `device`: bf16 and fp32
    sample different text, so an AMX machine and an AVX2 one build different sets)."""
    from distill.precision import resolve_dtype

    t = cfg.teacher
    if t.config is not None:  # random teacher: its config, the seed that initialises it, and its tokenizer
        tok_id = _path_identity(t.tokenizer, memo_path) or f"hub:{t.tokenizer}"
        blob = json.dumps({"config": t.config, "seed": cfg.seed, "tokenizer": tok_id}, sort_keys=True)
        return "random:" + hashlib.sha256(blob.encode()).hexdigest()
    ident = _path_identity(t.name_or_path, memo_path)
    if ident is None:
        return None
    if t.tokenizer and t.tokenizer != t.name_or_path:
        ident += "+tok:" + (_path_identity(t.tokenizer, memo_path) or t.tokenizer)
    return f"{ident}|{resolve_dtype(t.dtype, device)[0]}"


def transfer_key(identity: str, tcfg: TransferSetConfig, prompts: list[str], seed: int) -> str:
    settings = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in _NOT_IN_KEY and k != "seed_prompts"}
    blob = json.dumps(
        {"v": MANIFEST_VERSION, "teacher": identity, "settings": settings, "seed": seed,
         "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
