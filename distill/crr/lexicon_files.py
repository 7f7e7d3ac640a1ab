"""Reading and checking the lexicon's pair files (data/lexicon/*.tsv, format in data/lexicon/README.md).

    from distill.crr.lexicon_files import check_pair_graph, read_pair_file
    rows, keep = read_pair_file(Path("data/lexicon/word_pairs.tsv"), is_names=False)
    counterparts, side = check_pair_graph(rows)       # UserError naming file and line for a bad pair

`distill.crr.lexicon.load_lexicon` reads both files through these and builds the swap from what they return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from distill.errors import UserError


@dataclass(frozen=True)
class PairRow:
    male: str
    female: str
    alt: bool
    where: str  # "path:line"


_WORD_OK = re.compile(r"[^\W\d_](?:[\w'.\-]*[\w.])?")


def read_pair_file(path: Path, is_names: bool) -> tuple[list[PairRow], list[tuple[str, str]]]:
    """Parse one pair file; returns (rows, keep phrases as (phrase, where)). Format errors raise UserError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"lexicon file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"lexicon file {path}: cannot read it ({exc})") from None
    rows, keep = [], []
    for n, raw in enumerate(lines, 1):
        where = f"{path}:{n}"
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split("\t")]
        if cols[0] == "!keep":
            if len(cols) != 2 or not cols[1]:
                raise UserError(f"{where}: expected '!keep<TAB>phrase', got {raw.strip()!r}")
            keep.append((cols[1].lower(), where))
            continue
        if len(cols) not in (2, 3):
            raise UserError(f"{where}: expected 'male<TAB>female' or 'male<TAB>female<TAB>alt', "
                            f"got {len(cols)} tab-separated column(s) in {raw.strip()!r}")
        if len(cols) == 3 and cols[2] != "alt":
            raise UserError(f"{where}: third column must be 'alt' (a declared one-to-many pair), got {cols[2]!r}")
        male, female = cols[0], cols[1]
        for w in (male, female):
            if not _WORD_OK.fullmatch(w):
                raise UserError(f"{where}: {w!r} is not a word (letters, digits, ' - . only, starting with a letter)")
            if is_names and not w[0].isupper():
                raise UserError(f"{where}: name {w!r} must be written capitalised, as it appears in text")
        if male.endswith(".") != female.endswith("."):
            raise UserError(f"{where}: abbreviation and full word paired ({male!r}, {female!r}); "
                            "an entry ending in '.' must pair with one ending in '.'")
        rows.append(PairRow(male, female, len(cols) == 3, where))
    return rows, keep


def check_pair_graph(rows: list[PairRow]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Check the pair graph; returns (counterparts by lower-cased word in file order, side by word)."""
    side: dict[str, tuple[str, str]] = {}  # lower word -> ("male"/"female", where first seen)
    counterparts: dict[str, list[str]] = {}
    first_pair_at: dict[str, str] = {}  # lower word -> where its first counterpart was given
    seen_pairs: dict[tuple[str, str], str] = {}
    for row in rows:
        m, f = row.male.lower(), row.female.lower()
        if m == f:
            raise UserError(f"{row.where}: {row.male!r} is on both sides of its own pair")
        for word, s in ((m, "male"), (f, "female")):
            other, where = side.get(word, (s, ""))
            if other != s:
                raise UserError(f"{row.where}: {word!r} is listed as {s} here but as {other} at {where}; "
                                "a word may be on one side only")
        if (m, f) in seen_pairs:
            raise UserError(f"{row.where}: duplicate pair ({row.male}, {row.female}), first at {seen_pairs[(m, f)]}")
        grows = [w for w in (m, f) if w in counterparts]
        if grows and not row.alt:
            w = grows[0]
            new = f if w == m else m
            raise UserError(
                f"{row.where}: {w!r} -> {new!r} is not its own inverse: {w!r} already pairs with "
                f"{counterparts[w][0]!r} at {first_pair_at[w]}; mark a deliberate one-to-many pair with a third "
                "column 'alt'")
        if row.alt and not grows:
            raise UserError(f"{row.where}: 'alt' declares a second counterpart, but neither {row.male!r} nor "
                            f"{row.female!r} has a first one on an earlier line")
        seen_pairs[(m, f)] = row.where
        for word, s, other in ((m, "male", row.female), (f, "female", row.male)):
            side.setdefault(word, (s, row.where))
            first_pair_at.setdefault(word, row.where)
            counterparts.setdefault(word, []).append(other)
    return counterparts, {w: s for w, (s, _) in side.items()}
