"""`distill swap`: the gender-swapped counterfactual of stdin on stdout, one output line per input line.

    echo "She gave him her book." | distill swap            # -> He gave her his book.

Streams a chunk of whole lines at a time; only the lexicon is loaded (no torch).
"""

from __future__ import annotations

import io
import sys

from distill.crr.lexicon import Lexicon, load_lexicon


def swap_stream(lexicon: Lexicon, src: io.TextIOBase, dst: io.TextIOBase, chunk_bytes: int = 1 << 16) -> int:
    """Swap `src` into `dst` a chunk of whole lines at a time (rule 8 of `distill.crr.lexicon`: the
    swap of a chunk equals the swap of each of its lines).
    Returns the number of characters read."""
    n = 0
    while True:
        lines = src.readlines(chunk_bytes)
        if not lines:
            return n
        chunk = "".join(lines)
        n += len(chunk)
        dst.write(lexicon.swap_text(chunk))


def swap_main(args) -> int:
    """`distill swap`: stdin -> gender-swapped stdout, one output line per input line, streamed."""
    lexicon = load_lexicon(getattr(args, "lexicon", None), getattr(args, "names", None))
    for stream in (sys.stdin, sys.stdout):
        if hasattr(stream, "reconfigure"):  # bytes that are not UTF-8 pass through unchanged
            stream.reconfigure(encoding="utf-8", errors="surrogateescape", newline="")
    interactive = sys.stdin.isatty()
    # `distill swap < big.txt | head`: the closed pipe ends the command quietly, as other filters do, and a
    # full disk behind `> file` is one line (distill.errors.guarded_stdout, around every command)
    swap_stream(lexicon, sys.stdin, sys.stdout, chunk_bytes=1 if interactive else 1 << 16)
    return 0
