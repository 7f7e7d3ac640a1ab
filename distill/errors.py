"""User-facing errors.

A `UserError` is bad input: the CLI prints its message as one line (`distill: error: ...`) and exits 2,
with no traceback. Raise it before any compute and before anything is written.
`not_utf8` words a file that is not UTF-8 text (the byte, its offset and line, the fix) for such a line.

A write that fails on the way (a full disk, a read-only file system, no permission), on any output including
standard output, is one line too: `os_error_line` says where, why, and what to do, for every command's entry
point alike (the `distill` CLI, the study, `python -m distill.rundir restore`, the engine check, the launcher
and the teacher fetcher). `guarded_stdout` marks a failure of standard output as such, so that its line says so, and a pipe
closed by the reader (`distill swap < big.txt | head`) ends the command quietly, as other filters do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


STDOUT = "standard output"

# errno -> (what happened, what to do). The first four can only come from writing.
_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free space there, or choose another location"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there, or choose another location"),
    errno.EFBIG: ("the file is too large for its file system", "choose another location"),
    errno.EROFS: ("the file system is read-only", "choose a writable location"),
    errno.EACCES: ("permission denied", "fix its permissions, or choose a location you may write"),
    errno.EPERM: ("operation not permitted", "fix its permissions, or choose a location you may write"),
    errno.EIO: ("an input/output error (a failing disk or a lost network mount)", "check the disk, or choose "
                "another location"),
}
_WRITING = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class StdoutError(OSError):
    """Writing to standard output failed (a full disk behind `> file`, /dev/full)."""


class StdoutClosed(BrokenPipeError):
    """The reader of standard output went away (`| head`): not an error of the command."""


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that ended a command: the path (or standard output), the cause, the advice."""
    cause, advice = _CAUSES.get(exc.errno, ((exc.strerror or str(exc) or type(exc).__name__).rstrip("."),
                                            "check that path, or choose another location"))
    if isinstance(exc, StdoutError):
        return (f"could not write to {STDOUT}: {cause}; send the output where there is room (or to a file you "
                "may write)")
    where = os.fsdecode(exc.filename) if exc.filename is not None else None
    if exc.errno in _WRITING:
        return f"could not write {where}: {cause}; {advice}" if where else f"a write failed: {cause}; {advice}"
    return f"{where}: {cause}; {advice}" if where else f"{cause}; {advice}"


def not_utf8(exc: UnicodeDecodeError) -> str:
    """'not UTF-8 (byte 0xe9 at offset 13, line 1); convert it with iconv' for a decode of a whole file's bytes."""
    data = exc.object
    line = data.count(b"\n", 0, exc.start) + 1
    return f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line}); convert it with iconv"


class _GuardedStream:
    """sys.stdout, with its write failures raised as StdoutError / StdoutClosed."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, name, *args):
        try:
            return getattr(self._stream, name)(*args)
        except BrokenPipeError as exc:
            raise StdoutClosed(exc.errno, exc.strerror) from None
        except OSError as exc:
            raise StdoutError(exc.errno, exc.strerror) from None

    def write(self, text):
        return self._call("write", text)

    def writelines(self, lines):
        return self._call("writelines", lines)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def guarded_stdout() -> Iterator[None]:
    """Around one command: stdout failures are StdoutError / StdoutClosed, the output is flushed at the end
    (a block-buffered stdout fails only then), and after a failure the rest goes to /dev/null, so that the
    interpreter's own flush at exit adds no second message."""
    original = sys.stdout
    if original is None or isinstance(original, _GuardedStream):
        yield
        return
    sys.stdout = _GuardedStream(original)
    try:
        yield
        sys.stdout.flush()
    except (StdoutError, StdoutClosed):
        silence_stdout(original)
        raise
    finally:
        sys.stdout = original


def silence_stdout(stream=None) -> None:
    """Point standard output at /dev/null: what is still buffered for it is dropped, not retried at exit."""
    stream = stream or sys.stdout
    with contextlib.suppress(OSError, ValueError, AttributeError):  # io.UnsupportedOperation: no file behind it
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)


def report(command: str, exc: BaseException) -> int:
    """The one line of a command that ended on a UserError or an OSError, on stderr; its exit status."""
    if isinstance(exc, StdoutClosed):
        silence_stdout()
        return 0
    line = str(exc) if isinstance(exc, UserError) else os_error_line(exc)
    print(f"{command}: error: {line}", file=sys.stderr)
    return 2
