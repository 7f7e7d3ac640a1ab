"""Teacher next-token targets: plain, pair-equalised, or combined with the counterfactual context.

    from distill.teacher import teacher_targets
    out = teacher_targets(teacher, batch_ids, mode="cf_mean", temperature=2.0, vocab_rows=rows,
                          table=swap_table, cf=cf_batch)
    kd = divergence(out.probs, student_logits[..., :rows] / 2.0)   # out.probs: (B, T, rows) fp32, sums to 1

Tests: `python -m pytest tests/test_teacher.py -q`.

The perturbations are those of Gupta et al., "Mitigating gender bias in distilled language models via
counterfactual role reversal" (ACL 2022 Findings). With p the teacher's distribution for the original context
and q_back its distribution for the role-reversed context with the gendered tokens mapped back:

    none        p
    pair_mean   p, with every gendered pair (a, b) set to (p_a + p_b) / 2
    cf_mean     (p + q_back) / 2
    cf_max      max(p, q_back) / sum_v max(p_v, q_back_v)
    cf_expmean  sqrt(p * q_back) / sum_v sqrt(p_v * q_back_v)    (in log space)

Mapping back sends the mass of a counterfactual token u to `table.counterpart[u]`; a token with several
original readings (`table.back_groups`, e.g. " her" -> [" his", " him"]) splits its mass over them in
proportion to p of those targets at the same position, so grammatical gender keeps agreeing with the
original context while what follows (a profession, say) becomes gender-invariant.

Where the cf_* modes act: at EVERY position, target = combine(p, q_back), q the teacher's prediction after
the counterfactual of the context. A context with nothing to swap (before the first gendered word, in a row
with none, in a later document under `cf_scope: document`) is its own counterfactual, so q = p and no extra
forward is needed; q_back is then p with each gendered token's mass moved to its counterpart. Why one rule:
before issue 11 those positions kept p in rows without a swap but were combined in rows with a later swap, so
one context had two targets depending on tokens after it. The one exception is named by the alignment
(`cf.align == -1`): a position predicting a piece of a multi-token swapped word, or whose counterpart was cut
off at the block's end, keeps p, because no counterfactual prediction there can be mapped back. Whether a
word is swapped can depend on the word being predicted (" he" vs " he|ad", "her" -> "his"/"him"), never on
later words.

Cost: the counterfactual forward runs only for the rows in `cf.rows` and only from the first swapped token on,
on the teacher's key/value cache of the shared prefix (see `prefix_cache`). Rows are grouped by prefix length
when that saves enough tokens (`_plan_groups`).

The model forwards run under `torch.inference_mode()`; the target arithmetic runs under `torch.no_grad()` on
ordinary tensors, because inference tensors cannot be saved for backward and the KD loss saves its target.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MODES = ("none", "pair_mean", "cf_mean", "cf_max", "cf_expmean")
CF_MODES = ("cf_mean", "cf_max", "cf_expmean")
CHANGED_TV = 1e-6  # total-variation distance above which a position counts as changed (changed_share)
MAX_CF_GROUPS = 4  # at most this many counterfactual forwards per batch (rows grouped by prefix length)
# A further group must save at least this many (row x token) positions to pay for one more forward. A guess,
# not a measurement: a small forward on a GPU is bound by kernel launches rather than by its token count.
GROUP_OVERHEAD_TOKENS = 256
_TINY = torch.finfo(torch.float32).tiny
_WORD_CHAR = re.compile(r"\w")  # the lexicon's word boundary is (?<!\w) ... (?!\w)


class SwapTableLike(Protocol):
    """What `distill.crr.token_table.TokenSwapTable` provides."""

    counterpart: torch.Tensor  # (V,) id -> counterpart id; identity for non-gendered
    pairs: torch.Tensor  # (P, 2) [male_id, female_id]
    back_groups: dict[int, list[int]]  # cf id -> several original ids it maps back to
    is_gendered: torch.Tensor  # (V,)


class CounterfactualLike(Protocol):
    """What `distill.crr.token_swap.CounterfactualBatch` provides."""

    rows: torch.Tensor  # (S,) batch rows that have a counterfactual
    input_ids: torch.Tensor  # (S, T2) cf ids, right-padded
    attention_mask: torch.Tensor  # (S, T2)
    align: torch.Tensor  # (S, T) original position -> cf position with the same next-token role, -1 if none
    prefix_len: torch.Tensor  # (S,) leading tokens identical in original and cf


@dataclass
class TeacherOutput:
    probs: torch.Tensor  # (B, T, V) fp32 target distribution at the loss temperature
    hidden: torch.Tensor | None  # (B, T, H) fp32 last hidden state (after the final norm) if want_hidden
    changed_share: float  # share of positions whose target moved by more than 1e-6 in total variation


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
    # The word-start rule (issue 11): a spelling without a leading space ("man", "She") is a word only where a
    # word may start, so at a position whose context ends in a word character its mass is left in place.
    # None when the table carries no token texts (`pieces`).
    ends_word: torch.Tensor | None = None  # (V_tokenizer,) bool: the id's text ends in a word character
    fix_nospace: torch.Tensor | None = None  # (F,) bool: fix col whose text starts with a word character
    pair_nospace: torch.Tensor | None = None  # (C,) bool: likewise for pair_cols


def build_swap_plan(table: SwapTableLike, vocab_rows: int, device: torch.device | str = "cpu") -> SwapPlan:
    """Index tensors for `table` restricted (or identity-padded) to `vocab_rows` ids.

    Ids at or beyond `vocab_rows` are dropped: a counterpart out of range becomes the identity, pairs and
    back-group targets out of range are ignored, so every mapping stays a distribution over the shared rows.
    Python loops here run once per table over the gendered ids only.
    """
    V = int(vocab_rows)
    ident = torch.arange(V)
    given = table.counterpart.detach().to("cpu", torch.long).reshape(-1)
    cp = ident.clone()
    n = min(V, given.numel())
    cp[:n] = given[:n]
    bad = (cp < 0) | (cp >= V)
    cp[bad] = ident[bad]

    groups: dict[int, list[int]] = {}
    for u, targets in (table.back_groups or {}).items():
        kept = list(dict.fromkeys(int(t) for t in targets if 0 <= int(t) < V))
        if 0 <= int(u) < V and kept:
            groups[int(u)] = kept

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

    g_src, g_fix, g_dst, g_id, g_size = [], [], [], [], []
    for gi, (u, targets) in enumerate(sorted(groups.items())):
        g_src += [at_read[u]] * len(targets)
        g_fix += [at_fix[t] for t in targets]
        g_dst += targets
        g_id += [gi] * len(targets)
        g_size.append(float(len(targets)))

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

    def lt(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    def ft(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=device)

    # Pairs and counterparts are built per spelling (with or without the leading space), so every component
    # of the pair graph and every mapping-back source is on one side of this split.
    pieces = list(getattr(table, "pieces", None) or [])
    ends_word = fix_nospace = pair_nospace = None
    if pieces:
        def bt(x: list) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.bool, device=device)

        ends_word = bt([bool(_WORD_CHAR.match(s[-1:])) for s in pieces])

        def nospace(i: int) -> bool:
            return i < len(pieces) and bool(_WORD_CHAR.match(pieces[i][:1]))

        fix_nospace, pair_nospace = bt([nospace(v) for v in fix]), bt([nospace(c) for c in cols])

    return SwapPlan(
        vocab_rows=V, fix_cols=lt(fix), read_cols=lt(read), fix_src=lt(fix_src), extra_src=lt(extra_src),
        extra_fix=lt(extra_fix), group_src=lt(g_src), group_fix=lt(g_fix), group_dst=lt(g_dst), group_id=lt(g_id),
        group_size=ft(g_size),
        pair_cols=lt(cols), pair_slot=lt(slot), slot_size=ft(slot_size),
        ends_word=ends_word, fix_nospace=fix_nospace, pair_nospace=pair_nospace,
    )


_PLANS: dict[tuple[int, int, str], tuple[weakref.ref, SwapPlan]] = {}


def swap_plan(table: SwapTableLike, vocab_rows: int, device: torch.device | str) -> SwapPlan:
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
    raise ValueError(f"not a counterfactual combination: {mode!r} (expected one of {CF_MODES})")


# --------------------------------------------------------------------------------------------------------------
# Prefix key/value reuse.


def prefix_cache(cache, rows: torch.Tensor, k: int) -> DynamicCache | None:
    """A new DynamicCache holding the first k positions of batch entries `rows` of `cache`.

    The selection is a copy (advanced indexing), so neither the source cache nor other selections can be
    changed by the counterfactual forward, which appends to this one. Returns None when the cache is not made
    of plain full-attention `DynamicLayer`s holding (B, heads, >=k, head_dim) tensors (e.g. linear-attention or
    recurrent layers): the caller then runs a full forward instead.
    """
    layers = getattr(cache, "layers", None)
    if not layers or k <= 0:
        return None
    data = []
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if type(layer) is not DynamicLayer or not isinstance(keys, torch.Tensor) or keys.dim() != 4:
            return None
        if keys.shape[-2] < k:
            return None
        data.append((keys[rows, :, :k], values[rows, :, :k]))
    new = DynamicCache()
    for i, (keys, values) in enumerate(data):
        new.update(keys, values, i)
    return new


def _fresh_cache(teacher) -> DynamicCache | None:
    """An empty config-less DynamicCache for the original forward, when every layer is softmax attention.

    Without a config every layer is a plain `DynamicLayer` that keeps all positions, so sliding-window layers
    can be cropped to any prefix too (the model still applies its window through the attention mask). Other
    layouts (linear attention, recurrent or chunked layers) get the model's own cache (None here), which
    `prefix_cache` declines: their counterfactual rows are then recomputed from position 0.
    """
    config = teacher.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    return DynamicCache() if types is None or set(types) <= {"full_attention", "sliding_attention"} else None


def suffix_logits(teacher, input_ids, attention_mask, k: int, past=None, keep: torch.Tensor | None = None):
    """Teacher logits for positions k.. of right-padded `input_ids` (n, L), on a cache `past` of positions <k.

    Position ids run k..L-1 (right padding leaves real positions where a full forward puts them) and the
    attention mask covers prefix + suffix. `keep` (n, L-k) bool selects the positions whose logits are needed:
    the result is then (keep.sum(), V) in row-major order, else (n, L-k, V).
    With past None and k > 0 the prefix is recomputed (full forward, logits still only for positions >= k).
    """
    n, L = input_ids.shape
    if past is None and k > 0:
        if keep is None:
            keep = torch.ones(n, L - k, dtype=torch.bool, device=input_ids.device)
        keep = torch.cat([keep.new_zeros(n, k), keep], dim=1)
        k = 0
    kwargs = {"attention_mask": attention_mask}
    if past is not None:
        kwargs.update(past_key_values=past, use_cache=True)
    else:
        kwargs["use_cache"] = False
    positions = torch.arange(k, L, device=input_ids.device).unsqueeze(0).expand(n, -1)
    if keep is not None:
        kwargs["logits_to_keep"] = keep  # 2D bool: only those rows go through the LM head (transformers >= 5)
    logits = teacher(input_ids=input_ids[:, k:], position_ids=positions, **kwargs).logits
    if keep is not None and logits.dim() == 3:  # a model that ignored the mask: select afterwards
        logits = logits[keep]
    return logits


def _plan_groups(prefix: list[int], lengths: list[int], reuse: bool) -> list[tuple[list[int], int, int]]:
    """Split cf rows into at most MAX_CF_GROUPS groups of similar prefix length: [(rows, k, L)].

    One forward per group runs positions k..L-1 of its rows (k = smallest prefix in the group, L = longest
    real length), so its cost is n * (L - k) positions; a split must save GROUP_OVERHEAD_TOKENS to be taken.
    Exact DP over contiguous runs of the rows sorted by prefix length; O(MAX_CF_GROUPS * S^2), S <= batch.
    """
    order = sorted(range(len(prefix)), key=lambda i: (prefix[i], lengths[i]))
    S = len(order)
    if S == 0:
        return []

    def group(i: int, j: int) -> tuple[list[int], int, int]:
        members = order[i:j]
        L = max(lengths[m] for m in members)
        return members, max(min(prefix[order[i]], L - 1), 0) if reuse else 0, L

    if not reuse or S == 1:
        return [group(0, S)]
    cost = [[0] * (S + 1) for _ in range(S)]  # cost[i][j]: positions run by one forward over order[i:j]
    for i in range(S):
        L = 0
        for j in range(i + 1, S + 1):
            L = max(L, lengths[order[j - 1]])
            cost[i][j] = (j - i) * (L - max(min(prefix[order[i]], L - 1), 0))
    INF = float("inf")
    # best[g][j]: cheapest cover of order[:j] by g groups; arg[g][j]: start of the last group.
    best = [[INF] * (S + 1) for _ in range(MAX_CF_GROUPS + 1)]
    arg = [[0] * (S + 1) for _ in range(MAX_CF_GROUPS + 1)]
    best[0][0] = 0
    for g in range(1, MAX_CF_GROUPS + 1):
        prev, cur, at = best[g - 1], best[g], arg[g]
        for j in range(g, S + 1):
            for i in range(g - 1, j):
                c = prev[i] + cost[i][j]
                if c < cur[j]:
                    cur[j], at[j] = c, i
    n_groups = min(range(1, MAX_CF_GROUPS + 1), key=lambda g: best[g][S] + GROUP_OVERHEAD_TOKENS * (g - 1))
    bounds, j = [], S
    for g in range(n_groups, 0, -1):
        i = arg[g][j]
        bounds.append((i, j))
        j = i
    return [group(i, j) for i, j in reversed(bounds)]


@dataclass
class _CfGroup:
    rows: torch.Tensor  # (n,) batch rows
    local: torch.Tensor  # (n,) indices into the cf batch
    k: int  # cached prefix length
    L: int  # real length of the longest row of the group
    keep: torch.Tensor  # (n, L - k) bool: suffix positions whose logits are needed
    select: torch.Tensor  # (N_cf,) row of the kept logits for each cf-sourced target position
    in_order: bool  # select == arange(N_cf): the kept logits are already the targets' rows, in order
    dest: torch.Tensor  # (N_cf,) flat original position (row * T + t)


def _prepare_cf(cf: CounterfactualLike, input_ids: torch.Tensor, reuse: bool):
    """Validate `cf` against the batch and turn it into per-group index tensors (no model call)."""
    B, T = input_ids.shape
    dev = input_ids.device
    rows = cf.rows.to(dev, torch.long).reshape(-1)
    S = rows.numel()
    ids = cf.input_ids.to(dev)
    mask = cf.attention_mask.to(dev)
    align = cf.align.to(dev, torch.long)
    prefix = cf.prefix_len.to(dev, torch.long).reshape(-1)
    if ids.dim() != 2 or ids.shape[0] != S or mask.shape != ids.shape or align.shape != (S, T) or prefix.numel() != S:
        raise ValueError(
            f"counterfactual batch shapes do not fit: rows {tuple(rows.shape)}, input_ids {tuple(ids.shape)}, "
            f"attention_mask {tuple(mask.shape)}, align {tuple(align.shape)} (want ({S}, {T})), "
            f"prefix_len {tuple(prefix.shape)}"
        )
    T2 = ids.shape[1]
    lengths = mask.sum(1)
    stats = torch.stack([
        rows.min(), rows.max(), torch.unique(rows).numel() - torch.tensor(S, device=dev),
        (mask != (torch.arange(T2, device=dev) < lengths[:, None]).to(mask.dtype)).sum(),
        align.min(), (align - lengths[:, None]).max(),
    ]).tolist()
    if stats[0] < 0 or stats[1] >= B or stats[2] != 0:
        raise ValueError(f"cf.rows must be distinct batch rows in 0..{B - 1}")
    if stats[3] != 0:
        raise ValueError("cf.attention_mask must be right padding (ones, then zeros) on every row")
    if stats[4] < -2 or stats[5] >= 0:
        raise ValueError("cf.align must hold -1, -2 or a real (unpadded) cf position for every original position")
    prefix = torch.minimum(prefix.clamp_min(0), torch.minimum(lengths, torch.tensor(T, device=dev)))
    plan = _plan_groups(prefix.tolist(), lengths.tolist(), reuse)

    groups = []
    for members, k, L in plan:
        local = torch.tensor(members, dtype=torch.long, device=dev)
        g_rows = rows[local]
        if k > 0 and not torch.equal(ids[local, :k], input_ids[g_rows, :k]):
            raise ValueError("cf.prefix_len claims a shared prefix but the cf tokens differ from the original there")
        al = align[local]
        from_cf = al >= k  # a cf position < k <= prefix_len has the original context: q = p (same context)
        s_i, t_i = from_cf.nonzero(as_tuple=True)
        j = al[s_i, t_i] - k
        keep = torch.zeros(len(members), L - k, dtype=torch.bool, device=dev)
        keep[s_i, j] = True
        rank = keep.reshape(-1).cumsum(0).sub_(1).reshape(keep.shape)
        select = rank[s_i, j]
        in_order = torch.equal(select, torch.arange(select.numel(), device=dev))  # monotone alignment
        groups.append(_CfGroup(g_rows, local, k, L, keep, select, in_order, g_rows[s_i] * T + t_i))
    # Positions whose target is combine(p, map_back(p)): all but the cf-sourced ones and those without a
    # counterpart (align -1), which keep p.
    same = torch.ones(B * T, dtype=torch.bool, device=dev)
    s_i, t_i = (align == -1).nonzero(as_tuple=True)
    same[rows[s_i] * T + t_i] = False
    for g in groups:
        same[g.dest] = False
    return ids, mask, groups, same


# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def teacher_targets(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    mode: str,
    temperature: float,
    vocab_rows: int,
    table: SwapTableLike | None = None,
    cf: CounterfactualLike | None = None,
    want_hidden: bool = False,
    reuse_prefix: bool = True,
) -> TeacherOutput:
    """The teacher's next-token targets for packed blocks `input_ids` (B, T) (no padding).

    mode: one of MODES (see the module docstring for the formulas). `temperature` is the loss temperature:
    targets are softmax(logits[..., :vocab_rows] / temperature) before any perturbation. `table` is needed by
    every mode but `none`; `cf` by the cf_* modes (None or no rows: every context is its own counterfactual,
    q = p). Positions whose cf.align is -1 keep p (see the module docstring for the rule and why).
    `reuse_prefix=False` recomputes the counterfactual rows from
    scratch instead of reusing the prefix cache (same result; for debugging and for comparison).
    The teacher must be in eval mode (dropout would make the targets, and the prefix reuse, noisy).
    """
    if mode not in MODES:
        raise ValueError(f"unknown teacher mode {mode!r}; expected one of {MODES}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if teacher.training:
        raise ValueError("the teacher is in training mode (dropout on): call teacher.eval() first")
    if mode != "none" and table is None:
        raise ValueError(f"teacher mode {mode!r} needs a token swap table")
    B, T = input_ids.shape
    V = int(vocab_rows)

    job = None
    if mode in CF_MODES and cf is not None and cf.rows.numel() > 0:
        job = _prepare_cf(cf, input_ids, reuse_prefix)
    need_cache = job is not None and any(g.k > 0 and g.select.numel() > 0 for g in job[2])

    with torch.inference_mode():
        out = teacher(
            input_ids=input_ids, use_cache=need_cache, past_key_values=_fresh_cache(teacher) if need_cache else None,
            output_hidden_states=want_hidden,
        )
    if out.logits.shape[-1] < V:
        raise ValueError(f"vocab_rows={V} but the teacher has only {out.logits.shape[-1]} output rows")
    p = softmax_t(out.logits, V, temperature)
    hidden = out.hidden_states[-1].to(torch.float32, copy=True) if want_hidden else None
    cache = out.past_key_values if need_cache else None
    del out  # frees the (B, T, V) logits before any further (.., V) tensor exists

    if mode == "none":
        return TeacherOutput(p, hidden, 0.0)
    plan = swap_plan(table, V, p.device)
    mid = None  # (B, T): the context ends inside a word (the word-start rule, see SwapPlan)
    if plan.ends_word is not None and int(input_ids.max()) < plan.ends_word.numel():
        mid = plan.ends_word[input_ids]
    if mode == "pair_mean":
        tv = pair_mean_(p, plan, mid)
        return TeacherOutput(p, hidden, (tv > CHANGED_TV).sum().item() / max(B * T, 1))
    if job is None:  # no row has a swap: every context is its own counterfactual
        same = torch.ones(B * T, dtype=torch.bool, device=p.device)
        flat_mid = mid.view(-1) if mid is not None else None
        changed = combine_same_context_(p.view(B * T, V), same, plan, mode, flat_mid)
        return TeacherOutput(p, hidden, changed / max(B * T, 1))
    changed = _apply_counterfactual(teacher, p, cache, job, plan, mode, temperature,
                                    mid.view(-1) if mid is not None else None)
    return TeacherOutput(p, hidden, changed / max(B * T, 1))


def _apply_counterfactual(teacher, p, cache, job, plan: SwapPlan, mode: str, temperature: float,
                         mid_word: torch.Tensor | None = None) -> int:
    """Set every position's target to combine(p, map_back(q)) (module docstring): q from the counterfactual
    forward at the aligned positions of the cf rows, q = p where the context is its own counterfactual, and p
    left alone where align is -1. Returns the number of positions whose target changed.

    Memory: besides p, one group's kept logits and two (M, V) tensors, M = cf-sourced positions (about S/B of
    the batch), are alive at once (three briefly: cf_expmean's log p, or an out-of-order alignment).
    """
    ids, mask, groups, same = job
    B, T, V = p.shape
    p2 = p.view(B * T, V)
    n_cf = [g.select.numel() for g in groups]
    M = sum(n_cf)
    q = p.new_empty(M, V)  # the cf distribution at each cf-sourced position, before mapping back
    start = 0
    for g, n in zip(groups, n_cf, strict=True):
        if n == 0:
            continue
        with torch.inference_mode():
            past = prefix_cache(cache, g.rows, g.k) if g.k > 0 else None
            logits = suffix_logits(teacher, ids[g.local, : g.L], mask[g.local, : g.L], g.k, past, g.keep)
            del past
        if g.in_order:
            softmax_t(logits, V, temperature, out=q[start : start + n])
        else:
            torch.index_select(softmax_t(logits, V, temperature), 0, g.select, out=q[start : start + n])
        del logits
        start += n
    changed = combine_same_context_(p2, same, plan, mode, mid_word)  # rows disjoint from the cf-sourced ones
    if M == 0:
        return changed
    dest = torch.cat([g.dest for g in groups])
    p_sel = p2.index_select(0, dest)
    mid_sel = mid_word.index_select(0, dest) if mid_word is not None else None
    map_back(q, p_sel, plan, inplace=True, mid_word=mid_sel)
    combine_(p_sel, q, mode)
    changed += int(p_sel.sub_(q).abs_().sum(-1).mul_(0.5).gt(CHANGED_TV).sum().item())  # p_sel is spent
    p2.index_copy_(0, dest, q)
    return changed


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
        raise ValueError(f"not a counterfactual combination: {mode!r} (expected one of {CF_MODES})")
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
