"""Causal counterfactual contexts: what the counterfactual context of a token position may read (rule 8 of
`distill.crr.token_swap`).

    from distill.crr.token_swap import counterfactual_batch   # applies this module; nothing to call here
    python -m pytest tests/test_crr_tokens.py -q -k "later_words or decided_later or all_cases"

The target at original position t combines the teacher's prediction after the context (tokens up to t) with
its prediction after the counterfactual of that context. That counterfactual may read the tokens up to t and
the token t+1 that the position predicts (rule 5b: " he" is swapped, " he|ad" is not), never a later one, or a
context would get two targets depending on what follows it.

A row's counterfactual decides each swap on the whole row. Most swaps read nothing past the word (and the
character after it), but a few read later words (`distill.crr.lexicon` rule 9):

- "her" becomes "him" or "his", and "his" "her" or "hers", by the words that follow ("I saw her very much"
  -> "him", "I saw her very old car" -> "his"; "his or her book" -> "her", "his or her." -> "hers");
- a word that begins a !keep phrase is kept only when the whole phrase is there ("man-made" vs "man-eating").

The rule, for position t and each such word:

- the word is in the context and followed there by the start of token t+1: it is decided on the text cut
  after token t+1 (`Lexicon.decide`), as if the text ended there ("I saw her very" -> "his": "very" not
  followed by "much"; "It was his or" -> "hers");
- nothing after the word is seen yet (token t+1 ends it, or ends inside it): it may still take any of its
  forms, and that can only decide whether t has a counterpart (rule 5b: "Her" -> "His" maps back, "Her" ->
  "H|im" does not). t keeps one if some form gives it one, the row's own decision tried first.

Where that differs from the row's decision and changes what t sees (the counterfactual tokens up to its
aligned position, or whether it has one), t takes its counterfactual from another row built with those
decisions: `OTHER_ROW` marks t in the row's own counterfactual. Where the other row's context at t is the
original one, or the row's own up to some position, no row is added (t gets SAME_CONTEXT or that position).
Extra rows whose contexts agree share one row, cut after the last position it serves. Positions whose
decisions agree with the row's, the great majority, are untouched: on data/tiny_corpus.txt with SmolLM2's
tokenizer no extra row at all, with data/tiny_tokenizer 5 extra rows for 145 counterfactual rows. The
training text's own swap (augmentation) is not a target and still reads the whole text.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

from distill.crr.lexicon import Lexicon, Lookahead, Replacement
from distill.crr.token_table import NO_COUNTERPART, OTHER_ROW, SAME_CONTEXT


class RowSwap(NamedTuple):
    """The counterfactual of one row (fields as in `token_swap.CounterfactualBatch`, unpadded)."""

    input_ids: list[int]
    align: list[int]
    prefix_len: int
    n_exact: int
    n_aligned: int
    extra: bool = False  # added by rule 8


def choices(text: str, ends: list[int], reps: list[Replacement], looks: list[Lookahead],
            lexicon: Lexicon) -> dict[int, list[tuple]]:
    """Position -> the sets of decisions its context may be swapped with, when they differ from the row's
    `reps`: each a sorted tuple of (word start, Replacement or None: kept), the preferred first (module
    docstring). `ends[t]`: where token t's text ends; `looks`: the row's look-ahead words."""
    n, T = len(text), len(ends)
    row_decision = {x.start: x for x in reps}
    fixed: dict[int, dict[int, Replacement | None]] = {}  # decided on the cut text
    open_: dict[int, list[tuple[int, list]]] = {}  # the cut ends at or inside the word: any of its options
    for lk in looks:
        base = row_decision.get(lk.start)
        # positions whose cut (the end of the token they predict) lies past the word's start, before its reach
        if lk.end >= n:  # the row's edge rule: a word touching the block's end is kept whatever follows
            continue
        others = [o for o in lk.options if o != base]
        forms = [base] + others if len(others) < len(lk.options) else None  # the row's own decision first
        for t in range(max(bisect_right(ends, lk.start) - 1, 0), T - 1):
            cut = ends[t + 1]
            if cut <= lk.end:  # nothing after the word is seen yet: it may still take any of its forms
                if forms is not None:
                    open_.setdefault(t, []).append((lk.start, forms))
                continue
            if cut >= lk.reach:
                break
            d = lexicon.decide(text, lk.start, cut)
            if d != base:
                fixed.setdefault(t, {})[lk.start] = d
    out = {}
    for t in sorted(set(fixed) | set(open_)):
        keys = [dict(fixed.get(t, {}))]
        for start, opts in open_.get(t, []):
            keys = [{**k, start: o} for k in keys for o in opts]
        keys = [tuple(sorted((st, d) for st, d in k.items() if d != row_decision.get(st))) for k in keys]
        out[t] = list(dict.fromkeys(keys))
    return out


def causal_rows(row: list[int], main: RowSwap | None, reps: list[Replacement], choices: dict[int, list[tuple]],
                build: Callable[[list[Replacement]], RowSwap | None]) -> list[RowSwap]:
    """The row's counterfactual `main` (None: nothing swapped in the whole row) with each position of `choices`
    moved to the first of its decision sets that gives it a counterpart (module docstring), and the extra rows
    that needs. `build(replacements)` is the row's counterfactual with other replacements."""
    T = len(row)
    own = main is None  # the row's counterfactual is the row itself: every context is its own
    cf = row if own else main.input_ids
    align = list(range(T)) if own else list(main.align)
    built: dict[tuple, RowSwap | None] = {(): main}
    extra: list[tuple[list[int], dict[int, int]]] = []  # (ids, position -> its cf position)
    for t, keys in choices.items():
        got = None
        for key in keys:
            if key not in built:
                moved = {st for st, _ in key}
                built[key] = build(sorted([x for x in reps if x.start not in moved] + [d for _, d in key if d]))
            got = _answer(built[key], t, key == (), cf)
            if got[0] != NO_COUNTERPART:
                break
        a, context = got
        align[t] = OTHER_ROW if context is not None else a
        if context is not None:
            _serve(extra, context, t)
    rows = []
    for ids, served in extra:
        k = next((i for i, (u, v) in enumerate(zip(ids, row, strict=False)) if u != v), len(ids))
        rows.append(RowSwap(ids, [served.get(t, OTHER_ROW) for t in range(T)], k, 0, 0, True))
    if not own:
        return [main._replace(align=align)] + rows
    cut = [t for t in range(T) if align[t] == NO_COUNTERPART]
    if not cut:  # every other position keeps its own context: no row needed for them
        return rows
    n = max(cut) + 1  # a row that only says which positions keep p
    return [RowSwap(row[:n], [a if a < n else SAME_CONTEXT for a in align], n, 0, 0, True)] + rows


