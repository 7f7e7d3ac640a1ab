"""A regular-expression alternation of a word list factored as a prefix trie: the lexicon's compiled swap.

    from distill.crr.trie import trie_pattern
    re.compile(trie_pattern(["he", "her", "hers"]))      # "he(?:rs?)?": one branch per character
    python -m pytest tests/test_crr_lexicon.py -q
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def trie_pattern(words: Iterable[str]) -> str:
    """A regex alternation of `words` factored as a prefix trie (so matching branches on one char at a time).

    Longer continuations come before the end of a word, so with the trailing boundary check the longest
    lexicon word at a position wins ("mrs." before "mrs" before "mr")."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        ends = "" in node
        kids = sorted(k for k in node if k)
        if not kids:
            return ""
        leaves = [k for k in kids if list(node[k]) == [""]]
        alts = [re.escape(k) + emit(node[k]) for k in kids if k not in leaves]
        if len(leaves) == 1:
            alts.append(re.escape(leaves[0]))
        elif leaves:
            alts.append("[" + "".join(re.escape(k) for k in leaves) + "]")
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if ends:
            body = ("(?:" + body + ")" if len(alts) == 1 and len(body) > 1 else body) + "?"
        return body

    return emit(trie)
