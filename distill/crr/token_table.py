"""Per-tokenizer swap tables of gendered single-token words, and the text pieces of token ids.

    from distill.crr.lexicon import load_lexicon
    from distill.crr.token_table import build_token_swap_table
    table = build_token_swap_table(tokenizer, load_lexicon())    # once per tokenizer

The table keeps, for every single-token spelling of a lexicon word (lower, Capitalised, ALL CAPS, with and
without a leading space), the single-token spellings of its counterparts: the teacher maps probability mass
through it (`distill.train.targets`), and `distill.crr.token_swap` uses it for exact swaps and to decide which
aligned positions keep a counterfactual target. It also caches what every counterfactual batch needs: the text
piece of each id, the ids where a lexicon word may begin, and re-tokenised runs.

Each token id has a fixed text piece: its decoding after an anchor token, so a leading space is kept even by
SentencePiece-style decoders. `Codec` spells ids as pieces (mending characters whose UTF-8 bytes a byte-level
BPE splits over tokens) and encodes text back to ids whose pieces spell it exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from distill.crr.lexicon import Lexicon

# align values of `distill.crr.token_swap.CounterfactualBatch` that are not positions: no counterpart (the
# target stays the teacher's own p), "the counterfactual context is the original one" (a later document of
# the block), where q = p, and "another counterfactual row of the same batch row holds it" (rule 8).
NO_COUNTERPART = -1
SAME_CONTEXT = -2
OTHER_ROW = -3
_ANCHOR_TEXT = "\n"  # decoded before each id so a piece keeps its leading space; encoded before a run likewise


@dataclass
class TokenSwapTable:
    """Gendered single-token swaps of one tokenizer (V = len(tokenizer)).

    counterpart: (V,) id -> default counterpart id; identity for other tokens.
    pairs: (P, 2) [male_id, female_id], every single-token pair of the lexicon once (her/his give several:
        " him"/" her", " his"/" her", " his"/" hers").
    back_groups: counterfactual id -> every original id it can stand for when it has several
        (" her" -> [" him", " his"], " his" -> [" her", " hers"]); other ids map back via `counterpart`.
    is_gendered: (V,) True for the ids in the table.
    The other fields are caches for counterfactual_batch, filled by `prepare` when empty: pieces (the text of
    each id), text_to_id (each gendered spelling's single id), word_starts (id -> places in its piece where a
    lexicon word may begin, see word_start_offsets), encode_memo (re-tokenised runs).
    """

    counterpart: torch.LongTensor
    pairs: torch.LongTensor
    back_groups: dict[int, list[int]]
    is_gendered: torch.BoolTensor
    pieces: list[str] = field(default_factory=list, repr=False)
    text_to_id: dict[str, int] = field(default_factory=dict, repr=False)
    encode_memo: dict[str, list[int] | None] = field(default_factory=dict, repr=False)
    word_starts: dict[int, tuple[tuple[int, bool], ...]] = field(default_factory=dict, repr=False)
    start_mask: torch.BoolTensor | None = field(default=None, repr=False)


    def prepare(self, tokenizer, lexicon: Lexicon) -> Codec:
        """Fill the caches that `counterfactual_batch` reads (a table built elsewhere may lack them) and return
        the codec sharing the table's pieces and encode memo."""
        if not self.pieces:  # compute the pieces once and keep them on the table
            self.pieces = Codec(tokenizer).pieces
        codec = Codec(tokenizer, self.pieces, self.encode_memo)
        if not self.word_starts:
            self.word_starts = word_start_offsets(self.pieces, lexicon)
        if self.start_mask is None or len(self.start_mask) < len(self.pieces):
            self.start_mask = torch.zeros(len(self.pieces), dtype=torch.bool)
            self.start_mask[list(self.word_starts)] = True
        return codec