def _answer(alt: RowSwap | None, t: int, is_main: bool, cf: list[int]) -> tuple[int, list[int] | None]:
    """What the counterfactual `alt` gives position t, said in the row's own counterfactual `cf`: (align, None),
    or (OTHER_ROW, the context t needs from an extra row)."""
    if is_main:
        return (alt.align[t] if alt is not None else SAME_CONTEXT), None
    a = alt.align[t] if alt is not None else SAME_CONTEXT
    if a in (NO_COUNTERPART, SAME_CONTEXT) or a < alt.prefix_len:  # the original context: q = p
        return (a if a == NO_COUNTERPART else SAME_CONTEXT), None
    if a < len(cf) and cf[:a + 1] == alt.input_ids[:a + 1]:  # the row's own context up to there
        return a, None
    return OTHER_ROW, alt.input_ids[:a + 1]


def _serve(extra: list[tuple[list[int], dict[int, int]]], context: list[int], t: int) -> None:
    """Give position t the counterfactual context `context` (its last token is t's): in an extra row that
    starts with it or that it starts with (extended then), else in a new one."""
    a = len(context) - 1
    for i, (ids, served) in enumerate(extra):
        n = min(len(ids), len(context))
        if ids[:n] == context[:n]:
            if len(ids) < len(context):
                extra[i] = (context, served)
            served[t] = a
            return
    extra.append((context, {t: a}))
