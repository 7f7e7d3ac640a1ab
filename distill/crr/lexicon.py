"""The gendered-word lexicon and the text swap: "he is a nurse" -> "she is a nurse", "Mr. Smith" -> "Ms. Smith",
"James" -> "Mary".

    from distill.crr.lexicon import load_lexicon
    load_lexicon().swap_text("She gave him her book.")      # -> "He gave her his book."
    python -m pytest tests/test_crr_lexicon.py -q

Counterfactual role reversal (Gupta et al., ACL 2022 Findings) needs the role-reversed version of every
training text, both for data augmentation and for the teacher's counterfactual forward pass. This module does
it on text; the token level is `distill.crr.token_table` and `distill.crr.token_swap`.

Lexicon (data/lexicon/*.tsv, format in data/lexicon/README.md): rows `male<TAB>female[<TAB>alt]`. A word
with several counterparts is a *declared* one-to-many case: the first row of a word gives its default
counterpart, later rows carry `alt`. Loading refuses, with `UserError` naming file and line, a word listed on
both sides, a duplicate pair, an undeclared second counterpart (a mapping that would not be its own inverse),
and a malformed row (`distill.crr.lexicon_files`). `!keep<TAB>phrase` rows name phrases that are never
swapped ("man-made").

Text swap rules (all in one compiled regular expression plus a small callback per match):

1. Word boundaries: a lexicon word matches only where it is not preceded or followed by a letter, digit or
   underscore. Hyphens and apostrophes are boundaries, so possessives and contractions keep their suffix
   ("James's" -> "Mary's", "he's" -> "she's", "men's" -> "women's") and hyphenated compounds swap their
   gendered part ("mother-in-law" -> "father-in-law", "businessman-like" -> "businesswoman-like",
   "ex-husband" -> "ex-wife"). Words glued into a longer word are not touched ("heart", "manager", "Shelley").
2. Case is kept: lower -> lower, Capitalised -> Capitalised, ALL CAPS -> ALL CAPS ("he/He/HE" ->
   "she/She/SHE"). Other mixtures ("hE") are not swapped: the regex lists exactly these three spellings, which
   makes it case-sensitive and about twice as fast as a case-insensitive one.
3. Names (name_pairs.tsv) match only as written (capitalised) or in ALL CAPS, so "john" in a file path or
   "jack" the tool is left alone. Abbreviated titles ending in "." ("mr.", "ms.", "mrs.") match only with a
   capital initial, so "5 ms." stays milliseconds; the period itself is never part of the replaced span.
4-6. "her" and "his" follow the English rules of `distill.crr.english` (object/determiner, standalone/
   determiner, coordination).
7. Other one-to-many words without a rule use their first counterpart ("mrs." -> "mr." -> "ms.").
   The swap is an involution on text without such words: swap(swap(x)) == x (tested).
8. Rules 4-6 never look past the end of the line, so a swap of a chunk of lines equals the swap of each line.
9. Look-ahead: whether a word is swapped, and how, may depend on text after it: "her" and "his" (rules 4-6)
   and a word that starts a !keep phrase ("man" in "man-made"). `replacements(text, lookahead=[])` lists those
   words with the offset up to which their decision reads, and `decide(text, start, endpos)` is the decision
   with the text cut at endpos: the token path uses both to build counterfactual contexts that read no later
   tokens (`distill.crr.causal`). The text swap reads the whole text.

API: `load_lexicon(word_pairs_path=None, names_path=None) -> Lexicon`; `Lexicon.swap_text(text)`,
`.has_gendered_word(text)`, `.replacements(text)` (the character spans replaced, (start, end, old, new): the
token-level alignment maps offsets through them). Speed: the ~2,200 spellings form one prefix-trie
alternation, so the regex branches on one character at a time; the swap is done once per text for
augmentation, and the token path tries the regex only where a token may start a lexicon word
(`replacements_at`). `distill.bench.swap.benchmark_swap` measures the throughput.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from distill.crr.english import follow_reach, her_is_object, his_is_standalone
from distill.crr.lexicon_files import PairRow, check_pair_graph, read_pair_file
from distill.crr.trie import trie_pattern
from distill.errors import UserError

# This file is distill/crr/lexicon.py; the data directory is at the repository root.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "data" / "lexicon"
DEFAULT_WORD_PAIRS = DEFAULT_DIR / "word_pairs.tsv"
DEFAULT_NAME_PAIRS = DEFAULT_DIR / "name_pairs.tsv"


class Replacement(NamedTuple):
    """One swapped word: text[start:end] == old is replaced by new (offsets in the original text)."""

    start: int
    end: int
    old: str
    new: str


class Lookahead(NamedTuple):
    """A word text[start:end] whose swap reads text after it (rule 9): text cut at or after `reach` decides it
    as the whole text does; cut before, it may be decided otherwise, as one of `options` (None: kept)."""

    start: int
    reach: int
    end: int
    options: tuple[Replacement | None, ...]


@dataclass(frozen=True)
class _Entry:
    form: str  # as written in the file: "he", "mr.", "John"
    counterparts: tuple[str, ...]  # forms; the default first
    is_name: bool
    rule: str | None  # "her" / "his" context rule, or None
    male: bool


class Lexicon:
    """Gendered word and name pairs with a compiled swap. Build with `load_lexicon()`.

    swap_text(text) -> str; has_gendered_word(text) -> bool; replacements(text) -> [Replacement];
    entries: lower-cased word -> _Entry; pairs: every (male, female) form pair, file order."""

    def __init__(self, rows: list[PairRow], name_rows: list[PairRow], keep: list[tuple[str, str]],
                 sources: tuple[str, ...]):
        counterparts, side = check_pair_graph(rows + name_rows)
        name_words = {r.male.lower() for r in name_rows} | {r.female.lower() for r in name_rows}
        forms: dict[str, str] = {}
        for r in rows + name_rows:
            forms.setdefault(r.male.lower(), r.male)
            forms.setdefault(r.female.lower(), r.female)
        self.entries: dict[str, _Entry] = {}
        for w, cps in counterparts.items():
            rule = None
            if w == "her" and {"him", "his"} <= {c.lower() for c in cps}:
                rule = "her"
            elif w == "his" and {"her", "hers"} <= {c.lower() for c in cps}:
                rule = "his"
            self.entries[w] = _Entry(forms[w], tuple(dict.fromkeys(cps)), w in name_words, rule, side[w] == "male")
        self.pairs: list[tuple[str, str]] = [(r.male, r.female) for r in rows + name_rows]
        self.n_word_pairs = len(rows)
        self.n_name_pairs = len(name_rows)
        self.keep = {}
        for phrase, where in keep:
            if phrase in self.entries:
                raise UserError(f"{where}: !keep phrase {phrase!r} is also a lexicon word")
            self.keep[phrase] = where
        self.sources = sources
        # Case-sensitive alternation of every surface form (rule 2 and 3): about twice as fast as IGNORECASE in
        # Python's re, and it leaves mixed case ("hE") and lower-case names alone by construction.
        surfaces = {v for e in self.entries.values() for v in _surface_forms(e)}
        # Surface -> replacement for every word without a context rule (the callback's fast path).
        self._direct = {v: match_case(v, e.counterparts[0], e.is_name)
                        for e in self.entries.values() if e.rule is None for v in _surface_forms(e)}
        keep_forms = {v for phrase in self.keep for v in _keep_forms(phrase)}
        surfaces |= keep_forms
        # Rule 9: spelling of a word that starts a !keep phrase -> the phrase's spellings that start with it;
        # those phrases, and her/his spellings, are the matches whose decision reads later text.
        self._keep_heads: dict[str, list[str]] = {}
        for v in keep_forms:
            head = re.match(r"[^ \-]*", v).group(0)
            if head.lower() in self.entries:
                self._keep_heads.setdefault(head, []).append(v)
        self._keep_led = frozenset(v for vs in self._keep_heads.values() for v in vs)
        self._rule_surfaces = frozenset(v for e in self.entries.values() if e.rule for v in _surface_forms(e))
        self._reads_ahead = self._rule_surfaces | self._keep_led | frozenset(self._keep_heads)
        # (?<!\w) ... (?!\w): rule 1.
        self.pattern = re.compile(r"(?<!\w)" + trie_pattern(sorted(surfaces)) + r"(?!\w)")
        self._surfaces = frozenset(surfaces)
        self._prefixes: dict[str, bool] | None = None

    def __repr__(self) -> str:
        return f"Lexicon({self.n_word_pairs} word pairs, {self.n_name_pairs} name pairs, from {', '.join(self.sources)})"

    # -- the swap
    def _resolve(self, m: re.Match) -> str | None:
        """The replacement for one regex match, or None for a !keep phrase."""
        surface = m.group(0)
        new = self._direct.get(surface)
        if new is not None:
            return new
        entry = self.entries.get(surface.lower())
        if entry is None:  # a !keep phrase
            return None
        if entry.rule == "her":
            target = "him" if her_is_object(m.string, m.start(), m.end(), m.endpos) else "his"
        else:
            target = "hers" if his_is_standalone(m.string, m.start(), m.end(), m.endpos) else "her"
        return match_case(surface, target, entry.is_name)

    def _sub(self, m: re.Match) -> str:
        surface = m.group(0)
        new = self._direct.get(surface)  # the common case, one dict look-up
        if new is None:
            new = self._resolve(m)
        return surface if new is None else new

    def swap_text(self, text: str) -> str:
        """The counterfactual of `text`: every gendered word and name replaced by its counterpart."""
        return self.pattern.sub(self._sub, text)

    def has_gendered_word(self, text: str) -> bool:
        return any(self._resolve(m) is not None for m in self.pattern.finditer(text))

    def replacements(self, text: str, lookahead: list[Lookahead] | None = None) -> list[Replacement]:
        """The spans `swap_text` replaces, in order. A period shared by both words ("Mr." -> "Ms.") is left
        outside the span, so the span is exactly the part of the text that changes. `lookahead`: a list that
        gets the words whose decision reads later text (rule 9), swapped or kept."""
        out = []
        for m in self.pattern.finditer(text):
            rep = self._replacement(m)
            if rep is not None:
                out.append(rep)
            if lookahead is not None and m.group(0) in self._reads_ahead:
                self._note_lookahead(m, lookahead)
        return out

    def replacements_at(self, text: str, starts: Iterable[int],
                        lookahead: list[Lookahead] | None = None) -> list[Replacement]:
        """`replacements(text, lookahead)`, trying only the ascending character offsets `starts` (every offset
        where a lexicon word could begin; see `word_start_prefixes`). Same result, without scanning the whole
        text."""
        out, done = [], -1
        match = self.pattern.match
        for pos in starts:
            if pos < done:
                continue
            m = match(text, pos)
            if m is None:
                continue
            done = m.end()
            rep = self._replacement(m)
            if rep is not None:
                out.append(rep)
            if lookahead is not None and m.group(0) in self._reads_ahead:
                self._note_lookahead(m, lookahead)
        return out

    def _note_lookahead(self, m: re.Match, lookahead: list[Lookahead]) -> None:
        """Rule 9: append `m` to `lookahead` if its decision reads text after the word."""
        surface, text, s = m.group(0), m.string, m.start()
        if surface in self._rule_surfaces:
            entry = self.entries[surface.lower()]
            options = tuple(Replacement(s, m.end(), surface, match_case(surface, c, entry.is_name))
                            for c in entry.counterparts)
            lookahead.append(Lookahead(s, follow_reach(text, m.end()), m.end(), options))
        elif surface in self._keep_led:  # a kept phrase: cut inside it, its first word is swapped
            head = re.match(r"[^ \-]*", surface).group(0)
            swap = Replacement(s, s + len(head), head, self._direct[head])
            lookahead.append(Lookahead(s, min(m.end() + 1, len(text)), swap.end, (None, swap)))
        else:  # a kept phrase that its own last character cut off ("man-made" + "x": "man" is swapped)
            ends = [s + len(v) for v in self._keep_heads.get(surface, ()) if text.startswith(v, s)]
            if ends:
                swap = self._replacement(m)
                lookahead.append(Lookahead(s, min(max(ends) + 1, len(text)), swap.end, (swap, None)))

    def decide(self, text: str, start: int, endpos: int) -> Replacement | None:
        """Rule 9: the replacement of the word at `start` when the text ends at `endpos` (None: not swapped)."""
        m = self.pattern.match(text, start, endpos)
        return self._replacement(m) if m is not None else None

    def _replacement(self, m: re.Match) -> Replacement | None:
        new = self._resolve(m)
        if new is None:
            return None
        old, end = m.group(0), m.end()
        if old.endswith(".") and new.endswith("."):
            old, new, end = old[:-1], new[:-1], end - 1
        return Replacement(m.start(), end, old, new)

    def word_start_prefixes(self) -> dict[str, bool]:
        """Every prefix of the first letter run of every matched spelling ("ma" for "ma'am", "Isle" for
        "Isle of Man") -> whether it is a whole first run: a word can only match where the letters that
        start there form one of these, and a whole one if no letter follows."""
        if self._prefixes is None:
            runs = {re.match(r"[^\W\d_]*", v).group(0) for v in self._surfaces}
            self._prefixes = {r[:i]: False for r in runs for i in range(1, len(r))}
            self._prefixes.update(dict.fromkeys(runs, True))
        return self._prefixes

    # -- for the token tables
    def surface_pairs(self) -> list[tuple[str, str, int, bool]]:
        """(surface, counterpart surface, rank, surface_is_male) for every spelling the text swap replaces:
        lower, Capitalised and ALL CAPS for words, as written and ALL CAPS for names, abbreviations without
        their period ("Mr" -> "Ms"). rank 0 is the default counterpart; her/his list every counterpart."""
        out = []
        for entry in self.entries.values():
            for v in _surface_forms(entry):
                for rank, cp in enumerate(entry.counterparts):
                    new = match_case(v, cp, entry.is_name)
                    if v.endswith(".") and new.endswith("."):
                        out.append((v[:-1], new[:-1], rank, entry.male))
                    else:
                        out.append((v, new, rank, entry.male))
        return out


def _surface_forms(entry: _Entry) -> list[str]:
    """The spellings of a lexicon entry that are swapped (rules 2 and 3)."""
    form = entry.form
    cap = form[:1].upper() + form[1:]
    if entry.is_name:
        return list(dict.fromkeys([form, form.upper()]))
    if form.endswith("."):  # titles: capitalised only, "ms." is milliseconds
        return list(dict.fromkeys([cap, form.upper()]))
    return list(dict.fromkeys([form, cap, form.upper()]))


def _keep_forms(phrase: str) -> set[str]:
    """A !keep phrase with any of its words capitalised ("Isle of Man", "Man-made"), and in ALL CAPS."""
    parts = re.split(r"([ \-])", phrase)
    words = parts[::2][:4]
    forms = {phrase.upper()}
    for mask in range(1 << len(words)):
        out = list(parts)
        for i in range(len(words)):
            if mask >> i & 1:
                out[2 * i] = out[2 * i][:1].upper() + out[2 * i][1:]
        forms.add("".join(out))
    return forms


def match_case(surface: str, target: str, is_name: bool = False) -> str:
    """`target` in the case pattern of `surface` (rule 2): lower, Capitalised or ALL CAPS."""
    if surface.isupper() and sum(c.isalpha() for c in surface) > 1:
        return target.upper()
    if is_name:
        return target
    if surface[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def load_lexicon(word_pairs_path: str | Path | None = None, names_path: str | Path | None = None) -> Lexicon:
    """Read and validate the word-pair and name-pair files (defaults: data/lexicon/). Raises UserError."""
    wp = Path(word_pairs_path) if word_pairs_path else DEFAULT_WORD_PAIRS
    npath = Path(names_path) if names_path else DEFAULT_NAME_PAIRS
    rows, keep = read_pair_file(wp, is_names=False)
    name_rows, name_keep = read_pair_file(npath, is_names=True)
    if not rows and not name_rows:
        raise UserError(f"lexicon files {wp} and {npath} hold no pairs")
    return Lexicon(rows, name_rows, keep + name_keep, (str(wp), str(npath)))
