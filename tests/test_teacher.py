"""Teacher targets: distributions, pair equalisation, counterfactual symmetry, the counterfactual forward.

Tiny random GPT-2 / Llama (and a sliding-window Mistral) built here, seeded; runs in seconds on a CPU.
The swap-table and counterfactual-batch objects are built by hand with the fields of the distill.crr classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from distill.crr.vocab import build_swap_plan, combine_, map_back, pair_mean_
from distill.train import targets as tm
from distill.train.targets import MODES, teacher_targets

V = 64
HE, SHE, HIS, HIM, HER, MAN, WOMAN = 10, 11, 12, 13, 14, 15, 16
NEUTRAL = (20, V)  # ids drawn for ordinary text


@dataclass
class Table:  # same fields as distill.crr.token_table.TokenSwapTable
    counterpart: torch.Tensor
    pairs: torch.Tensor
    back_groups: dict[int, list[int]] = field(default_factory=dict)
    is_gendered: torch.Tensor | None = None


@dataclass
class Cf:  # same fields as distill.crr.token_swap.CounterfactualBatch
    rows: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    align: torch.Tensor
    prefix_len: torch.Tensor
    n_exact: int = 0
    n_aligned: int = 0


def make_table(vocab=V, one_to_one=True) -> Table:
    """he<->she, man<->woman; his<->her, him<->her with " her" mapping back to [his, him] unless one_to_one."""
    cp = torch.arange(vocab)
    swaps = [(HE, SHE), (MAN, WOMAN)] + ([(HIS, HER)] if one_to_one else [])
    for a, b in swaps:
        cp[a], cp[b] = b, a
    pairs = [[HE, SHE], [MAN, WOMAN], [HIS, HER]]
    groups = {}
    if not one_to_one:
        cp[HIS], cp[HIM], cp[HER] = HER, HER, HIS
        pairs.append([HIM, HER])
        groups = {HER: [HIS, HIM]}
    gendered = torch.zeros(vocab, dtype=torch.bool)
    gendered[[HE, SHE, HIS, HIM, HER, MAN, WOMAN]] = True
    return Table(cp, torch.tensor(pairs), groups, gendered)


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, bos_token_id=0, eos_token_id=0)).eval()


def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=V, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def mistral_sliding():
    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=64, vocab_size=V, sliding_window=4,
                        initializer_range=0.2)
    return MistralForCausalLM(cfg).eval()


MODELS = {"gpt2": gpt2, "llama": llama}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def neutral(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(*NEUTRAL, shape, generator=g)


def swap_ids(x: torch.Tensor, table: Table) -> torch.Tensor:
    return table.counterpart[x]


def exact_cf(x: torch.Tensor, rows: list[int], table: Table) -> Cf:
    """Counterfactual of batch rows `rows` by exact token swap (same length, identity alignment)."""
    sel = x[rows]
    swapped = swap_ids(sel, table)
    differ = swapped != sel
    prefix = torch.where(differ.any(1), differ.int().argmax(1), torch.full((len(rows),), x.shape[1]))
    T = x.shape[1]
    return Cf(torch.tensor(rows), swapped, torch.ones_like(swapped), torch.arange(T).repeat(len(rows), 1), prefix)


def gendered_batch(B=4, T=16, seed=1) -> torch.Tensor:
    x = neutral(B, T, seed=seed)
    x[0, [5, 9]] = torch.tensor([HE, HIS])
    x[1, [2, 12]] = torch.tensor([SHE, WOMAN])
    x[2, [8]] = torch.tensor([MAN])
    x[3, [3, 7, 11]] = torch.tensor([HER, HIM, HE])
    return x


def plain(model, x, T=2.0, rows=V):
    with torch.no_grad():
        return torch.softmax(model(x).logits[..., :rows].float() / T, -1)


# ----------------------------------------------------------------------------------------------------------------


def test_none_is_tempered_softmax_with_vocab_slicing(model):
    x = gendered_batch()
    out = teacher_targets(model, x, mode="none", temperature=2.0, vocab_rows=60)
    assert out.probs.shape == (4, 16, 60) and out.probs.dtype == torch.float32
    torch.testing.assert_close(out.probs, plain(model, x, 2.0, 60), atol=1e-6, rtol=0)
    assert out.changed_share == 0.0 and out.hidden is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("one_to_one", [True, False])
def test_every_mode_gives_distributions(model, mode, one_to_one):
    table = make_table(one_to_one=one_to_one)
    x = gendered_batch()
    out = teacher_targets(model, x, mode=mode, temperature=1.5, vocab_rows=V, table=table,
                          cf=exact_cf(x, [0, 1, 3], table))
    assert out.probs.shape == (4, 16, V)
    assert (out.probs >= 0).all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(4, 16), atol=1e-5, rtol=0)
    if mode == "none":
        assert out.changed_share == 0.0
    else:
        assert 0.0 < out.changed_share <= 1.0


def test_pair_mean_equalises_every_pair(model):
    table = make_table()
    x = gendered_batch()
    p = plain(model, x)
    out = teacher_targets(model, x, mode="pair_mean", temperature=2.0, vocab_rows=V, table=table)
    for a, b in table.pairs.tolist():
        torch.testing.assert_close(out.probs[..., a], out.probs[..., b], atol=1e-7, rtol=0)
        torch.testing.assert_close(out.probs[..., a], (p[..., a] + p[..., b]) / 2, atol=1e-6, rtol=0)
    others = torch.ones(V, dtype=torch.bool)
    others[table.pairs.flatten()] = False
    torch.testing.assert_close(out.probs[..., others], p[..., others], atol=1e-6, rtol=0)
    tv = 0.5 * (out.probs - p).abs().sum(-1)
    assert out.changed_share == pytest.approx((tv > 1e-6).float().mean().item())


def test_pair_mean_overlapping_pairs_equalise_gender_mass_and_keep_grammar():
    table = make_table(one_to_one=False)  # (his, her) and (him, her) overlap: {his, him} <-> {her}
    plan = build_swap_plan(table, V)
    p = torch.softmax(torch.randn(3, V), -1)
    ref = p.clone()
    pair_mean_(p, plan)
    half = ref[:, [HIS, HIM, HER]].sum(-1) / 2
    torch.testing.assert_close(p[:, HER], half)
    torch.testing.assert_close(p[:, HIS] + p[:, HIM], half)
    torch.testing.assert_close(p[:, HIS] / p[:, HIM], ref[:, HIS] / ref[:, HIM])  # his vs him ratio kept
    torch.testing.assert_close(p[:, HE], (ref[:, HE] + ref[:, SHE]) / 2)
    torch.testing.assert_close(p.sum(-1), torch.ones(3))
    zero_male = ref.clone()
    zero_male[:, [HIS, HIM]] = 0
    pair_mean_(zero_male, plan)  # a side with no mass shares its half equally
    torch.testing.assert_close(zero_male[:, HIS], zero_male[:, HIM])
    torch.testing.assert_close(zero_male[:, HIS] * 2, zero_male[:, HER])


@pytest.mark.parametrize("mode", tm.CF_MODES)
def test_cf_target_is_swap_equivariant(model, mode):
    """targets(x) permuted by counterpart == targets(x') when x' is the exact swap of x and vice versa."""
    table = make_table()
    x = neutral(3, 20, seed=3)
    x[0, [4, 9, 15]] = torch.tensor([HE, HIS, WOMAN])
    x[1] = swap_ids(x[0], table)
    x[2, [6]] = SHE  # a bystander row without counterfactual
    cf = Cf(torch.tensor([0, 1]), torch.stack([x[1], x[0]]), torch.ones(2, 20, dtype=torch.long),
            torch.arange(20).repeat(2, 1), torch.tensor([4, 4]))
    out = teacher_targets(model, x, mode=mode, temperature=2.0, vocab_rows=V, table=table, cf=cf)
    torch.testing.assert_close(out.probs[0][..., table.counterpart], out.probs[1], atol=1e-5, rtol=0)
    # Before the first gendered word both contexts are the same, and so is the target.
    torch.testing.assert_close(out.probs[0, :4], out.probs[1, :4], atol=1e-5, rtol=0)
    # A row with nothing to swap is its own counterfactual: combine(p, map_back(p)), the same as with no cf.
    own = teacher_targets(model, x, mode=mode, temperature=2.0, vocab_rows=V, table=table).probs
    torch.testing.assert_close(out.probs[2], own[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.probs[0, :4], own[0, :4], atol=1e-5, rtol=0)


def test_unaligned_positions_keep_p_and_unswapped_contexts_are_their_own_counterfactual(model):
    table = make_table()
    x = gendered_batch()
    cf = exact_cf(x, [0, 1], table)
    cf.align[0, 10:] = -1
    cf.align[1, :] = -1
    cf.align[1, 12:] = -2  # SAME_CONTEXT: a later document of the block
    out = teacher_targets(model, x, mode="cf_mean", temperature=2.0, vocab_rows=V, table=table, cf=cf)
    p = plain(model, x)
    own = p.clone()  # (p + map_back(p)) / 2: each one-to-one pair (a, b) gets (p_a + p_b) / 2
    for a, b in ((HE, SHE), (MAN, WOMAN), (HIS, HER)):
        own[..., a] = own[..., b] = (p[..., a] + p[..., b]) / 2
    torch.testing.assert_close(out.probs[0, 10:], p[0, 10:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.probs[1, :12], p[1, :12], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.probs[1, 12:], own[1, 12:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.probs[2:], own[2:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.probs[0, :5], own[0, :5], atol=1e-6, rtol=0)  # before the first swap
    assert not torch.allclose(out.probs[0, 5:10], own[0, 5:10], atol=1e-4)  # after it: the cf forward
    changed = (0.5 * (out.probs - p).abs().sum(-1) > 1e-6).float().mean().item()
    assert out.changed_share == pytest.approx(changed)


def test_map_back_splits_one_to_many_by_original_probabilities():
    table = make_table(one_to_one=False)
    plan = build_swap_plan(table, V)
    q = torch.softmax(torch.randn(5, V), -1)
    p = torch.softmax(torch.randn(5, V), -1)
    p[4, [HIS, HIM]] = 0.0  # no preference at all: equal split
    back = map_back(q, p, plan)
    torch.testing.assert_close(back.sum(-1), torch.ones(5))
    share = p[:4, [HIS, HIM]] / p[:4, [HIS, HIM]].sum(-1, keepdim=True)
    # cf " her" splits over his/him; cf " his" and " him" both map back to " her".
    torch.testing.assert_close(back[:4, [HIS, HIM]], q[:4, HER, None] * share)
    torch.testing.assert_close(back[4, [HIS, HIM]], q[4, HER].repeat(2) / 2)
    torch.testing.assert_close(back[:, HER], q[:, HIS] + q[:, HIM])
    torch.testing.assert_close(back[:, [HE, SHE]], q[:, [SHE, HE]])
    torch.testing.assert_close(back[:, 30:], q[:, 30:])
    inplace = q.clone()
    assert map_back(inplace, p, plan, inplace=True) is inplace
    torch.testing.assert_close(inplace, back)


def _reference_targets(model, x, cf, table, mode, T):
    """Slow, loop-based reference: full forward on the cf ids, per-token mapping back, combination."""
    p = plain(model, x, T)
    with torch.no_grad():
        qcf = torch.softmax(model(cf.input_ids, attention_mask=cf.attention_mask).logits.float() / T, -1)
    out = p.clone()
    rows = cf.rows.tolist()
    for row in range(x.shape[0]):
        s = rows.index(row) if row in rows else None
        for t in range(x.shape[1]):
            j = int(cf.align[s, t]) if s is not None else -2
            if j == -1:  # no counterpart: p
                continue
            pr = p[row, t]
            q = qcf[s, j] if j >= 0 else pr  # -2 (or no cf row): the context is its own counterfactual
            back = torch.zeros(V)
            for u in range(V):
                if u in table.back_groups:
                    tg = table.back_groups[u]
                    w = pr[tg] / pr[tg].sum() if pr[tg].sum() > 0 else torch.full((len(tg),), 1 / len(tg))
                    back[tg] += q[u] * w
                else:
                    back[int(table.counterpart[u])] += q[u]
            if mode == "cf_mean":
                new = (pr + back) / 2
            elif mode == "cf_max":
                new = torch.maximum(pr, back)
                new = new / new.sum()
            else:
                new = torch.sqrt(pr * back)
                new = new / new.sum()
            out[row, t] = new
    return out


def ragged_cf(x: torch.Tensor, table: Table, seed=5) -> Cf:
    """Three cf rows with prefix lengths 5, 2, 9; the second is two tokens shorter (right-padded), as if a
    three-token word had become one token: the two original positions in between are left unaligned.
    The cf tokens after the first swap are random: only the mechanics are under test here."""
    B, T = x.shape
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(*NEUTRAL, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    align = torch.arange(T).repeat(3, 1)
    prefix = torch.tensor([5, 2, 9])
    for s, (row, k) in enumerate(zip([0, 1, 3], prefix.tolist(), strict=True)):
        ids[s, :k] = x[row, :k]
        ids[s, k] = table.counterpart[x[row, k]] if table.counterpart[x[row, k]] != x[row, k] else HE
    # row s=1: positions 2..3 of the original have no counterpart; later positions shift by two
    ids[1, T - 2:] = 0
    mask[1, T - 2:] = 0
    align[1, 3:5] = -1
    align[1, 5:] = torch.arange(3, T - 2)
    align[2, 12] = align[2, 11]  # two original positions read one cf prediction (an out-of-order gather)
    return Cf(torch.tensor([0, 1, 3]), ids, mask, align, prefix)


@pytest.mark.parametrize("mode", tm.CF_MODES)
def test_cf_targets_match_slow_reference(model, mode):
    table = make_table(one_to_one=False)
    x = gendered_batch(T=14)
    cf = ragged_cf(x, table)
    out = teacher_targets(model, x, mode=mode, temperature=1.7, vocab_rows=V, table=table, cf=cf)
    ref = _reference_targets(model, x, cf, table, mode, 1.7)
    torch.testing.assert_close(out.probs, ref, atol=1e-5, rtol=0)


def test_cf_targets_match_slow_reference_on_a_sliding_window_model():
    """Mistral with a 4-token window: the counterfactual forward gets the mask and positions right there too."""
    model = mistral_sliding()
    table = make_table(one_to_one=False)
    x = gendered_batch(T=14)
    cf = ragged_cf(x, table)
    out = teacher_targets(model, x, mode="cf_max", temperature=2.0, vocab_rows=V, table=table, cf=cf)
    torch.testing.assert_close(out.probs, _reference_targets(model, x, cf, table, "cf_max", 2.0), atol=1e-5, rtol=0)


def test_table_vocab_mismatch_is_truncated_or_identity_padded(model):
    x = gendered_batch()
    big = make_table(vocab=70)
    big.counterpart[40], big.counterpart[65] = 65, 40  # a pair that falls outside the 60 shared rows
    big.pairs = torch.cat([big.pairs, torch.tensor([[40, 65]])])
    small = make_table(vocab=30)
    for table in (big, small):
        plan = build_swap_plan(table, 60)
        assert int(plan.fix_cols.max()) < 60 and int(plan.read_cols.max()) < 60
        assert 40 not in plan.pair_cols.tolist() and 40 not in plan.fix_cols.tolist()
        for mode in ("pair_mean", "cf_max"):
            out = teacher_targets(model, x, mode=mode, temperature=1.0, vocab_rows=60, table=table,
                                  cf=exact_cf(x, [0, 1], make_table()))
            assert out.probs.shape == (4, 16, 60)
            torch.testing.assert_close(out.probs.sum(-1), torch.ones(4, 16), atol=1e-5, rtol=0)


def test_outputs_usable_in_autograd_and_hidden(model):
    table = make_table()
    x = gendered_batch()
    out = teacher_targets(model, x, mode="cf_mean", temperature=2.0, vocab_rows=V, table=table,
                          cf=exact_cf(x, [0], table), want_hidden=True)
    assert out.hidden.shape == (4, 16, 32) and out.hidden.dtype == torch.float32
    assert not out.probs.is_inference() and not out.hidden.is_inference()
    student = torch.randn(4, 16, V, requires_grad=True)
    h = torch.randn(4, 16, 32, requires_grad=True)
    loss = -(out.probs * torch.log_softmax(student, -1)).sum() - torch.cosine_similarity(h, out.hidden, -1).sum()
    loss.backward()  # inference tensors would refuse to be saved for backward
    assert student.grad is not None


def test_combine_formulas():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    q = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    torch.testing.assert_close(combine_(p, q.clone(), "cf_mean"), (p + q) / 2)
    m = torch.maximum(p, q)
    torch.testing.assert_close(combine_(p, q.clone(), "cf_max"), m / m.sum())
    g = torch.sqrt(p * q)
    torch.testing.assert_close(combine_(p, q.clone(), "cf_expmean"), g / g.sum())
    disjoint = combine_(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), "cf_expmean")
    torch.testing.assert_close(disjoint, torch.tensor([[0.5, 0.5]]))


def test_bad_inputs_raise(model):
    table = make_table()
    x = gendered_batch()
    with pytest.raises(ValueError, match="unknown teacher mode"):
        teacher_targets(model, x, mode="cf_min", temperature=1.0, vocab_rows=V)
    with pytest.raises(ValueError, match="swap table"):
        teacher_targets(model, x, mode="pair_mean", temperature=1.0, vocab_rows=V)
    cf = exact_cf(x, [0], table)
    cf.prefix_len[0] = 8  # but row 0 differs at position 5
    with pytest.raises(ValueError, match="shared prefix"):
        teacher_targets(model, x, mode="cf_mean", temperature=1.0, vocab_rows=V, table=table, cf=cf)
    cf = exact_cf(x, [0], table)
    cf.align[0, 3] = 16
    with pytest.raises(ValueError, match="align"):
        teacher_targets(model, x, mode="cf_mean", temperature=1.0, vocab_rows=V, table=table, cf=cf)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            teacher_targets(model, x, mode="none", temperature=1.0, vocab_rows=V)
    finally:
        model.eval()


def test_positions_of_one_row_split_over_cf_rows(model):
    """token_swap rule 8: a batch row may have several cf rows, each position held by at most one (OTHER_ROW,
    -3, in the others). Splitting one row's positions over two copies of its counterfactual changes nothing;
    a position held by two rows is refused."""
    table = make_table()
    x = gendered_batch()
    kw = {"mode": "cf_mean", "temperature": 2.0, "vocab_rows": V, "table": table}
    one = exact_cf(x, [0, 3], table)
    want = teacher_targets(model, x, cf=one, **kw).probs
    T = x.shape[1]
    first = torch.where(torch.arange(T) < 8, torch.arange(T), torch.tensor(-3))
    split = Cf(torch.tensor([0, 0, 3]), one.input_ids[[0, 0, 1]], one.attention_mask[[0, 0, 1]],
               torch.stack([first, torch.where(first < 0, torch.arange(T), torch.tensor(-3)), one.align[1]]),
               one.prefix_len[[0, 0, 1]])
    torch.testing.assert_close(teacher_targets(model, x, cf=split, **kw).probs, want, rtol=0, atol=1e-6)
    split.align[1, 7] = 7  # position 7 now held by both rows of batch row 0
    with pytest.raises(ValueError, match="two cf rows"):
        teacher_targets(model, x, cf=split, **kw)


def test_cf_forward_runs_only_the_cf_rows(model):
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    try:
        table = make_table()
        x = gendered_batch(T=14)
        cf = ragged_cf(x, table)  # three of the four rows have a counterfactual
        teacher_targets(model, x, mode="cf_mean", temperature=1.0, vocab_rows=V, table=table, cf=cf)
        assert shapes == [(4, 14), (3, 14)]
        shapes.clear()
        teacher_targets(model, x, mode="pair_mean", temperature=1.0, vocab_rows=V, table=table, cf=cf)
        assert shapes == [(4, 14)]
    finally:
        hook.remove()


def test_bf16_teacher_gives_fp32_targets():
    model = gpt2().to(torch.bfloat16)
    table = make_table(one_to_one=False)
    x = gendered_batch(T=14)
    out = teacher_targets(model, x, mode="cf_expmean", temperature=2.0, vocab_rows=V, table=table,
                          cf=ragged_cf(x, table), want_hidden=True)
    assert out.probs.dtype == torch.float32 and out.hidden.dtype == torch.float32
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(4, 14), atol=1e-5, rtol=0)
