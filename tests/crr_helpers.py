"""The hand-written gender-swap cases shared by tests/test_crr_lexicon.py and tests/test_crr_tokens.py, and
the checks of counterfactual blocks that tests/test_crr_tokens.py applies to several batches."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

CASES = Path(__file__).resolve().parent / "counterfactual_cases.tsv"


def read_cases() -> list[tuple[str, str, str]]:
    """(category, original, expected swap) for every case in tests/counterfactual_cases.tsv."""
    rows = []
    for line in CASES.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            cat, original, expected = line.split("\t")
            rows.append((cat, original, expected))
    return rows


def check_alignment(tok, lex, table, x, cf):
    """Every aligned position's counterfactual context is the original context with the swaps that the text
    through the token it predicts makes (rule 8: the text cut there); every position outside a swapped word is
    aligned; at most one row of a batch row holds a position, and one held by none has its own context."""
    # imported here: the text tests that share this file need no torch
    from distill.crr.token_table import OTHER_ROW, SAME_CONTEXT, Codec

    codec = Codec(tok, table.pieces)  # token texts, with characters split over tokens mended
    rows = cf.rows.tolist()
    for r in sorted(set(rows)):
        orig_ids = x[r].tolist()
        o_ends = list(accumulate(map(len, codec.spell(orig_ids))))
        otext = codec.join(orig_ids)
        full = [x_ for x_ in lex.replacements(otext) if x_.start > 0 and x_.end < len(otext)]
        mine = [i for i, rr in enumerate(rows) if rr == r]
        for t in range(len(orig_ids)):
            p = o_ends[t]
            cut = o_ends[t + 1] if t + 1 < len(o_ends) else len(otext)
            reps = [x_ for x_ in lex.replacements(otext[:cut]) if x_.start > 0 and x_.end < len(otext)]
            want, pos = [], 0
            for x_ in reps:
                if x_.end <= p:
                    want += [otext[pos:x_.start], x_.new]
                    pos = x_.end
            want = "".join(want) + otext[pos:p]
            holders = [i for i in mine if int(cf.align[i, t]) != OTHER_ROW]
            assert len(holders) <= 1, (t, holders)
            j = int(cf.align[holders[0], t]) if holders else SAME_CONTEXT
            if j == SAME_CONTEXT:
                assert want == otext[:p], (t, otext[:p])
                continue
            i = holders[0]
            n = int(cf.attention_mask[i].sum())
            cf_ids = cf.input_ids[i, :n].tolist()
            c_ends = list(accumulate(map(len, codec.spell(cf_ids))))
            if j < 0:  # inside a swapped word, before a piece of one (rule 5b), or cut off at the end
                nxt = (p, cut)
                assert any(x_.start < p < x_.end or (nxt[0] < x_.end and nxt[1] > x_.start) for x_ in full + reps) \
                    or len(want) > c_ends[-1], (t, otext[:p])
            else:
                assert codec.join(cf_ids)[:c_ends[j]] == want, (t, j)
            assert cf_ids[:int(cf.prefix_len[i])] == orig_ids[:int(cf.prefix_len[i])]


def next_tokens_map_back(x, cf, table):
    """(t, original next id, counterfactual next id) for every aligned position whose counterfactual next token
    is neither the original's nor a table counterpart of it: what mapping back cannot bring home."""
    bad = []
    cp = table.counterpart.tolist()
    for i, r in enumerate(cf.rows.tolist()):
        n = int(cf.attention_mask[i].sum())
        c = cf.input_ids[i, :n].tolist()
        o = x[r].tolist()
        for t, j in enumerate(cf.align[i].tolist()):
            if j < 0 or t + 1 >= len(o) or j + 1 >= n:
                continue
            u, v = c[j + 1], o[t + 1]
            if u != v and cp[u] != v and v not in table.back_groups.get(u, ()):
                bad.append((t, v, u))
    return bad
