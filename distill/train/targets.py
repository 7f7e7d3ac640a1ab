"""Teacher next-token targets: plain, pair-equalised, or combined with the counterfactual context.

    from distill.train.targets import teacher_targets
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
with two rules those positions would keep p in rows without a swap but were combined in rows with a later swap, so
one context had two targets depending on tokens after it. The one exception is named by the alignment
(`cf.align == -1`): a position predicting a piece of a multi-token swapped word, or whose counterpart was cut
off at the block's end, keeps p, because no counterfactual prediction there can be mapped back. Whether a
word is swapped, and how, can depend on the word being predicted (" he" vs " he|ad"), never on later words:
"her" -> "his"/"him" and the other swaps that read ahead are decided for each position on the text cut after
the token it predicts, and a position whose decision differs from its row's takes q from an extra cf row
(`distill.crr.causal`; cf.rows then repeats the batch row, and its own cf row holds -3 at that position).

Cost: the counterfactual forward runs only for the rows in `cf.rows` (whole rows: no key/value reuse, whose
gain was measured too small to keep), and the LM head only at the positions whose target reads it. Positions
before a row's first swapped token (`cf.prefix_len`) have the original context, so q = p there exactly.
The vocabulary arithmetic (mapping back, combining) is in `distill.crr.vocab`.

The model forwards run under `torch.inference_mode()`; the target arithmetic runs under `torch.no_grad()` on
ordinary tensors, because inference tensors cannot be saved for backward and the KD loss saves its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from distill.crr.vocab import (
    CHANGED_TV,
    COMBINATIONS,
    SwapPlan,
    combine_,
    combine_same_context_,
    map_back,
    pair_mean_,
    softmax_t,
    swap_plan,
)

if TYPE_CHECKING:
    from distill.crr.token_swap import CounterfactualBatch
    from distill.crr.token_table import TokenSwapTable

MODES = ("none", "pair_mean", *COMBINATIONS)
CF_MODES = COMBINATIONS


@dataclass
class Targets:
    """What the teacher gives the loss for one batch."""

    probs: torch.Tensor  # (B, T, V) fp32 target distribution at the loss temperature
    hidden: torch.Tensor | None  # (B, T, H) fp32 last hidden state (after the final norm) if want_hidden
    changed_share: float  # share of positions whose target moved by more than CHANGED_TV in total variation
    # (B, T, H) the teacher's hidden state entering block prefix_depth, in its dtype (train/prefix.py)
    prefix_hidden: torch.Tensor | None = None


@dataclass
class _CfJob:
    """A validated counterfactual batch as index tensors (see `_prepare_cf`)."""

    ids: torch.Tensor  # (S, L) cf ids, right-padded, cut to the longest real row
    mask: torch.Tensor  # (S, L)
    keep: torch.Tensor  # (S, L) bool: cf positions whose logits some target reads
    select: torch.Tensor  # (M,) row of the kept logits for each cf-sourced target position
    in_order: bool  # select == arange(M): the kept logits are already in the targets' order
    dest: torch.Tensor  # (M,) flat original position (row * T + t) of each cf-sourced target
    same: torch.Tensor  # (B * T,) bool: positions whose context is its own counterfactual (q = p)


def _prepare_cf(cf: CounterfactualBatch, input_ids: torch.Tensor) -> _CfJob:
    """Validate `cf` against the batch and turn it into index tensors (no model call)."""
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
    prefix = torch.minimum(prefix.clamp_min(0), torch.minimum(lengths, torch.tensor(T, device=dev)))
    n = min(T, T2)  # the claimed shared prefix must hold the original tokens (it decides where q = p)
    in_prefix = torch.arange(n, device=dev) < prefix[:, None]
    stats = torch.stack([
        rows.min(), rows.max(),
        (mask != (torch.arange(T2, device=dev) < lengths[:, None]).to(mask.dtype)).sum(),
        align.min(), (align - lengths[:, None]).max(),
        # OTHER_ROW (-3): another cf row of the same batch row holds the position (token_swap rule 8)
        torch.zeros(B, T, dtype=torch.long, device=dev).index_add_(0, rows.clamp(0, B - 1),
                                                                    (align != -3).long()).max(),
        ((ids[:, :n] != input_ids[rows.clamp(0, B - 1), :n]) & in_prefix).sum(),
    ]).tolist()
    if stats[0] < 0 or stats[1] >= B:
        raise ValueError(f"cf.rows must be batch rows in 0..{B - 1}")
    if stats[2] != 0:
        raise ValueError("cf.attention_mask must be right padding (ones, then zeros) on every row")
    if stats[3] < -3 or stats[4] >= 0:
        raise ValueError("cf.align must hold -1, -2, -3 or a real (unpadded) cf position for every original "
                         "position")
    if stats[5] > 1:
        raise ValueError("cf.align gives a position to two cf rows of one batch row (all but one must hold -3)")
    if stats[6] != 0:
        raise ValueError("cf.prefix_len claims a shared prefix but the cf tokens differ from the original there")

    L = int(lengths.max())
    # A cf position before the row's prefix_len has the original context, so q = p there: only the positions
    # at or after it are read from the counterfactual forward.
    from_cf = align >= prefix[:, None]
    s_i, t_i = from_cf.nonzero(as_tuple=True)
    j = align[s_i, t_i]
    keep = torch.zeros(S, L, dtype=torch.bool, device=dev)
    keep[s_i, j] = True
    rank = keep.reshape(-1).cumsum(0).sub_(1).reshape(keep.shape)
    select = rank[s_i, j]
    in_order = torch.equal(select, torch.arange(select.numel(), device=dev))  # a monotone alignment
    dest = rows[s_i] * T + t_i
    # Positions whose target is combine(p, map_back(p)): all but the cf-sourced ones and those without a
    # counterpart (align -1), which keep p.
    same = torch.ones(B * T, dtype=torch.bool, device=dev)
    s_u, t_u = (align == -1).nonzero(as_tuple=True)
    same[rows[s_u] * T + t_u] = False
    same[dest] = False
    return _CfJob(ids[:, :L], mask[:, :L], keep, select, in_order, dest, same)


def _cf_logits(teacher, job: _CfJob) -> torch.Tensor:
    """Teacher logits (keep.sum(), V) of the counterfactual rows at the kept positions, in row-major order."""
    S, L = job.ids.shape
    positions = torch.arange(L, device=job.ids.device).unsqueeze(0).expand(S, -1)  # right padding: 0..L-1
    # logits_to_keep as a 2D bool mask: only those positions go through the LM head (transformers >= 5).
    logits = teacher(input_ids=job.ids, attention_mask=job.mask, position_ids=positions, use_cache=False,
                     logits_to_keep=job.keep).logits
    if logits.dim() == 3:  # a model that ignored the mask: select afterwards
        logits = logits[job.keep]
    return logits


@torch.no_grad()
def teacher_targets(
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    mode: str,
    temperature: float,
    vocab_rows: int,
    table: TokenSwapTable | None = None,
    cf: CounterfactualBatch | None = None,
    want_hidden: bool = False,
    prefix_depth: int = 0,
) -> Targets:
    """The teacher's next-token targets for packed blocks `input_ids` (B, T) (no padding).

    mode: one of MODES (see the module docstring for the formulas). `temperature` is the loss temperature:
    targets are softmax(logits[..., :vocab_rows] / temperature) before any perturbation. `table` is needed by
    every mode but `none`; `cf` by the cf_* modes (None or no rows: every context is its own counterfactual,
    q = p). Positions whose cf.align is -1 keep p (see the module docstring for the rule and why).
    The teacher must be in eval mode (dropout would make the targets noisy). `prefix_depth` > 0 also keeps
    the hidden state entering the teacher's block prefix_depth, for a student that shares those blocks.
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
    job = _prepare_cf(cf, input_ids) if mode in CF_MODES and cf is not None and cf.rows.numel() > 0 else None

    with torch.inference_mode():
        out = teacher(input_ids=input_ids, use_cache=False, output_hidden_states=want_hidden or prefix_depth > 0)
    if out.logits.shape[-1] < V:
        raise ValueError(f"vocab_rows={V} but the teacher has only {out.logits.shape[-1]} output rows")
    p = softmax_t(out.logits, V, temperature)
    hidden = out.hidden_states[-1].to(torch.float32, copy=True) if want_hidden else None
    # A copy made outside inference mode: the student's trained blocks keep it for their backward pass.
    prefix = out.hidden_states[prefix_depth].clone() if prefix_depth > 0 else None
    del out  # frees the (B, T, V) logits before any further (.., V) tensor exists

    if mode == "none":
        return Targets(p, hidden, 0.0, prefix)
    plan = swap_plan(table, V, p.device)
    mid = None  # (B, T): the context ends inside a word (the word-start rule, see SwapPlan)
    if plan.ends_word is not None and int(input_ids.max()) < plan.ends_word.numel():
        mid = plan.ends_word[input_ids]
    if mode == "pair_mean":
        tv = pair_mean_(p, plan, mid)
        return Targets(p, hidden, (tv > CHANGED_TV).sum().item() / max(B * T, 1), prefix)
    flat_mid = mid.view(-1) if mid is not None else None
    if job is None:  # no row has a swap: every context is its own counterfactual
        same = torch.ones(B * T, dtype=torch.bool, device=p.device)
        changed = combine_same_context_(p.view(B * T, V), same, plan, mode, flat_mid)
    else:
        changed = _apply_counterfactual(teacher, p, job, plan, mode, temperature, flat_mid)
    return Targets(p, hidden, changed / max(B * T, 1), prefix)


