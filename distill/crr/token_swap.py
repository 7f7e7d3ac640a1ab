"""Counterfactual blocks of token ids with position alignment: the input of the teacher's counterfactual pass.

    from distill.crr.lexicon import load_lexicon
    from distill.crr.token_swap import counterfactual_batch
    from distill.crr.token_table import build_token_swap_table
    lexicon = load_lexicon()
    table = build_token_swap_table(tokenizer, lexicon)           # once per tokenizer
    cf = counterfactual_batch(input_ids, tokenizer, table, lexicon)  # per batch of packed blocks (B, T)

Tests: `python -m pytest tests/test_crr_tokens.py -q` (a tiny byte-level BPE is trained there, offline).

The teacher's counterfactual forward (Gupta et al., ACL 2022 Findings) needs, for each packed block, the same
block with binary gender swapped, and for every original position t the counterfactual position whose
next-token prediction answers the same question ("what comes after these words?"). `distill.train.targets`
consumes both objects; the field names and shapes below are its interface.

How a block is swapped (one row at a time):

1. Text. Each token id has a fixed text piece (its decoding after an anchor token, so a leading space is
   kept even by SentencePiece-style decoders); the row's text is the concatenation of its pieces, and the
   character span of token t is [end[t-1], end[t]). A character whose UTF-8 bytes are split over tokens
   (byte-level BPE) is decoded from those tokens together and belongs to the token with its last byte.
2. Swaps. `Lexicon.replacements` finds the words to swap in that text, with the her/his rules of
   `distill.crr.english`. Speed: the regex is tried only at tokens that may start a lexicon word
   (`word_starts`, precomputed per vocabulary id), unless that is a large share of the row. A word that
   touches either edge of the block (starts at character 0 or ends at the last character) is left alone:
   packing cuts blocks mid-word, so it may be a fragment ("he|art").
3. Groups. Each swapped word covers a run of tokens [a, b) (the tokens its characters fall in); overlapping
   runs merge. The run's text, with the word(s) replaced, is encoded again on its own, so every token outside
   the runs is kept as it is, and the new run's pieces spell exactly the new text.
4. Exact vs aligned. A run of one token replaced by one token (" he" -> " she", " her" -> " his") is an exact
   swap: a pure substitution, looked up in the table. Anything else (a word that is several tokens on either
   side, " waiter" -> " wait"+"ress") is an aligned swap. A row with only exact swaps keeps its length and
   gets align = arange(T). `n_exact` / `n_aligned` count swapped words (not rows).
5. Alignment rule. Original position t predicts the token after the text up to end[t]. Map that character
   offset into the counterfactual text: offsets outside every replaced word shift by the length changes of
   the words before them; an offset inside a replaced word maps only if it lies within the common prefix of
   the old and new word ("grand|father" -> "grand|mother"), otherwise it has no counterpart. align[t] is the
   counterfactual position whose token ends exactly at the mapped offset, or -1 when the offset does not map
   or no counterfactual token ends there (e.g. the first piece of a multi-token word, " wait" of
   " waitress" -> " waiter"). Exact ends are required, not "the last token ending before": a shorter
   counterfactual context would answer a different question. The last token of every swapped word maps to
   the last token of its replacement, so the prediction after "waiter" is compared with the one after
   "waitress".
   5b. A position whose next token is a piece of a swapped word keeps a counterpart only if the
   counterfactual's next token maps back to it through the table (" he" <-> " she"). Otherwise the two
   positions predict different pieces (" wait|er" vs " wait|re|ss", " M|r" vs " M|s", " bro|ther" vs
   " s|is|ter" on data/tiny_tokenizer) that no table entry relates, and the counterfactual's mass on the
   female piece would land in a male context: align is -1 there, so the target is the teacher's
   own. A one-token-for-one-token swap counts as exact only when the table maps the new id back.
6. Length. A counterfactual longer than T is cut to T (the teacher never sees a longer sequence than the
   original, so position limits hold); original positions whose counterpart was cut get -1. Shorter rows
   are right-padded with the pad id (else eos, else 0) and attention_mask 0.
7. Document scope (`document_end`, what `crr.cf_scope=document` passes: the EOS id). Packing puts several
   documents in a block; a row's counterfactual stops at the first document end after its last swapped
   word, EOS included, and the original positions after it get SAME_CONTEXT (-2): their documents hold no
   swap, so their counterfactual context is their own (the teacher then uses q = p there). So do the
   positions of a later document before its own first swapped word (an EOS ends its own document): like
   those before the row's first swap, whatever a later document holds.
   Causal attention makes every kept counterfactual position the same as without the cut, and the
   teacher's counterfactual pass runs on the swapped documents only, not on the rest of the block.
8. Causal contexts (`distill.crr.causal`). The counterfactual context of position t reads the tokens up to
   t+1 only. A swap that reads later words (her -> his/him, his -> her/hers, a !keep phrase such as
   "man-made") is decided for position t on the text cut after token t+1; where that changes what t sees, t
   takes its counterfactual from an extra row with those decisions (same batch row, listed after the row's
   own), and its align in the row's own counterfactual is OTHER_ROW (-3).

A swapped word whose new run cannot be encoded back to exactly its text (a character split at the run's
edge) is skipped. The single-token spellings come from the table (`distill.crr.token_table`).

All of it is Python on CPU, so it can run in the DataLoader's collate function, next to the teacher's GPU work.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import torch

from distill.crr.causal import RowSwap, causal_rows, choices
from distill.crr.lexicon import Lexicon, Lookahead, Replacement
from distill.crr.token_align import Group as _Group
from distill.crr.token_align import align_groups, maps_back
from distill.crr.token_table import NO_COUNTERPART, SAME_CONTEXT, Codec, TokenSwapTable

# A row where more than 1 token in this many may start a lexicon word is scanned whole with the regex
# (measured: trying candidate starts one by one wins up to about a third of the tokens).
_SCAN_COST_RATIO = 2


@dataclass
class CounterfactualBatch:
    """The role-reversed rows of a batch (see the module docstring for the rules).

    rows: (S,) batch rows with at least one swapped word, ascending; a batch row repeats for each extra row
        of rule 8 (each original position is held by at most one of its rows: OTHER_ROW in the others).
    input_ids / attention_mask: (S, T2) counterfactual ids, right-padded; T2 <= T.
    align: (S, T) for each original position, the counterfactual position with the same next-token role;
        NO_COUNTERPART (-1) if none, SAME_CONTEXT (-2) where the context is its own (rule 7), OTHER_ROW (-3)
        where another row of the same batch row holds it (rule 8).
    prefix_len: (S,) leading tokens identical in original and counterfactual.
    n_exact / n_aligned: swapped words done by single-token substitution / by re-tokenisation and alignment.
    n_causal_rows: extra rows of rule 8 (in S).
    """

    rows: torch.LongTensor
    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    align: torch.LongTensor
    prefix_len: torch.LongTensor
    n_exact: int
    n_aligned: int
    n_causal_rows: int = 0

    def to(self, device: torch.device | str) -> CounterfactualBatch:
        """The same batch with its tensors on `device` (the swap runs on the CPU; the teacher may not)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


