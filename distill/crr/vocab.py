"""Vocabulary-level operations of counterfactual role reversal on next-token distributions.

    from distill.crr.vocab import swap_plan, map_back, combine_, pair_mean_
    plan = swap_plan(table, vocab_rows, device)     # index tensors of a TokenSwapTable, built once
    q_back = map_back(q, p, plan)                    # a counterfactual distribution over the original tokens
    combine_(p, q_back, "cf_mean")                   # in place: (p + q_back) / 2

Pure functions of tensors (no model call): the swap table turned into index tensors (`SwapPlan`), the
pair equalisation of `pair_mean`, mapping a counterfactual distribution back to the original tokens, and the
combinations of the cf_* teacher modes. `distill.train.targets` applies them to the teacher's outputs; the
formulas are in its docstring. Tests: `python -m pytest tests/test_teacher.py -q`.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from distill.crr.token_table import TokenSwapTable

COMBINATIONS = ("cf_mean", "cf_max", "cf_expmean")  # the cf_* teacher modes
CHANGED_TV = 1e-6  # total-variation distance above which a position counts as changed (changed_share)
_TINY = torch.finfo(torch.float32).tiny
_WORD_CHAR = re.compile(r"\w")  # the lexicon's word boundary is (?<!\w) ... (?!\w)


# --------------------------------------------------------------------------------------------------------------
# Swap plan: the token table turned into index tensors once, so the per-step work is gathers and scatters.


@dataclass(frozen=True)
class SwapPlan:
    """Index tensors for mapping back and pair equalisation over the first `vocab_rows` ids.

    Only the few `fix_cols` (gendered ids and whatever they map to) change when mapping back; every other
    id is its own and only preimage. With r = [q[:, read_cols], 0] (a zero column appended):
    q_back[:, fix_cols] = r[:, fix_src] + sum r[:, extra_src] over extra_dst
                          + sum r[:, group_src] * w over group_fix,  w = p[:, group_dst] normalised per group.
    """

    vocab_rows: int
    fix_cols: torch.Tensor  # (F,) ids whose value is recomputed
    read_cols: torch.Tensor  # (R,) ids whose cf mass is read
    fix_src: torch.Tensor  # (F,) local index into r of the (first) 1:1 source of each fix col; R = nothing
    extra_src: torch.Tensor  # (E,) further 1:1 sources (e.g. his -> her and him -> her), local into r
    extra_fix: torch.Tensor  # (E,) local into fix_cols
    group_src: torch.Tensor  # (G',) one entry per (back-group id, target) pair, local into r
    group_fix: torch.Tensor  # (G',) the target, local into fix_cols
    group_dst: torch.Tensor  # (G',) the target id (to read p for the weights)
    group_id: torch.Tensor  # (G',) which group each entry belongs to
    group_size: torch.Tensor  # (G,) fp32 number of targets (for the equal split when p is 0 on all of them)
    pair_cols: torch.Tensor  # (C,) ids in any gendered pair
    pair_slot: torch.Tensor  # (C,) 2 * component (of the pair graph) + side (0 male, 1 female) of each id
    slot_size: torch.Tensor  # (2K,) fp32 ids per slot
    # The word-start rule: a spelling without a leading space ("man", "She") is a word only where a
    # word may start, so at a position whose context ends in a word character its mass is left in place.
    # None when the table carries no token texts (`pieces`).
    ends_word: torch.Tensor | None = None  # (V_tokenizer,) bool: the id's text ends in a word character
    fix_nospace: torch.Tensor | None = None  # (F,) bool: fix col whose text starts with a word character
    pair_nospace: torch.Tensor | None = None  # (C,) bool: likewise for pair_cols


def build_swap_plan(table: TokenSwapTable, vocab_rows: int, device: torch.device | str = "cpu") -> SwapPlan:
    """Index tensors for `table` restricted (or identity-padded) to `vocab_rows` ids.

    Ids at or beyond `vocab_rows` are dropped: a counterpart out of range becomes the identity, pairs and
    back-group targets out of range are ignored, so every mapping stays a distribution over the shared rows.
    Python loops here run once per table over the gendered ids only.
    """
    V = int(vocab_rows)
    cp = _counterparts_in_range(table, V)
    groups = _back_groups_in_range(table, V)
    fix, read, fix_src, extra_src, extra_fix = _map_back_sources(cp, groups)
    g_src, g_fix, g_dst, g_id, g_size = _group_entries(groups, read, fix)
    cols, slot, slot_size = _pair_components(table, V)

    def lt(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    def ft(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=device)

    ends_word, fix_nospace, pair_nospace = _word_start_masks(table, fix, cols, device)
    return SwapPlan(
        vocab_rows=V, fix_cols=lt(fix), read_cols=lt(read), fix_src=lt(fix_src), extra_src=lt(extra_src),
        extra_fix=lt(extra_fix), group_src=lt(g_src), group_fix=lt(g_fix), group_dst=lt(g_dst), group_id=lt(g_id),
        group_size=ft(g_size),
        pair_cols=lt(cols), pair_slot=lt(slot), slot_size=ft(slot_size),
        ends_word=ends_word, fix_nospace=fix_nospace, pair_nospace=pair_nospace,
    )


def _counterparts_in_range(table: TokenSwapTable, V: int) -> torch.Tensor:
    """The table's counterpart of each of the first V ids (CPU, long), the identity where the table is shorter
    or names an id out of range."""
    ident = torch.arange(V)
    given = table.counterpart.detach().to("cpu", torch.long).reshape(-1)
    cp = ident.clone()
    n = min(V, given.numel())
    cp[:n] = given[:n]
    bad = (cp < 0) | (cp >= V)
    cp[bad] = ident[bad]
    return cp


def _back_groups_in_range(table: TokenSwapTable, V: int) -> dict[int, list[int]]:
    """The table's back groups (cf id -> its original ids) over the first V ids, targets deduplicated in order;
    a group left without targets is dropped."""
    groups: dict[int, list[int]] = {}
    for u, targets in (table.back_groups or {}).items():
        kept = list(dict.fromkeys(int(t) for t in targets if 0 <= int(t) < V))
        if 0 <= int(u) < V and kept:
            groups[int(u)] = kept
    return groups


def _map_back_sources(cp: torch.Tensor, groups: dict[int, list[int]]):
    """The 1:1 part of mapping back: fix cols, read cols, and for each fix col its first source (local into the
    read cols; len(read) = none) and any further ones (extra_src, extra_fix)."""
    ident = torch.arange(cp.numel())
    moved = (cp != ident).nonzero().flatten().tolist()
    special = set(moved) | {int(cp[u]) for u in moved} | set(groups) | {t for ts in groups.values() for t in ts}
    # Any id outside `special` is its own and only preimage: mapping back leaves it as it is.
    fix = sorted(special)
    preimages: dict[int, list[int]] = {v: [] for v in fix}
    for u in fix:
        if u not in groups:
            preimages[int(cp[u])].append(u)
    read = sorted({u for v in fix for u in preimages[v]} | set(groups))
    at_read = {u: i for i, u in enumerate(read)}
    at_fix = {v: i for i, v in enumerate(fix)}
    fix_src, extra_src, extra_fix = [], [], []
    for v in fix:
        sources = preimages[v]
        fix_src.append(at_read[sources[0]] if sources else len(read))
        extra_src += [at_read[u] for u in sources[1:]]
        extra_fix += [at_fix[v]] * max(len(sources) - 1, 0)
    return fix, read, fix_src, extra_src, extra_fix


def _group_entries(groups: dict[int, list[int]], read: list[int], fix: list[int]):
    """One entry per (back-group id, target) pair: group_src (local into `read`), group_fix (local into `fix`),
    group_dst, group_id, and each group's size."""
    at_read = {u: i for i, u in enumerate(read)}
    at_fix = {v: i for i, v in enumerate(fix)}
    g_src, g_fix, g_dst, g_id, g_size = [], [], [], [], []
    for gi, (u, targets) in enumerate(sorted(groups.items())):
        g_src += [at_read[u]] * len(targets)
        g_fix += [at_fix[t] for t in targets]
        g_dst += targets
        g_id += [gi] * len(targets)
        g_size.append(float(len(targets)))
    return g_src, g_fix, g_dst, g_id, g_size


