"""Output directories that never lose data: a marker, an exclusive lock, and replace-after-success.

    from distill.rundir import prepare_output_dir, RunLock
    out = prepare_output_dir("out/eval", kind="report", overwrite=True, protected_paths=[model_dir, text_file])

Rules (an `--overwrite` that deletes what it did not write can take a training corpus or a scored model):
- `--overwrite` only ever replaces a directory this tool wrote for the same purpose: one holding the
  marker file `.distill` naming its kind (run, report, ...), or an older one holding only files this tool
  writes. Anything else is refused with one line; the user removes it by hand.
- An output may neither be, contain, nor lie inside an input of the same command (a corpus, a model
  being scored, a prompt file): writing there would overwrite or pollute the input.
- Checks are pure reads plus a probe file, so they run before any model loads.
- Replacing happens after the new work is known to start: the old entries are moved aside into
  `.replaced-<pid>/` and deleted once the new run has its first checkpoint (`discard_replaced`), or moved
  back if it fails before that (`restore_replaced`).
- A replaced run still held aside (its `--overwrite` was killed before the first checkpoint) is named by
  every later refusal on that folder, with how to restore it (`python -m distill.rundir restore DIR`); a
  second `--overwrite` deletes it only with `--discard-replaced`.
- `RunLock` holds an exclusive `flock` on `.lock` in the output directory (train, eval, score and the study)
  or on a sibling `.NAME.lock` (a samples file, a transfer set); the file names the holder's PID. Every
  command that writes an output takes it, so a second one on the same output is refused with that PID. The
  kernel drops the lock when its process dies, so a lock left by `kill -9` is detected as stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from distill.errors import UserError

MARKER = ".distill"
LOCK = ".lock"
REPLACED_PREFIX = ".replaced-"

# What each kind of output holds, for directories written before the marker existed.
_LEGACY = {
    "run": {"recipe.yaml", "metrics.jsonl", "checkpoints", "final", ".tmp-final", LOCK},
    "report": {"results.json", "report.md", "generations.jsonl", "group_shares.png",
               "disparity_vs_perplexity.png"},
    "study": {"runs", "eval", "logs", "results.json", "table.md", "disparity_vs_perplexity.png", LOCK},
}
# the names one of which every older output of that kind holds
_LEGACY_SIGN = {"run": {"recipe.yaml", "metrics.jsonl"}, "report": {"results.json"}, "study": {"runs"}}
_WORDS = {"run": "training run", "report": "report", "study": "study"}


def write_marker(directory: Path, kind: str) -> None:
    (Path(directory) / MARKER).write_text(json.dumps({"tool": "distill", "kind": kind}) + "\n")


def directory_kind(directory: Path) -> str | None:
    """The kind of distill output `directory` is ('run', 'report', ...), or None if it is not one."""
    directory = Path(directory)
    marker = directory / MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text())
            return data.get("kind") if isinstance(data, dict) and data.get("tool") == "distill" else None
        except (OSError, ValueError):
            return None
    # a study's later evals (eval-2, eval-3, ...) count as its eval
    names = {"eval" if re.fullmatch(r"eval-\d+", p.name) else p.name for p in directory.iterdir()}
    for kind, known in _LEGACY.items():
        # an older output: only names this tool writes, including one that every such output has
        if names and names <= known and (names & _LEGACY_SIGN[kind]):
            return kind
    return None


def _overlap(out: Path, other: Path) -> str | None:
    if out == other:
        return "is"
    if out in other.parents:
        return "contains"
    if other in out.parents:
        return "lies inside"
    return None


def check_writable(path: Path, what: str) -> None:
    """Refuse now, not after the work, an output that cannot be created: a parent that is a file,
    a read-only file system, a path under /proc. Probes with a temporary file that is removed."""
    path = Path(path)
    probe_dir = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    if not probe_dir.is_dir():
        raise UserError(f"{what} {path}: {probe_dir} is a file, not a directory; choose another location")
    try:
        fd, name = tempfile.mkstemp(prefix=".distill-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be written ({exc.strerror or exc} in {probe_dir}); "
                        "choose a writable location") from exc


def check_no_overlap(path, protected_paths, what: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside one of `protected_paths` (the command's inputs)."""
    out = Path(path).expanduser().resolve()
    for p in protected_paths:
        if p is None:
            continue
        other = Path(p).expanduser().resolve()
        how = _overlap(out, other)
        if how:
            raise UserError(f"{what} {path} {how} {other}, an input of this command; writing there could destroy "
                            f"it: choose another {what}")


