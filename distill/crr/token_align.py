"""Rules 5 and 5b of `distill.crr.token_swap`: which counterfactual position answers the same next-token
question as each original position (the module docstring there states the rules).

    python -m pytest tests/test_crr_tokens.py -q -k "align or multi_token or map_back"
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

from distill.crr.lexicon import Replacement
from distill.crr.token_table import NO_COUNTERPART, Codec, TokenSwapTable


@dataclass
class Group:
    """One swapped run of the original row and what replaces it (built by `token_swap`)."""
    a: int  # token run [a, b) in the original row
    b: int
    reps: list[Replacement]
    new_ids: list[int]
    exact: bool


def align_groups(row: list[int], cf: list[int], groups: list[Group], ends: list[int], codec: Codec,
           table: TokenSwapTable) -> tuple[list[int], int]:
    """Rule 5: align[t] for every original position, and the counterfactual's length change. Positions
    between groups move by the length changes of the groups before them."""
    T = len(row)
    align = [NO_COUNTERPART] * T
    shift, prev = 0, 0
    for g in groups:
        align[prev:g.a] = range(prev + shift, g.a + shift)
        _align_group(align, g, g.a + shift, row, cf, ends, codec, table)
        shift += len(g.new_ids) - (g.b - g.a)
        prev = g.b
    align[prev:T] = range(prev + shift, T + shift)
    return align, shift


def _align_group(align: list[int], g: Group, c0: int, row: list[int], cf: list[int], ends: list[int],
                 codec: Codec, table: TokenSwapTable) -> None:
    """Rules 5 and 5b inside one group, whose new ids start at counterfactual position c0."""
    t0 = ends[g.a - 1] if g.a else 0
    # counterfactual run: offset (relative to t0) at which each new token ends -> its index in the run
    end_to_j = {e: j for j, e in enumerate(accumulate(map(len, codec.spell(g.new_ids))))}
    for t in range(g.a, g.b):
        m = _map_offset(ends[t] - t0, g.reps, t0)
        j = end_to_j.get(m) if m is not None else None
        align[t] = NO_COUNTERPART if j is None else c0 + j
    # Rule 5b: a position whose next token lies in the run predicts a piece of the swapped word; unless the
    # counterfactual's next token maps back to it through the table, it gets no counterpart.
    for t in range(max(g.a - 1, 0), g.b - 1):
        j = align[t]
        if j >= 0 and (j + 1 >= len(cf) or not maps_back(table, cf[j + 1], row[t + 1])):
            align[t] = NO_COUNTERPART


def _map_offset(p: int, reps: list[Replacement], base: int) -> int | None:
    """Rule 5: character offset p (relative to `base`) -> counterfactual offset (relative to `base`), through
    the sorted replacements (whose offsets are absolute)."""
    delta = 0
    for x in reps:
        s = x.start - base
        if p <= s:
            break
        if p >= x.end - base:
            delta += len(x.new) - len(x.old)
            continue
        return s + delta + (p - s) if p - s <= _common_prefix(x.old, x.new) else None
    return p + delta


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def maps_back(table: TokenSwapTable, u: int, v: int) -> bool:
    """Whether counterfactual token u is original token v after mapping back (the same id, the table's
    counterpart, or one of the ids a one-to-many token splits over)."""
    return u == v or int(table.counterpart[u]) == v or v in table.back_groups.get(u, ())