def _pair_components(table: TokenSwapTable, V: int) -> tuple[list[int], list[int], list[float]]:
    """The ids in any pair (sorted), the slot of each (2 * component + side) and the ids per slot."""
    # pair_mean works on connected components of the pair graph, each with a male side (first column of
    # `pairs`) and a female side. For a disjoint pair (he, she) it sets both to (p_he + p_she) / 2. Where pairs
    # overlap ({his, him} <-> {her, hers}), giving all four one mean would erase grammar (p(him) = p(his));
    # instead each side gets half the component's mass, shared within the side in its original ratio.
    parent: dict[int, int] = {}
    side: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = table.pairs.detach().to("cpu", torch.long).reshape(-1, 2).tolist() if table.pairs.numel() else []
    for a, b in pairs:
        if 0 <= a < V and 0 <= b < V and a != b and side.setdefault(a, 0) == 0 and side.setdefault(b, 1) == 1:
            parent[find(a)] = find(b)
    cols = sorted(parent)
    roots = {r: i for i, r in enumerate(sorted({find(c) for c in cols}))}
    slot = [2 * roots[find(c)] + side[c] for c in cols]  # component * 2 + side
    slot_size = [0.0] * (2 * len(roots))
    for k in slot:
        slot_size[k] += 1.0
    return cols, slot, slot_size