def counterfactual_batch(input_ids: torch.Tensor, tokenizer, table: TokenSwapTable,
                         lexicon: Lexicon, document_end: int | None = None) -> CounterfactualBatch:
    """The counterfactual of a batch of packed blocks `input_ids` (B, T); see the module docstring.

    `document_end`: the id that packing puts between documents (EOS). When given, each counterfactual row
    stops at the first such id after its last swapped word (rule 7); None: it runs to the end of the block."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    codec = table.prepare(tokenizer, lexicon)
    ids_cpu = _checked_ids(input_ids, len(table.pieces))
    cand = _candidates(table, ids_cpu)
    rows, swaps = [], []
    for r, row in enumerate(ids_cpu.tolist()):
        if not cand[r]:  # no token where a lexicon word may begin: nothing to swap
            continue
        out = _row_counterfactual(row, cand[r], codec, table, lexicon, document_end)
        rows += [r] * len(out)
        swaps += out
    return _collate(rows, swaps, T, _pad_id(tokenizer))


def _checked_ids(input_ids: torch.Tensor, n_vocab: int) -> torch.Tensor:
    ids_cpu = input_ids.detach().to("cpu", torch.long)
    if ids_cpu.numel() and not 0 <= int(ids_cpu.min()) <= int(ids_cpu.max()) < n_vocab:
        raise ValueError(f"input_ids hold ids outside the tokenizer's {n_vocab} tokens "
                         f"(min {int(ids_cpu.min())}, max {int(ids_cpu.max())})")
    return ids_cpu


def _candidates(table: TokenSwapTable, ids_cpu: torch.Tensor) -> list[list[int]]:
    """Per row, the ascending positions of the tokens where a lexicon word may begin (`table.start_mask`)."""
    B, T = ids_cpu.shape
    # index_select, not start_mask[ids]: the advanced-indexing kernel is much slower on CPU
    is_cand = torch.index_select(table.start_mask, 0, ids_cpu.reshape(-1)).view(B, T)
    flat = is_cand.nonzero()[:, 1].tolist()
    cand, pos = [], 0
    for c in is_cand.sum(1).tolist():
        cand.append(flat[pos:pos + c])
        pos += c
    return cand


def _collate(rows: list[int], swaps: list[RowSwap], T: int, pad: int) -> CounterfactualBatch:
    """Rule 6: right-pad the rows' counterfactuals to the longest one (at most T)."""
    S = len(rows)
    T2 = max((len(s.input_ids) for s in swaps), default=T)
    ids = [s.input_ids + [pad] * (T2 - len(s.input_ids)) for s in swaps]
    mask = [[1] * len(s.input_ids) + [0] * (T2 - len(s.input_ids)) for s in swaps]
    return CounterfactualBatch(
        torch.tensor(rows, dtype=torch.long), _long(ids, S, T2), _long(mask, S, T2),
        _long([s.align for s in swaps], S, T), torch.tensor([s.prefix_len for s in swaps], dtype=torch.long),
        sum(s.n_exact for s in swaps), sum(s.n_aligned for s in swaps), sum(s.extra for s in swaps))


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def _long(rows: list[list[int]], *shape: int) -> torch.Tensor:
    # Through numpy: several times faster than torch.tensor on nested lists of this size.
    return torch.from_numpy(np.array(rows, dtype=np.int64).reshape(shape))