def prepare_output_dir(path, kind: str, overwrite: bool, protected_paths=(), what: str = "--out") -> Path:
    """Check that `path` may receive an output of `kind`; writes nothing (a probe file aside).

    Refused: `path` is a file; it is, contains or lies inside one of `protected_paths` (the command's
    inputs); it holds files and `overwrite` is off; `overwrite` is on but it is not a distill output of
    this `kind`; it cannot be written. Returns the resolved path.
    """
    out = Path(path).expanduser().resolve()
    word = _WORDS.get(kind, kind)
    check_no_overlap(path, protected_paths, what)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory; choose another {what}")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        if not overwrite:
            raise UserError(f"{what} {path} already holds files; pass --overwrite to replace a {word} there, "
                            f"or choose another {what}{replaced_note(out)}")
        found = directory_kind(out)
        if found != kind:
            desc = f"a {_WORDS.get(found, found)} of distill" if found else "not an output of distill"
            raise UserError(f"{what} {path} is {desc}, so --overwrite will not replace it (it only replaces a "
                            f"{word}, marked by its {MARKER} file); remove it yourself or choose another "
                            f"{what}{replaced_note(out)}")
    check_writable(out, what)
    return out


def prepare_reused_dir(path, kind: str, protected_paths=(), what: str = "--out") -> Path:
    """Check a folder that one command adds to run after run (the study: its runs are reused): it may be new,
    empty, or already an output of `kind`; never a file, an input, another distill output (a training run,
    a report) or a folder inside one (a model's final/). Writes nothing (a probe file aside)."""
    out = Path(path).expanduser().resolve()
    word = _WORDS.get(kind, kind)
    check_no_overlap(path, protected_paths, what)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory; choose another {what}")
    for folder in [out, *out.parents]:
        try:
            found = directory_kind(folder) if folder.is_dir() else None
            model = (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
        except OSError:  # a parent this user may not list: nothing of theirs to protect there
            continue
        where = "is" if folder == out else f"lies inside {folder}, which is"
        if found is not None and found != kind:
            raise UserError(f"{what} {path} {where} a {_WORDS.get(found, found)} of distill; writing a {word} "
                            f"there would mix it with that output: choose another {what}")
        if model:
            raise UserError(f"{what} {path} {where} a model folder; writing a {word} there would pollute the "
                            f"model: choose another {what}")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and directory_kind(out) != kind:
        raise UserError(f"{what} {path} holds files that are not a {word} of distill; choose an empty or new "
                        f"{what}")
    check_writable(out, what)
    return out


def replaced_runs(directory: Path) -> list[Path]:
    """The runs an interrupted `--overwrite` set aside in `directory` (normally at most one)."""
    directory = Path(directory)
    return sorted(directory.glob(f"{REPLACED_PREFIX}*")) if directory.is_dir() else []


def replaced_note(directory: Path) -> str:
    """'; it also holds ... and how to restore it' when `directory` holds a run set aside, else ''."""
    kept = replaced_runs(directory)
    if not kept:
        return ""
    return (f"; it also holds the run an interrupted --overwrite replaced, kept in {kept[0]}: restore it with "
            f"`python -m distill.rundir restore {directory}` (this drops the interrupted run's files)")


def set_aside(directory: Path) -> Path | None:
    """Move every entry of `directory` (the lock aside) into `directory/.replaced-<pid>/`; None if empty."""
    directory = Path(directory)
    entries = [p for p in directory.iterdir() if p.name != LOCK and not p.name.startswith(REPLACED_PREFIX)]
    if not entries:
        return None
    aside = directory / f"{REPLACED_PREFIX}{os.getpid()}"
    aside.mkdir()
    moved = []
    try:
        for p in entries:
            os.replace(p, aside / p.name)
            moved.append(p)
    except OSError:  # all or nothing: what was moved goes back
        for p in moved:
            os.replace(aside / p.name, p)
        aside.rmdir()
        raise
    return aside


def restore_replaced(directory: Path, aside: Path) -> None:
    """Undo `set_aside`: drop what the failed new run wrote and move the old entries back."""
    directory = Path(directory)
    for p in directory.iterdir():
        if p.name != LOCK and p != aside:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in aside.iterdir():
        os.replace(p, directory / p.name)
    aside.rmdir()


def discard_replaced(directory: Path) -> None:
    """The new run has a checkpoint (or its final model): the old one set aside can go."""
    for p in Path(directory).glob(f"{REPLACED_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, held from before the models load until the process exits.

    `acquire` creates the directory when needed (and `release` removes it again if nothing but the lock
    was ever written there). A second process gets one line naming the holder's PID.
    """

    def __init__(self, directory: Path, what: str = "output_dir", lock_file: Path | None = None,
                 advice: str | None = None):
        self.directory = Path(directory)
        self.what = what  # how messages name the output: output_dir, --out, transfer set ...
        self.advice = advice or f"wait for it to end, or choose another {what}"
        # A file output, or a folder that is replaced by renaming another onto it, keeps its lock beside it.
        self.path = Path(lock_file) if lock_file is not None else self.directory / LOCK
        self.created: Path | None = None  # the topmost folder acquire() created, removed again if left empty
        self.stale_pid: int | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            home = self.path.parent  # the locked directory itself, or the folder beside it
            missing = [p for p in (home, *home.parents) if not p.exists()]
            self.created = missing[-1] if missing else None
            home.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                if not _try_lock(fd):
                    os.close(fd)
                    pid = holder.split()[0] if holder else "unknown"
                    raise UserError(f"{self.what} {self.directory} is in use by another distill process (pid {pid}, "
                                    f"lock file {self.path}); {self.advice}")
                # The holder may have released and unlinked the file between our open and our lock.
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
                os.close(fd)
        except OSError as exc:
            raise UserError(f"{self.what} {self.directory} cannot be written ({exc.strerror or exc}); "
                            "choose a writable location") from exc
        if holder and holder.split()[0].isdigit() and int(holder.split()[0]) != os.getpid():
            self.stale_pid = int(holder.split()[0])  # its process died without releasing: the kernel freed it
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD[self.directory.resolve()] = self
        return self

    def carry_into(self, folder: Path) -> None:
        """Link the lock file into `folder`, which is about to be renamed onto the locked directory: the
        directory's `.lock` then stays this process's locked file (one inode) through the swap."""
        if self._fd is not None and self.path == self.directory / LOCK:
            os.link(self.path, Path(folder) / LOCK)

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.pop(self.directory.resolve(), None)
        try:
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()  # only our own file: another process may have locked a new one meanwhile
            folder = self.path.parent
            while self.created is not None and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # nothing was written: leave no empty folders behind
                if folder == self.created:
                    break
                folder = folder.parent
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}  # the locks this process holds, by resolved directory
_COMMAND_LOCKS: list[RunLock] = []


def lock_output(path: Path, what: str = "--out", lock_file: Path | None = None) -> RunLock:
    """Take the output's lock for the rest of the command, after its checks and before any model loads; it is
    released when the command's `command_locks()` block ends, however it ends."""
    lock = RunLock(path, what, lock_file).acquire()
    _COMMAND_LOCKS.append(lock)
    return lock


@contextlib.contextmanager
def command_locks():
    """Around one command: the locks `lock_output` takes inside are released at the end (only those: the
    study runs commands inside its own, in one process)."""
    depth = len(_COMMAND_LOCKS)
    try:
        yield
    finally:
        while len(_COMMAND_LOCKS) > depth:
            _COMMAND_LOCKS.pop().release()


def held_lock(directory: Path) -> RunLock | None:
    """The RunLock this process holds on `directory`, if any."""
    return _HELD.get(Path(directory).resolve())


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): fall back to the PID in the file
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").split()
        return not (text and text[0].isdigit() and int(text[0]) != os.getpid() and _pid_alive(int(text[0])))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def restore_main(argv: list[str] | None = None) -> int:
    """`python -m distill.rundir restore DIR`: put back the run an interrupted `--overwrite` set aside in DIR
    (the interrupted run's own files are dropped). One line on stderr and exit 2 when there is none."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "restore":
        print("usage: python -m distill.rundir restore DIR", file=sys.stderr)
        return 2
    from distill.errors import guarded_stdout, report

    directory = Path(argv[1]).expanduser()
    try:
        with guarded_stdout():
            kept = sorted(replaced_runs(directory), key=lambda p: p.stat().st_mtime)
            if not kept:
                raise UserError(f"{directory} holds no run set aside by an interrupted --overwrite (no "
                                f"{REPLACED_PREFIX}* folder); nothing to restore")
            with RunLock(directory, "DIR"):
                restore_replaced(directory, kept[0])  # the oldest: the run the first --overwrite replaced
            print(f"restored the run kept in {kept[0]} into {directory}")
    except (UserError, OSError) as exc:  # a move that failed half-way names the file; each entry moves whole
        return report("distill restore", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(restore_main())