def _word_start_masks(table: TokenSwapTable, fix: list[int], cols: list[int], device):
    """`SwapPlan.ends_word`, `fix_nospace` and `pair_nospace` (the word-start rule), or three Nones when the
    table carries no token texts."""
    # Pairs and counterparts are built per spelling (with or without the leading space), so every component
    # of the pair graph and every mapping-back source is on one side of this split.
    pieces = list(getattr(table, "pieces", None) or [])
    if not pieces:
        return None, None, None

    def bt(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.bool, device=device)

    def nospace(i: int) -> bool:
        return i < len(pieces) and bool(_WORD_CHAR.match(pieces[i][:1]))

    ends_word = bt([bool(_WORD_CHAR.match(s[-1:])) for s in pieces])
    return ends_word, bt([nospace(v) for v in fix]), bt([nospace(c) for c in cols])


_PLANS: dict[tuple[int, int, str], tuple[weakref.ref, SwapPlan]] = {}


def swap_plan(table: TokenSwapTable, vocab_rows: int, device: torch.device | str) -> SwapPlan:
    """`build_swap_plan`, cached per (table object, vocab_rows, device); the table is treated as immutable."""
    key = (id(table), int(vocab_rows), str(torch.device(device)))
    hit = _PLANS.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    plan = build_swap_plan(table, vocab_rows, device)
    if len(_PLANS) > 16:
        _PLANS.clear()
    _PLANS[key] = (weakref.ref(table), plan)
    return plan


# --------------------------------------------------------------------------------------------------------------
# Distribution arithmetic (pure functions of tensors; all in place where that is safe).


def softmax_t(logits: torch.Tensor, vocab_rows: int, temperature: float, out: torch.Tensor | None = None):
    """softmax(logits[..., :vocab_rows] / temperature) in fp32, as a fresh ordinary (non-inference) tensor
    (or written into `out`, an fp32 tensor of that shape).

    In place on one fp32 copy, so the peak is the logits plus one (..., vocab_rows) fp32 tensor.
    """
    if out is None:
        out = logits[..., :vocab_rows].to(torch.float32, copy=True)
    else:
        out.copy_(logits[..., :vocab_rows])
    if temperature != 1.0:
        out.div_(temperature)
    out.sub_(out.amax(-1, keepdim=True)).exp_()
    return out.div_(out.sum(-1, keepdim=True))