class Codec:
    """Text pieces of ids and encoding of a run of text to ids whose pieces spell it exactly."""

    def __init__(self, tokenizer, pieces: list[str] | None = None, memo: dict | None = None):
        self.tok = tokenizer
        self.memo = {} if memo is None else memo
        # The Rust tokenizer behind a fast HF tokenizer encodes in bulk, far faster than the Python wrapper.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._encode = ((lambda s: backend.encode(s, add_special_tokens=False).ids) if backend is not None
                        else (lambda s: tokenizer.encode(s, add_special_tokens=False)))
        self.anchor_ids = list(self._encode(_ANCHOR_TEXT))
        self.pieces = pieces if pieces else _token_pieces(tokenizer, self.anchor_ids)

    def spell(self, ids: list[int]) -> list[str]:
        """The text of each token of `ids` in sequence. A character whose UTF-8 bytes are split over tokens
        (byte-level BPE: "fianc" + "\xc3" + "\xa9") decodes to U+FFFD piece by piece; such runs are decoded
        together and the character is given to the token holding its last byte."""
        return self.spell_row(ids)[0]

    def spell_row(self, ids: list[int]) -> tuple[list[str], bool]:
        """`spell(ids)` and whether any token's text differs from its piece."""
        p = self.pieces
        strs = [p[i] for i in ids]
        if any("\ufffd" in x for x in strs):
            self._mend(ids, strs)
            return strs, True
        return strs, False

    def _mend(self, ids: list[int], strs: list[str]) -> None:
        n, t = len(ids), 0
        while t < n:
            if "\ufffd" not in strs[t]:
                t += 1
                continue
            b = t
            while b < n and "\ufffd" in strs[b]:
                b += 1
            a = t - 1 if t > 0 else t  # the byte run may start in the token before (" fianc\xc3")
            b = min(b + 1, n)
            texts, prev = [], ""
            for k in range(a + 1, b + 1):
                d = self._decode_after_anchor(ids[a:k])
                d = d if k == b else d.rstrip("\ufffd")
                if not d.startswith(prev):
                    break
                texts.append(d[len(prev):])
                prev = d
            else:
                strs[a:b] = texts
            t = b

    def _decode_after_anchor(self, ids: list[int]) -> str:
        a = self.anchor_ids[-1:] if self.anchor_ids else []
        head = _decode(self.tok, [a])[0] if a else ""
        text = _decode(self.tok, [a + ids])[0]
        return text[len(head):] if text.startswith(head) else _decode(self.tok, [ids])[0]

    def join(self, ids: list[int]) -> str:
        return "".join(self.spell(ids))

    def encode(self, text: str) -> list[int] | None:
        ids = list(self._encode(text))
        if self.join(ids) == text:
            return ids
        # Tokenizers that add a prefix space to the first word: encode after the anchor and drop its ids.
        k = len(self.anchor_ids)
        ids = list(self._encode(_ANCHOR_TEXT + text))
        if k and ids[:k] == self.anchor_ids and self.join(ids[k:]) == text:
            return ids[k:]
        return None

    def encode_cached(self, text: str) -> list[int] | None:
        """`encode` with a memo: the same few hundred swapped spellings come back in every batch."""
        try:
            return self.memo[text]
        except KeyError:
            pass
        if len(self.memo) > 200_000:
            self.memo.clear()
        ids = self.memo[text] = self.encode(text)
        return ids

    def single(self, text: str) -> int | None:
        ids = self.encode(text)
        return ids[0] if ids is not None and len(ids) == 1 else None