# ------------------------------------------------------------------------------------------------------------
# One row, in the order of the module docstring's rules


@dataclass
class _Spelt:
    """A row as text (rule 1): each token's piece, where each token's text ends, the whole text, and whether
    characters split over tokens were mended (offsets inside those tokens may have moved)."""

    strs: list[str]
    ends: list[int]
    text: str
    mended: bool


def _row_counterfactual(row: list[int], cand: list[int], codec: Codec, table: TokenSwapTable, lexicon: Lexicon,
                        document_end: int | None = None) -> list[RowSwap]:
    """The counterfactual rows of one row: none when nothing in it is swapped, its own, then rule 8's extra ones.
    `cand`: ascending positions of the tokens in `table.word_starts` (where a swapped word may begin)."""
    strs, mended = codec.spell_row(row)
    spelt = _Spelt(strs, list(accumulate(map(len, strs))), "".join(strs), mended)
    looks: list[Lookahead] = []
    reps = _row_replacements(row, cand, spelt, table, lexicon, looks)
    main = _build(row, spelt, reps, codec, table, document_end)
    if not looks:
        return [main] if main is not None else []
    per_position = choices(spelt.text, spelt.ends, reps, looks, lexicon)
    if not per_position:
        return [main] if main is not None else []
    return causal_rows(row, main, reps, per_position, lambda r: _build(row, spelt, r, codec, table, document_end))


def _build(row: list[int], spelt: _Spelt, reps: list[Replacement], codec: Codec, table: TokenSwapTable,
           document_end: int | None) -> RowSwap | None:
    """Rules 3-7: the counterfactual of one row with the words `reps` swapped, or None if none is."""
    if not reps:
        return None
    groups = _groups(row, spelt, _token_runs(reps, spelt.ends), codec, table)
    if not groups:
        return None
    cf = _splice(row, groups)
    k = _shared_prefix_len(row, cf, groups[0].a)
    last = _last_position(row, groups[-1].b, document_end)
    n_exact = sum(len(g.reps) for g in groups if g.exact)
    n_aligned = sum(len(g.reps) for g in groups if not g.exact)
    T = len(row)
    if n_aligned == 0:  # only substitutions: the same length, every position is its own counterpart
        align = list(range(last + 1)) + [SAME_CONTEXT] * (T - 1 - last)
        _own_documents(align, row, groups, document_end, last)
        return RowSwap(cf[:last + 1], align, k, n_exact, 0)
    align, shift = align_groups(row, cf, groups, spelt.ends, codec, table)
    _own_documents(align, row, groups, document_end, last)
    cf, align = _cut(cf, align, last, shift, T)
    return RowSwap(cf, align, k, n_exact, n_aligned)


def _row_replacements(row: list[int], cand: list[int], spelt: _Spelt, table: TokenSwapTable,
                      lexicon: Lexicon, looks: list[Lookahead]) -> list[Replacement]:
    """Rule 2: the words to swap in the row's text, less those touching an edge of the block; `looks` gets the
    words whose swap reads later text (rule 8), less those at the block's start."""
    T, strs, ends, text = len(row), spelt.strs, spelt.ends, spelt.text
    # Scan the whole text when many tokens are candidates (a small vocabulary: one regex pass is cheaper) or
    # when split characters were mended (offsets inside those tokens may have moved).
    if spelt.mended or len(cand) * _SCAN_COST_RATIO > T:
        found = lexicon.replacements(text, looks)
    else:
        ws = table.word_starts
        starts = [(ends[t - 1] if t else 0) + o for t in cand for o, more in ws[row[t]]
                  if not more or (t + 1 < T and strs[t + 1][:1].isalpha())]
        found = lexicon.replacements_at(text, starts, looks)
    # a word touching the edges of the block may be a fragment of a longer one
    looks[:] = [x for x in looks if x.start > 0]
    return [x for x in found if x.start > 0 and x.end < len(text)]