def word_start_sides(plan: SwapPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(male ids, female ids) of the pair table that begin a word wherever they stand (a leading space, or
    no word character first): the ids `pair_mean_` balances at every position, so their pooled log ratio
    is 0 under pair-equalised targets."""
    keep = plan.pair_cols.new_ones(plan.pair_cols.shape, dtype=torch.bool)
    if plan.pair_nospace is not None:
        keep = ~plan.pair_nospace
    male = keep & (plan.pair_slot % 2 == 0)
    female = keep & (plan.pair_slot % 2 == 1)
    return plan.pair_cols[male], plan.pair_cols[female]


def pair_mean_(p: torch.Tensor, plan: SwapPlan, mid_word: torch.Tensor | None = None) -> torch.Tensor:
    """Equalise the two genders within every gendered pair group, in place on p (..., V).

    For a group with male ids M and female ids F (a plain pair is M = {a}, F = {b}), with m = sum p[M] and
    f = sum p[F]: p'[x] = p[x] * (m + f) / (2 m) for x in M and likewise for F, so each side holds half the
    group's mass and keeps its internal ratio; a side with no mass shares its half equally. For a pair this
    is p'_a = p'_b = (p_a + p_b) / 2. Returns the total-variation change per position, shape p.shape[:-1].
    `mid_word` (p.shape[:-1] bool): positions whose context ends inside a word, where the spellings without a
    leading space are left alone (`SwapPlan.pair_nospace`).
    """
    if plan.pair_cols.numel() == 0:
        return p.new_zeros(p.shape[:-1])
    old = p.index_select(-1, plan.pair_cols)
    mass = old.new_zeros(*old.shape[:-1], plan.slot_size.numel()).index_add_(-1, plan.pair_slot, old)
    half = mass.unflatten(-1, (-1, 2)).sum(-1, keepdim=True).div_(2).expand(*mass.shape[:-1], -1, 2).flatten(-2)
    scale = torch.where(mass > 0, half / mass.clamp_min(torch.finfo(mass.dtype).tiny), 0.0)
    equal = torch.where(mass > 0, 0.0, half / plan.slot_size)
    new = old * scale.index_select(-1, plan.pair_slot) + equal.index_select(-1, plan.pair_slot)
    if mid_word is not None and plan.pair_nospace is not None:
        new = torch.where(mid_word.unsqueeze(-1) & plan.pair_nospace, old, new)
    p.index_copy_(-1, plan.pair_cols, new)
    return new.sub_(old).abs_().sum(-1).mul_(0.5)


def map_back(q: torch.Tensor, p: torch.Tensor, plan: SwapPlan, inplace: bool = False,
             mid_word: torch.Tensor | None = None) -> torch.Tensor:
    """The counterfactual distribution q (N, V) expressed over the original context's tokens.

    q_back[v] = sum of q[u] over cf tokens u with counterpart[u] = v, plus, for every back-group token u
    (one cf token, several originals), q[u] * p[v] / sum_{v' in group(u)} p[v'] (equal split if that sum is 0).
    p (N, V) is the original context's distribution at the same positions. The total mass is preserved.
    Only the gendered columns are touched (a gather/scatter over them), so `inplace=True` costs O(N * F).
    `mid_word` (N,) bool: rows whose context ends inside a word keep q on the spellings without a space.
    """
    out = q if inplace else q.clone()
    if plan.fix_cols.numel() == 0:
        return out
    return out.index_copy_(-1, plan.fix_cols, _mapped_back_fix(q, plan, p, mid_word))


def _mapped_back_fix(q: torch.Tensor, plan: SwapPlan, p: torch.Tensor,
                     mid_word: torch.Tensor | None = None) -> torch.Tensor:
    """map_back(q, p)[..., plan.fix_cols]: the only columns mapping back changes, as a new (N, F) tensor."""
    r = q.index_select(-1, plan.read_cols)
    r = torch.cat([r, r.new_zeros(*r.shape[:-1], 1)], dim=-1)  # column R: "no 1:1 source"
    new = r.index_select(-1, plan.fix_src)
    if plan.extra_src.numel():
        new.index_add_(-1, plan.extra_fix, r.index_select(-1, plan.extra_src))
    if plan.group_src.numel():
        w = p.index_select(-1, plan.group_dst)  # (N, G')
        total = w.new_zeros(*w.shape[:-1], plan.group_size.numel()).index_add_(-1, plan.group_id, w)
        total = total.index_select(-1, plan.group_id)
        equal = (1.0 / plan.group_size).index_select(-1, plan.group_id).expand_as(w)
        w = torch.where(total > 0, w / total.clamp_min(_TINY), equal)
        new.index_add_(-1, plan.group_fix, r.index_select(-1, plan.group_src).mul_(w))
    if mid_word is not None and plan.fix_nospace is not None:
        new = torch.where(mid_word.unsqueeze(-1) & plan.fix_nospace, q.index_select(-1, plan.fix_cols), new)
    return new


def combine_(p: torch.Tensor, q_back: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine p and q_back (both (N, V) distributions) into q_back, in place; p is left unchanged.

    cf_mean: (p + q_back) / 2.  cf_max: max(p, q_back) renormalised.
    cf_expmean: exp((log p + log q_back) / 2 - logsumexp(...)) = normalised geometric mean (probabilities are
    floored at the smallest normal fp32 before the log, so disjoint supports cannot give 0/0).
    """
    if mode == "cf_mean":
        return q_back.add_(p).mul_(0.5)
    if mode == "cf_max":
        torch.maximum(q_back, p, out=q_back)
        return q_back.div_(q_back.sum(-1, keepdim=True))
    if mode == "cf_expmean":
        q_back.clamp_min_(_TINY).log_().add_(p.clamp_min(_TINY).log_()).mul_(0.5)
        return q_back.sub_(torch.logsumexp(q_back, -1, keepdim=True)).exp_()
    raise ValueError(f"not a counterfactual combination: {mode!r} (expected one of {COMBINATIONS})")



def combine_same_context_(p: torch.Tensor, rows: torch.Tensor, plan: SwapPlan, mode: str,
                          mid_word: torch.Tensor | None = None) -> int:
    """combine(p, map_back(p)) in place on the rows of p (N, V) selected by the bool mask `rows` (N,): the
    target of a context that is its own counterfactual. Returns how many rows changed by more than CHANGED_TV.

    map_back(p) differs from p only on `plan.fix_cols` (F ids), so the work is on (N, F) plus, for cf_max and
    cf_expmean, one in-place rescaling of the row: with o = p[fix], m = the combined values there, and
    r = sum(p) - sum(o) the untouched mass (max(p, p) = sqrt(p p) = p elsewhere), the row becomes
    [p elsewhere, m] / (r + sum(m)); cf_mean needs no rescaling (map_back keeps the mass of the fix columns).
    """
    if plan.fix_cols.numel() == 0 or not bool(rows.any()):
        return 0
    old = p.index_select(-1, plan.fix_cols)
    new = _mapped_back_fix(p, plan, p, mid_word)
    if mode == "cf_mean":
        m = new.add_(old).mul_(0.5)
        scale = None
    elif mode == "cf_max":
        m = torch.maximum(new, old, out=new)
    elif mode == "cf_expmean":
        m = new.clamp_min_(_TINY).log_().add_(old.clamp_min(_TINY).log_()).mul_(0.5).exp_()
    else:
        raise ValueError(f"not a counterfactual combination: {mode!r} (expected one of {COMBINATIONS})")
    sel = rows.unsqueeze(-1)
    m = torch.where(sel, m, old)
    rest = None
    if mode != "cf_mean":
        rest = p.sum(-1) - old.sum(-1)
        total = rest + m.sum(-1)
        scale = torch.where(rows, 1.0 / total.clamp_min(_TINY), 1.0)
    tv = (m - old).abs_()
    if scale is not None:
        p.mul_(scale.unsqueeze(-1))
        m.mul_(scale.unsqueeze(-1))
        tv = (m - old).abs_().sum(-1) + rest * (scale - 1.0).abs()
    else:
        tv = tv.sum(-1)
    p.index_copy_(-1, plan.fix_cols, m)
    return int(tv.mul_(0.5).gt(CHANGED_TV).logical_and_(rows).sum().item())