def _apply_counterfactual(teacher, p: torch.Tensor, job: _CfJob, plan: SwapPlan, mode: str, temperature: float,
                          mid_word: torch.Tensor | None = None) -> int:
    """Set every position's target to combine(p, map_back(q)) (module docstring): q from the counterfactual
    forward at the aligned positions of the cf rows, q = p where the context is its own counterfactual, and p
    left alone where align is -1. Returns the number of positions whose target changed.

    Memory: besides p, the kept logits and two (M, V) tensors, M = cf-sourced positions, are alive at once
    (three briefly: cf_expmean's log p, or an out-of-order alignment).
    """
    B, T, V = p.shape
    p2 = p.view(B * T, V)
    M = job.select.numel()
    q = p.new_empty(M, V)  # the cf distribution at each cf-sourced position, before mapping back
    if M:
        with torch.inference_mode():
            logits = _cf_logits(teacher, job)
        if job.in_order:
            softmax_t(logits, V, temperature, out=q)
        else:
            torch.index_select(softmax_t(logits, V, temperature), 0, job.select, out=q)
        del logits
    changed = combine_same_context_(p2, job.same, plan, mode, mid_word)  # rows disjoint from the cf-sourced ones
    if M == 0:
        return changed
    p_sel = p2.index_select(0, job.dest)
    mid_sel = mid_word.index_select(0, job.dest) if mid_word is not None else None
    map_back(q, p_sel, plan, inplace=True, mid_word=mid_sel)
    combine_(p_sel, q, mode)
    changed += int(p_sel.sub_(q).abs_().sum(-1).mul_(0.5).gt(CHANGED_TV).sum().item())  # p_sel is spent
    p2.index_copy_(0, job.dest, q)
    return changed
