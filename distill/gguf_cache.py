"""A GGUF model de-quantized once per machine: a standard Hugging Face folder beside the GGUF file.

    from distill.gguf_cache import dequantized_dir
    folder = dequantized_dir(Path("cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf"))  # built on first use

`distill.models` loads every .gguf path through this, so no caller changes. Why: transformers de-quantizes a
GGUF file on every load (it parses the whole vocabulary from the metadata, maps tensor names, de-quantizes each
tensor and converts the tokenizer), and a demo loads its teacher in five processes. Reading the folder is a
safetensors read.

The folder, `<gguf stem>.hf-<first 16 hex digits of the GGUF's sha256>`, holds model.safetensors, config.json,
generation_config.json, the tokenizer files, and manifest.json. Weights are float32: the GGUF path
de-quantizes to float32 and only then casts to the asked dtype, so a load in any dtype from the folder gives
the same weights as a load from the GGUF. A new GGUF (other content) gets a new folder.

Writing: the folder is filled under a temporary name, manifest.json (each file's size and sha256) is written
last, and the folder is renamed into place, so a crash leaves no folder that passes the check. Builders hold
an exclusive lock on `.<folder name>.lock` beside it: a second process waits, then finds the folder built.

Checking, on every load, cheaply: the manifest is there and of this format and these library versions; every
file it lists is there with its size; small files match their sha256; a safetensors file's header matches its
sha256 and its tensors end exactly at the end of the file. (A flipped byte inside tensor data is not caught:
the full hash of the weights is taken only when the folder is written.) A folder that fails is rebuilt, with
one line on stderr saying why.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from distill.atomic import atomic_dir, write_text_atomic
from distill.errors import UserError
from distill.filehash import file_sha256, sha256_of

FORMAT = 1
MANIFEST = "manifest.json"
MEMO = ".file_hashes.json"  # the GGUF's sha256, remembered beside it by size and mtime
SMALL_FILE = 16 << 20  # files up to this size are hashed in full on every check; larger ones by header only


def dequantized_dir(gguf: Path) -> Path | None:
    """The checked folder for `gguf`, built first if missing or damaged. None when it cannot be written here
    (a read-only folder, a full disk): the caller then loads the GGUF itself, as before."""
    sha = file_sha256(gguf, gguf.parent / MEMO)
    folder = gguf.with_name(f"{gguf.stem}.hf-{sha[:16]}")
    if _problem(folder, sha) is None:
        return folder
    try:
        with _build_lock(folder):
            problem = _problem(folder, sha)  # another process may have built it while this one waited
            if problem is None:
                return folder
            if problem == "missing":
                print(f"distill: de-quantizing {gguf} once, into {folder}/ (later loads read that folder)",
                      file=sys.stderr)
            else:
                print(f"distill: the de-quantized copy {folder}/ of {gguf.name} is damaged ({problem}); "
                      "rebuilding it", file=sys.stderr)
            _build(gguf, folder, sha)
    except OSError as exc:
        if _problem(folder, sha) is None:  # a concurrent builder without a lock won the rename
            return folder
        print(f"distill: could not write the de-quantized copy {folder}/ ({exc}); loading {gguf} directly",
              file=sys.stderr)
        return None
    return folder


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    lock_path = folder.with_name(f".{folder.name}.lock")
    try:
        import fcntl
    except ImportError:  # no POSIX locks: the atomic rename alone keeps the folder whole
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(gguf: Path, folder: Path, sha: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # transformers' errors for a bad file
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise UserError(f"could not load a model from {str(gguf)!r} (is the file complete? re-fetch it with "
                        f"`make teacher`): {first}") from exc
    # The weights are plain float tensors now; only the GGUF marker stops save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: _describe(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": FORMAT, "gguf": {"name": gguf.name, "sha256": sha, "size": gguf.stat().st_size},
                    "versions": _versions(), "files": files}
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))  # last: its presence means complete


def _describe(path: Path) -> dict:
    entry = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    if path.suffix == ".safetensors":
        entry["header_sha256"] = _safetensors_header_sha256(path)
    return entry


def _problem(folder: Path, sha: str) -> str | None:
    """Why `folder` cannot be used ("missing" when it is not there), or None when it passes the cheap check."""
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST}: a build did not finish"
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST}: {exc}"
    if manifest.get("format") != FORMAT or manifest.get("gguf", {}).get("sha256") != sha:
        return "written for another format or GGUF file"
    if manifest.get("versions") != _versions():
        return f"written by {manifest.get('versions')}, now {_versions()}"
    for name, want in manifest.get("files", {}).items():
        problem = _file_problem(folder / name, want)
        if problem:
            return f"{name}: {problem}"
    return None


def _file_problem(path: Path, want: dict) -> str | None:
    try:
        size = path.stat().st_size
        if size != want["size"]:
            return f"{size} bytes, expected {want['size']}"
        if "header_sha256" in want:
            if _safetensors_header_sha256(path) != want["header_sha256"]:
                return "header differs from the manifest"
        elif size <= SMALL_FILE and sha256_of(path) != want["sha256"]:
            return "content differs from the manifest"
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable: {exc}"
    return None


def _safetensors_header_sha256(path: Path) -> str:
    """sha256 of a safetensors file's JSON header; ValueError unless the tensors it lists end at the file's end
    (8 bytes of header length, the header, then the tensor data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError("header longer than the file")
        raw = f.read(n)
    header = json.loads(raw)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"tensors end at byte {8 + n + end} of {size}")
    return hashlib.sha256(raw).hexdigest()


def _versions() -> dict:
    """The libraries that de-quantize and write the folder: an upgrade rebuilds it, so the folder never
    disagrees with what the GGUF path would load today."""
    out = {}
    for pkg in ("transformers", "gguf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out