def _token_runs(reps: list[Replacement], ends: list[int]) -> list[list]:
    """Rule 3: [a, b, replacements] for the run of tokens [a, b) each swapped word covers; overlapping runs
    merge."""
    runs: list[list] = []
    for x in reps:
        a, b = bisect_right(ends, x.start), bisect_left(ends, x.end) + 1
        if runs and a < runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], b)
            runs[-1][2].append(x)
        else:
            runs.append([a, b, [x]])
    return runs


def _groups(row: list[int], spelt: _Spelt, runs: list[list], codec: Codec, table: TokenSwapTable) -> list[_Group]:
    """Rules 3 and 4: each run with its words replaced, encoded again; exact when one token becomes one token
    that maps back to it. A run whose new text cannot be spelt exactly, or that has a character split at its
    edge, is skipped."""
    strs = spelt.strs
    groups = []
    for a, b, reps in runs:
        new_ids = _run_ids(spelt, a, b, reps, codec, table)
        if new_ids is None or "\ufffd" in strs[b - 1] or (a and "\ufffd" in strs[a - 1]):
            continue
        one_to_one = b - a == 1 and len(new_ids) == 1 and maps_back(table, new_ids[0], row[a])
        groups.append(_Group(a, b, reps, new_ids, one_to_one))
    return groups


def _run_ids(spelt: _Spelt, a: int, b: int, reps: list[Replacement], codec: Codec,
             table: TokenSwapTable) -> list[int] | None:
    """The ids of the text of tokens [a, b) with `reps` replaced (a table look-up for one token), or None."""
    ends, text = spelt.ends, spelt.text
    t0, t1 = (ends[a - 1] if a else 0), ends[b - 1]
    parts, pos = [], t0
    for x in reps:
        parts += [text[pos:x.start], x.new]
        pos = x.end
    parts.append(text[pos:t1])
    new_text = "".join(parts)
    tid = table.text_to_id.get(new_text) if b - a == 1 else None
    return [tid] if tid is not None else codec.encode_cached(new_text)


def _splice(row: list[int], groups: list[_Group]) -> list[int]:
    """The row with every group's tokens replaced by its new ids; every other token is kept as it is."""
    cf: list[int] = []
    prev = 0
    for g in groups:
        cf += row[prev:g.a]
        cf += g.new_ids
        prev = g.b
    cf += row[prev:]
    return cf


def _shared_prefix_len(row: list[int], cf: list[int], start: int) -> int:
    """Leading tokens the row and its counterfactual share, counting from the first group's start."""
    k, stop = start, min(len(cf), len(row))
    while k < stop and cf[k] == row[k]:  # a run may start with an unchanged token (" grand" + "father")
        k += 1
    return k


def _last_position(row: list[int], after: int, document_end: int | None) -> int:
    """Rule 7: the last original position whose context is swapped: the first document end from `after`
    (the end of the last group) on; the block's last position without one. Later positions keep their own
    context (the next documents of the block)."""
    if document_end is not None and document_end in row[after:]:
        return row.index(document_end, after)
    return len(row) - 1


def _own_documents(align: list[int], row: list[int], groups: list[_Group], document_end: int | None,
                   last: int) -> None:
    """Rule 7: SAME_CONTEXT for the positions of each document after the first swapped one, up to `last`,
    that come before that document's first swapped token (NO_COUNTERPART stays: rule 5b, as in the first)."""
    if document_end is None or document_end not in row[groups[0].a:last]:
        return
    starts = {g.a for g in groups}
    swapped = False
    for t in range(row.index(document_end, groups[0].a) + 1, last + 1):
        swapped = swapped or t in starts
        if not swapped and align[t] >= 0:
            align[t] = SAME_CONTEXT
        if row[t] == document_end:  # the next position starts a new document
            swapped = False


def _cut(cf: list[int], align: list[int], last: int, shift: int, T: int) -> tuple[list[int], list[int]]:
    """Rules 7 and 6: drop the counterfactual after the swapped document, then cut it to T tokens; original
    positions whose counterpart was cut get NO_COUNTERPART."""
    if last < T - 1:  # the tokens after the last group are the original ones, shifted
        cf = cf[:last + shift + 1]
        align[last + 1:] = [SAME_CONTEXT] * (T - 1 - last)
    if len(cf) > T:  # the teacher never sees a longer sequence than the original, so position limits hold
        cf = cf[:T]
        align = [x if x < T else NO_COUNTERPART for x in align]
    return cf, align
