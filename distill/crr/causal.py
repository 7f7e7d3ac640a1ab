"""Causal counterfactual contexts: what the counterfactual context of a token position may read (rule 8 of
`distill.crr.token_swap`).

    from distill.crr.token_swap import counterfactual_batch   # applies this module; nothing to call here
    python -m pytest tests/test_crr_tokens.py -q -k "later_words or causal"

The target at original position t combines the teacher's prediction after the context (tokens up to t) with
its prediction after the counterfactual of that context. That counterfactual may read the tokens up to t and
the token t+1 that the position predicts (rule 5b: " he" is swapped, " he|ad" is not), never a later one, or a
context would get two targets depending on what follows it.

A row's counterfactual decides each swap on the whole row. Most swaps read nothing past the word (and the
character after it), but a few read later words (`distill.crr.lexicon` rule 9):

- "her" becomes "him" or "his", and "his" "her" or "hers", by the words that follow ("I saw her very much"
  -> "him", "I saw her very old car" -> "his"; "his or her book" -> "her", "his or her." -> "hers");
- a word that begins a !keep phrase is kept only when the whole phrase is there ("man-made" vs "man-eating").

The rule: for the context of position t, each such word is decided on the text cut after token t+1
(`Lexicon.decide`), as if the text ended there ("I saw her very" -> "his": "very" not followed by "much";
"It was his or" -> "hers"). Where that differs from the row's decision and changes what position t sees (the
counterfactual tokens up to its aligned position, or whether it has one), t takes its counterfactual from
another row built with the cut-text decisions: `OTHER_ROW` marks t in the row's own counterfactual. Where the
other row's context at t is the original one, or the row's own up to that position, no row is added (t gets
SAME_CONTEXT or that position). Positions whose decisions agree with the row's, the great majority, are
untouched, so a row without such words costs nothing more, and one with them one extra row per distinct set
of decisions, cut after the last position it serves. The training text's own swap (augmentation) is not a
target and still reads the whole text.
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


def variants(text: str, ends: list[int], reps: list[Replacement], looks: list[Lookahead],
             lexicon: Lexicon) -> list[tuple[list[Replacement], list[int]]]:
    """Each set of replacements that the cut text of some positions gives instead of the row's `reps`, with
    those positions (ascending). `ends[t]`: where token t's text ends; `looks`: the row's look-ahead words."""
    n, T = len(text), len(ends)
    row_decision = {x.start: x for x in reps}
    changes: dict[int, dict[int, Replacement | None]] = {}
    for lk in looks:
        base = row_decision.get(lk.start)
        # positions whose cut (the end of the token they predict) lies past the word's start, before its reach
        for t in range(max(bisect_right(ends, lk.start) - 1, 0), T - 1):
            cut = ends[t + 1]
            if cut >= lk.reach:
                break
            d = lexicon.decide(text, lk.start, cut)
            if d is not None and d.end >= n:  # the row's edge rule: a word touching the block's end is kept
                d = None
            if d != base:
                changes.setdefault(t, {})[lk.start] = d
    grouped: dict[tuple, list[int]] = {}
    for t in sorted(changes):
        grouped.setdefault(tuple(sorted(changes[t].items())), []).append(t)
    out = []
    for key, positions in grouped.items():
        moved = {s for s, _ in key}
        alt = [x for x in reps if x.start not in moved] + [d for _, d in key if d is not None]
        out.append((sorted(alt), positions))
    return out


def causal_rows(row: list[int], main: RowSwap | None, alternatives: list[tuple[list[Replacement], list[int]]],
                build: Callable[[list[Replacement]], RowSwap | None]) -> list[RowSwap]:
    """The row's counterfactual `main` (None: nothing swapped in the whole row) with the positions of each
    alternative moved to that alternative's row where their context differs, and those rows (module
    docstring). `build(replacements)` is the row's counterfactual with other replacements."""
    T = len(row)
    own = main is None  # the row's counterfactual is the row itself: every context is its own
    cf = row if own else main.input_ids
    align = list(range(T)) if own else list(main.align)
    extra: list[tuple[list[int], dict[int, int]]] = []  # (ids, position -> its cf position)
    for reps, positions in alternatives:
        alt = build(reps)
        for t in positions:
            a = alt.align[t] if alt is not None else SAME_CONTEXT
            if a in (NO_COUNTERPART, SAME_CONTEXT) or a < alt.prefix_len:
                align[t] = a if a == NO_COUNTERPART else SAME_CONTEXT
            elif a < len(cf) and cf[:a + 1] == alt.input_ids[:a + 1]:
                align[t] = a
            else:
                align[t] = OTHER_ROW
                _serve(extra, alt.input_ids[:a + 1], t)
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