def _decode(tokenizer, seqs: list[list[int]]) -> list[str]:
    return tokenizer.batch_decode(seqs, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _token_pieces(tokenizer, anchor_ids: list[int]) -> list[str]:
    """The text of every id as it appears after other text (decode([anchor, id]) minus the anchor's text)."""
    V = len(tokenizer)
    if not anchor_ids:
        return _decode(tokenizer, [[i] for i in range(V)])
    a = anchor_ids[-1]
    prefix = _decode(tokenizer, [[a]])[0]
    both = _decode(tokenizer, [[a, i] for i in range(V)])
    alone = None
    out = []
    for i, s in enumerate(both):
        if s.startswith(prefix):
            out.append(s[len(prefix):])
        else:
            if alone is None:
                alone = _decode(tokenizer, [[j] for j in range(V)])
            out.append(alone[i])
    return out


def build_token_swap_table(tokenizer, lexicon: Lexicon) -> TokenSwapTable:
    """The swap table of `tokenizer` for `lexicon`: words that are one token on both sides, in every spelling
    the text swap produces, with and without a leading space."""
    codec = Codec(tokenizer)
    V = len(codec.pieces)
    counterparts: dict[int, list[int]] = {}
    pairs: dict[tuple[int, int], None] = {}
    text_to_id: dict[str, int] = {}
    for surface, cp, _rank, is_male in lexicon.surface_pairs():  # default counterparts come first per word
        for lead in ("", " "):
            a, b = codec.single(lead + surface), codec.single(lead + cp)
            if a is None or b is None or a == b:
                continue
            text_to_id[lead + surface], text_to_id[lead + cp] = a, b
            lst = counterparts.setdefault(a, [])
            if b not in lst:
                lst.append(b)
            pairs[(a, b) if is_male else (b, a)] = None
    counterpart = torch.arange(V, dtype=torch.long)
    is_gendered = torch.zeros(V, dtype=torch.bool)
    back_groups: dict[int, list[int]] = {}
    for a, lst in counterparts.items():
        counterpart[a] = lst[0]
        is_gendered[a] = True
        if len(lst) > 1:
            back_groups[a] = list(lst)
    seen, uniq = set(), []
    for m, f in pairs:
        if frozenset((m, f)) not in seen:
            seen.add(frozenset((m, f)))
            uniq.append((m, f))
    pair_t = torch.tensor(uniq, dtype=torch.long).reshape(-1, 2)
    return TokenSwapTable(counterpart, pair_t, back_groups, is_gendered, codec.pieces, text_to_id,
                          word_starts=word_start_offsets(codec.pieces, lexicon))



_LETTER_RUN = re.compile(r"(?<!\w)[^\W\d_]+")


def word_start_offsets(pieces: list[str], lexicon: Lexicon) -> dict[int, tuple[tuple[int, bool], ...]]:
    """id -> (offset, needs_more) for each place in its piece where a lexicon word may begin: a letter run not
    preceded by a word character inside the piece whose letters are a prefix of a lexicon spelling's first
    letter run. needs_more: the run is only a proper prefix and reaches the piece's end, so the word is possible
    only if the next token goes on with a letter (" wait" + "ress"); a run that stops inside the piece as a
    proper prefix is dropped."""
    prefixes = lexicon.word_start_prefixes()
    out = {}
    for i, piece in enumerate(pieces):
        offs = []
        for m in _LETTER_RUN.finditer(piece):
            whole = prefixes.get(m.group(0))
            if whole is None or (not whole and m.end() < len(piece) and piece[m.end()] != "\ufffd"):
                continue  # a proper prefix that stops inside the piece (unless at a split character)
            offs.append((m.start(), not whole))
        if offs:
            out[i] = tuple(offs)
    return out


_WORD_CHAR = re.compile(r"\w")


def word_piece_occurrences(rows: list[list[int]], table: TokenSwapTable) -> dict[str, int]:
    """How often the table's ids occur in token rows as pieces of longer words.

    An occurrence of a table id is a piece when a word character joins it to its neighbour: its text starts
    with one and the previous token's text ends with one ("Sher|man"), or it ends with one and the next token's
    text starts with one (" he|ad"). Before the word-start rule pair_mean and mapping back acted on every piece
    (`acted_on_before`); after it, not on those that start inside a word (`acted_on_after`: only word-initial
    pieces such as " he|ad", which the position predicting them cannot tell from the word " he").
    """
    pieces, gendered = table.pieces, table.is_gendered
    n = n_piece = n_after = 0
    for row in rows:
        for i, t in enumerate(row):
            if not gendered[t]:
                continue
            n += 1
            text = pieces[t]
            inside = bool(i and _WORD_CHAR.match(text[:1]) and _WORD_CHAR.match(pieces[row[i - 1]][-1:]))
            continued = bool(i + 1 < len(row) and _WORD_CHAR.match(text[-1:])
                             and _WORD_CHAR.match(pieces[row[i + 1]][:1]))
            n_piece += inside or continued
            n_after += continued and not inside
    return {"occurrences": n, "pieces": n_piece, "acted_on_before": n_piece, "acted_on_after": n_after}
