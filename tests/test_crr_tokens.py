"""Gender swap on tokens: swap tables, counterfactual blocks and their alignment, the teacher's use of them.

    python -m pytest tests/test_crr_tokens.py -q

A tiny GPT-2-style byte-level BPE is trained here from the project's own sentences (no network, well under a
second), so the token-level checks see real multi-token words and leading-space tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from crr_helpers import check_alignment, next_tokens_map_back, read_cases

from distill.crr import token_swap
from distill.crr.lexicon import load_lexicon
from distill.crr.token_swap import counterfactual_batch
from distill.crr.token_table import (
    SAME_CONTEXT,
    build_token_swap_table,
    word_piece_occurrences,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lex():
    return load_lexicon()


EXTRA = [
    "The waiter said that he would bring the soup.",  # " waiter" frequent, " waitress" rare: multi-token
    "He told his sister that the waiter was late.",
    "She thanked him and the waiter for the bread.",
    "The doctor said that he would call his sister today.",
]


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [o for _, o, _ in read_cases()] + [e for _, _, e in read_cases()] + EXTRA * 40
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def table(tok, lex):
    return build_token_swap_table(tok, lex)


def one(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, tok.convert_ids_to_tokens(ids))
    return ids[0]


def test_table_entries(tok, table):
    V = len(tok)
    assert table.counterpart.shape == (V,) and table.is_gendered.shape == (V,)
    he, she, him, his, her = (one(tok, w) for w in (" he", " she", " him", " his", " her"))
    assert table.counterpart[he] == she and table.counterpart[she] == he
    assert table.counterpart[him] == her and table.counterpart[his] == her
    assert table.counterpart[one(tok, "He")] == one(tok, "She")
    assert table.counterpart[her] == him  # default; the full set is in back_groups
    assert table.back_groups[her] == [him, his]
    pairs = {tuple(p) for p in table.pairs.tolist()}
    assert (he, she) in pairs and (she, he) not in pairs  # [male, female]
    assert {(him, her), (his, her)} <= pairs
    assert len(pairs) == len(table.pairs) == len({frozenset(p) for p in pairs})
    the = one(tok, " the")
    assert not table.is_gendered[the] and table.counterpart[the] == the
    moved = (table.counterpart != torch.arange(V)).nonzero().flatten()
    assert table.is_gendered[moved].all()
    for i in table.is_gendered.nonzero().flatten().tolist():  # every entry maps to a real gendered token
        assert table.is_gendered[table.counterpart[i]]


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def block(tok, texts: list[str], pad_text: str = " the") -> torch.Tensor:
    rows = [enc(tok, t) for t in texts]
    T = max(map(len, rows))
    filler = enc(tok, pad_text)[0]
    return torch.tensor([r + [filler] * (T - len(r)) for r in rows])


def test_exact_rows_are_pure_substitutions(tok, table, lex):
    x = block(tok, ["The doctor said that he would call his sister today and then left",
                    "The weather was fine and the roads were dry all day long",
                    "Then she thanked him for the bread and the soup at the table"])
    cf = counterfactual_batch(x, tok, table, lex)
    assert cf.rows.tolist() == [0, 2]  # the neutral row is left out
    assert cf.n_aligned == 0 and cf.n_exact == 3 + 2
    B, T = x.shape
    assert cf.input_ids.shape == (2, T) and bool(cf.attention_mask.all())
    assert torch.equal(cf.align, torch.arange(T).expand(2, T))
    for i, r in enumerate(cf.rows.tolist()):
        orig, new = x[r], cf.input_ids[i]
        changed = (orig != new).nonzero().flatten()
        assert torch.equal(new[changed], table.counterpart[orig[changed]])
        assert int(cf.prefix_len[i]) == int(changed[0])
    assert tok.decode(cf.input_ids[0]).startswith("The doctor said that she would call her brother today")
    assert tok.decode(cf.input_ids[1]).startswith("Then he thanked her for the bread")


def test_multi_token_counterpart_is_aligned(tok, table, lex):
    waiter, waitress = enc(tok, " waiter"), enc(tok, " waitress")
    assert len(waiter) == 1 and len(waitress) > 1, tok.convert_ids_to_tokens(waitress)
    x = block(tok, ["Then the waiter brought us the soup and the bread at noon",
                    "Then the waitress brought us the soup and the bread at noon"])
    cf = counterfactual_batch(x, tok, table, lex)
    assert cf.rows.tolist() == [0, 1] and cf.n_aligned == 2 and cf.n_exact == 0
    T = x.shape[1]
    k = len(enc(tok, "Then the"))
    extra = len(waitress) - 1
    # row 0: " waiter" -> " wait"+"ress": one token longer, cut back to T (the last position loses its counterpart)
    assert cf.input_ids.shape == (2, T)
    assert cf.align[0, :k - 1].tolist() == list(range(k - 1))
    assert cf.align[0, k - 1] == -1  # predicting " waiter" vs " wait": no table entry relates them (rule 5b)
    assert cf.align[0, k] == k + extra  # after "waiter" <-> after "waitress"
    assert cf.align[0, k + 1:T - extra].tolist() == list(range(k + 1 + extra, T))
    assert cf.align[0, T - extra:].tolist() == [-1] * extra
    # row 1: " wait"+"ress" -> " waiter": the first piece has no counterpart
    assert cf.align[1, k - 1:k + len(waitress)].tolist() == [-1] * len(waitress) + [k]
    assert int(cf.attention_mask[1].sum()) == T - extra
    assert cf.input_ids[1, T - extra:].tolist() == [tok.eos_token_id] * extra  # right padding
    assert cf.prefix_len.tolist() == [k, k]
    # following text is identical after the swapped word
    P = table.pieces
    for i in range(2):
        orig = "".join(P[t] for t in x[i].tolist())
        new = "".join(P[t] for t in cf.input_ids[i, :int(cf.attention_mask[i].sum())].tolist())
        t = k + (0 if i == 0 else len(waitress) - 1)
        j = int(cf.align[i, t])
        o_end = len("".join(P[u] for u in x[i, :t + 1].tolist()))
        c_end = len("".join(P[u] for u in cf.input_ids[i, :j + 1].tolist()))
        assert orig[o_end:].startswith(new[c_end:]) or new[c_end:].startswith(orig[o_end:])
    check_alignment(tok, lex, table, x, cf)


def test_counterfactual_text_matches_text_swap_on_all_cases(tok, table, lex):
    sentences = [o for _, o, _ in read_cases()]
    x = block(tok, ["\n" + s + "\n" for s in sentences], pad_text="\n")
    cf = counterfactual_batch(x, tok, table, lex)
    rows = cf.rows.tolist()
    want = [i for i, s in enumerate(sentences) if lex.swap_text(s) != s]
    assert set(want) <= set(rows) and rows == sorted(rows)
    # rule 8's extra rows: "her very much", "his or her book", and rows whose only word starts a kept phrase,
    # swapped where the context holds the word but not the phrase yet ("A man|-made")
    assert all(any(k in sentences[r].lower() for k in lex.keep) for r in set(rows) - set(want))
    assert 0 < cf.n_causal_rows == len(rows) - len(want)
    for r in want:  # a batch row's own counterfactual comes first, its extra rows after it
        i = rows.index(r)
        n = int(cf.attention_mask[i].sum())
        got = tok.decode(cf.input_ids[i, :n]).strip("\n")
        assert got == lex.swap_text(sentences[r]), sentences[r]
    assert cf.n_exact > 0 and cf.n_aligned > 0
    check_alignment(tok, lex, table, x, cf)
    # the teacher's checks: align points into the real (unpadded) part of each row
    assert int((cf.align - cf.attention_mask.sum(1, keepdim=True)).max()) < 0 and int(cf.align.min()) >= -3


def test_packed_blocks_edges_and_candidate_path(tok, table, lex, monkeypatch):
    text = "\n".join(o for _, o, _ in read_cases())
    ids = enc(tok, text)
    T = 48
    x = torch.tensor(ids[: len(ids) // T * T]).reshape(-1, T)
    cf = counterfactual_batch(x, tok, table, lex)
    check_alignment(tok, lex, table, x, cf)
    monkeypatch.setattr(token_swap, "_SCAN_COST_RATIO", 10**9)  # force the whole-text regex scan on every row
    full = counterfactual_batch(x, tok, table, lex)
    for name in ("rows", "input_ids", "attention_mask", "align", "prefix_len"):
        assert torch.equal(getattr(cf, name), getattr(full, name)), name
    assert (cf.n_exact, cf.n_aligned) == (full.n_exact, full.n_aligned)
    # a word cut by the block edge is not swapped: "man" at the very start, "he" at the very end
    edge = torch.tensor([enc(tok, "man in the street said that") + enc(tok, " he")])
    assert counterfactual_batch(edge, tok, table, lex).rows.numel() == 0


def test_empty_and_bad_batches(tok, table, lex):
    cf = counterfactual_batch(torch.tensor([enc(tok, "The weather was fine and dry.")]), tok, table, lex)
    assert cf.rows.numel() == 0 and cf.input_ids.shape[0] == 0 and cf.align.shape == (0, cf.align.shape[1])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        counterfactual_batch(torch.tensor([1, 2, 3]), tok, table, lex)
    with pytest.raises(ValueError, match="outside"):
        counterfactual_batch(torch.tensor([[len(tok) + 5]]), tok, table, lex)


@pytest.mark.parametrize("word", [" he", " waiter"], ids=["exact", "aligned"])
def test_document_scope_stops_at_the_end_of_the_swapped_document(tok, table, lex, word):
    eos = tok.eos_token_id
    doc = enc(tok, "Then the") + enc(tok, word) + enc(tok, " brought us the soup and the bread at noon")
    rest = enc(tok, "The weather was fine and the roads were dry all day long")
    x = torch.tensor([[eos] + doc + [eos] + rest + [eos] + rest])
    block_cf = counterfactual_batch(x, tok, table, lex)
    doc_cf = counterfactual_batch(x, tok, table, lex, document_end=eos)
    last = 1 + len(doc)  # the EOS that ends the swapped document
    n = int(doc_cf.attention_mask[0].sum())
    shift = int(block_cf.align[0, last]) - last  # length change of the swapped word
    assert n == last + shift + 1 and int(doc_cf.input_ids[0, n - 1]) == eos
    assert doc_cf.input_ids[0, :n].tolist() == block_cf.input_ids[0, :n].tolist()
    assert doc_cf.align[0, :last + 1].tolist() == block_cf.align[0, :last + 1].tolist()
    assert doc_cf.align[0, last + 1:].tolist() == [SAME_CONTEXT] * (x.shape[1] - last - 1)
    assert int(doc_cf.prefix_len[0]) == int(block_cf.prefix_len[0])
    # no document end after the swapped word: the counterfactual runs to the end of the block, as before
    open_ended = x[:, : last]
    a = counterfactual_batch(open_ended, tok, table, lex, document_end=eos)
    b = counterfactual_batch(open_ended, tok, table, lex)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.align, b.align)


def test_document_scope_targets_equal_block_scope_inside_the_document_and_own_context_after(tok, table, lex):
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.train.targets import teacher_targets

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64,
                                       initializer_range=0.3)).eval()  # sharp enough to tell scopes apart
    eos = tok.eos_token_id
    doc = enc(tok, "The doctor said that he would call his sister today")
    rest = enc(tok, "The weather was fine and the roads were dry all day long")
    x = torch.tensor([[eos] + doc + [eos] + rest, [eos] + rest + [eos] + doc[:10]])
    kwargs = {"mode": "cf_mean", "temperature": 2.0, "vocab_rows": len(tok), "table": table}
    block = teacher_targets(model, x, cf=counterfactual_batch(x, tok, table, lex), **kwargs).probs
    scoped = teacher_targets(model, x, cf=counterfactual_batch(x, tok, table, lex, document_end=eos), **kwargs).probs
    own = teacher_targets(model, x, **kwargs).probs  # no counterfactual: every context is its own
    last = 1 + len(doc)
    torch.testing.assert_close(scoped[0, :last + 1], block[0, :last + 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(scoped[0, last + 1:], own[0, last + 1:], rtol=0, atol=1e-6)
    assert (block[0, last + 1:] - own[0, last + 1:]).abs().max() > 1e-4  # block scope did change them
    torch.testing.assert_close(scoped[1], block[1], rtol=0, atol=1e-6)  # swap in the last document: same


@pytest.mark.parametrize("male,female", [(" waiter", " waitress"), (" Mr.", " Ms."), (" nephew", " niece")])
def test_pieces_of_multi_token_swaps_get_no_counterfactual_target(lex, male, female):
    """Issue 11, defect 3: on data/tiny_tokenizer " wait|er" <-> " wait|re|ss", " M|r|." <-> " M|s|.",
    " ne|p|he|w" <-> " n|ie|ce". A position whose next token is a piece of such a word was aligned with the
    counterfactual position predicting the other word's piece ("re", "s", " n"), which no table entry maps
    back, so the female piece's mass landed in a male context. Those positions now get no counterfactual
    (-1); a shared first piece (" wait", " M") and the position after the whole word keep their counterpart."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny_tokenizer")
    table = build_token_swap_table(tok, lex)
    for word, other in ((male, female), (female, male)):
        a, b = enc(tok, word), enc(tok, other)
        assert len(a) > 1 and a != b
        text = f"Then I met{word} Smith at the bank and we talked for a while"
        assert lex.swap_text(text) == text.replace(word, other)
        x = block(tok, [text])
        cf = counterfactual_batch(x, tok, table, lex)
        assert cf.rows.tolist() == [0]
        assert next_tokens_map_back(x, cf, table) == []  # old code: the female piece's position, every time
        k, n = len(enc(tok, "Then I met")), len(a)
        d = next(i for i in range(n) if a[i] != b[i])  # the first piece that differs
        assert cf.align[0, :k - 1 + d].tolist() == list(range(k - 1 + d))
        assert int(cf.align[0, k - 1 + d]) == -1
        assert int(cf.align[0, k + n - 1]) == k + len(b) - 1  # after the whole word: after the whole other


def test_every_aligned_counterfactual_next_token_maps_back(tok, table, lex):
    sentences = [o for _, o, _ in read_cases()]
    x = block(tok, ["\n" + s + "\n" for s in sentences], pad_text="\n")
    cf = counterfactual_batch(x, tok, table, lex)
    assert cf.n_aligned > 0
    assert next_tokens_map_back(x, cf, table) == []


@pytest.mark.parametrize("mode", ["cf_mean", "cf_max", "cf_expmean"])
@pytest.mark.parametrize("scope", ["document", "block"])
def test_cf_target_of_a_context_does_not_depend_on_later_words(tok, table, lex, mode, scope):
    """Issue 11, defect 2: positions before the first swap of a row with one got combine(p, map_back(p)) while
    rows with no swap kept p, so one context had two targets depending on what came later in the block. Now
    every position's target is combine(p, map_back(q)), q the teacher's prediction after the counterfactual of
    the context (p itself when the context has nothing to swap). Rows that share their first d tokens get the
    same targets at positions < d, whether or not a gendered word, or a document end, follows.
    The families after the first two read later words: "her" became "him" before "very much." but "his"
    before "very old car.", "his" became "hers" before "or her." but "her" before "or her book.", "man" stayed
    in "man-made" but not in "man-eating", and under document scope a document without a swap kept its own
    context only when no later document of the block had one (rules 7 and 8 of token_swap). There the token
    at d is predicted by position d - 1, which rule 5b lets decide the swap ("his or her|." -> "hers or him"),
    so those rows agree before d - 1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.train.targets import teacher_targets

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64)).eval()
    eos = tok.eos_token_id
    families = [
        (["The doctor said that he would call his sister today", "The doctor said that the weather was fine",
          "The doctor said that.<|endoftext|>She was tired", "The doctor said that she would call"], 0),
        (["He said that the weather was fine and dry", "He said that the nurse told her she was late",
          "He said that the man was here"], 0),
        (["Yesterday I saw her very much.", "Yesterday I saw her very old car."], 0),
        (["It was his or her book.", "It was his or her."], 1),
        (["They said the man-made lake was calm", "They said the man-eating lion was calm"], 1),
        (["<|endoftext|>He said so.<|endoftext|>The weather was fine.<|endoftext|>She was tired",
          "<|endoftext|>He said so.<|endoftext|>The weather was fine.<|endoftext|>The bread was dry"], 1),
    ]
    document_end = eos if scope == "document" else None
    for texts, predicted_decides in families:
        x = block(tok, texts)
        out = teacher_targets(model, x, mode=mode, temperature=2.0, vocab_rows=len(tok), table=table,
                              cf=counterfactual_batch(x, tok, table, lex, document_end)).probs
        plain = teacher_targets(model, x, mode="none", temperature=2.0, vocab_rows=len(tok)).probs
        d = int((x != x[0]).any(0).int().argmax())  # first position where the rows differ
        assert d >= 4
        shared = d - predicted_decides
        for r in range(1, len(texts)):
            torch.testing.assert_close(out[r, :shared], out[0, :shared], rtol=0, atol=1e-5,
                                       msg=lambda m, text=texts[r]: f"{text!r}: {m}")
        assert (out[0, :d] - plain[0, :d]).abs().max() > 1e-4  # the rule acts on these positions


@pytest.mark.parametrize("scope", ["document", "block"])
def test_position_predicting_a_word_decided_later_keeps_its_counterpart(tok, table, lex, scope):
    """Rule 8 where the predicted token is "Her": what it becomes is decided by the words after it ("Her." ->
    "Him", whose first piece "H" maps back to nothing; "Her book" -> "His"), so the row's own decision gave the
    position that predicts it a counterpart in one row and none (p kept) in the other. Now the position keeps
    its counterpart when one of the forms the word may take maps back, in both rows alike."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.train.targets import teacher_targets

    assert (len(enc(tok, "\nHer")), len(enc(tok, "\nHim")), len(enc(tok, "\nHis"))) == (2, 3, 2)
    texts = ["It rained.\nHer book was wet", "It rained.\nHer."]
    assert [lex.swap_text(t) for t in texts] == ["It rained.\nHis book was wet", "It rained.\nHim."]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64,
                                       initializer_range=0.3)).eval()
    x = block(tok, texts)
    cf = counterfactual_batch(x, tok, table, lex, tok.eos_token_id if scope == "document" else None)
    kw = {"temperature": 2.0, "vocab_rows": len(tok)}
    out = teacher_targets(model, x, mode="cf_mean", table=table, cf=cf, **kw).probs
    p = teacher_targets(model, x, mode="none", **kw).probs
    t = len(enc(tok, "It rained.\n")) - 1  # the position that predicts "Her"
    assert x[0, t + 1] == x[1, t + 1] == enc(tok, "Her")[0]
    torch.testing.assert_close(out[1, t], out[0, t], rtol=0, atol=1e-6)
    assert (out[:, t] - p[:, t]).abs().max() > 1e-4  # a counterpart: combined, not the teacher's own p


@pytest.mark.parametrize("mode", ["pair_mean", "cf_mean"])
def test_spellings_without_a_space_are_swapped_only_where_a_word_starts(tok, table, lex, mode):
    """Issue 11, defect 4: the table holds spellings without a leading space ("man", "She"), and pair_mean and
    mapping back moved their mass inside words ("She|r|man" -> "She|r|woman"). Now they are swapped only
    where a word may start: at a position whose context ends in a letter or digit, their columns keep p."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.train.targets import teacher_targets

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64,
                                       initializer_range=0.3)).eval()
    text = "Then Sherman took the head of history home.\nHe left the man alone"
    assert lex.swap_text(text).startswith("Then Sherman took the head of history home.\nShe")
    x = torch.tensor([enc(tok, text)])
    P = table.pieces
    man, woman = one(tok, "man"), one(tok, "woman")
    assert int(table.counterpart[man]) == woman
    nospace = [i for i in table.is_gendered.nonzero().flatten().tolist() if P[i][:1].isalnum()]
    assert {man, woman} <= set(nospace)
    kw = {"temperature": 1.0, "vocab_rows": len(tok)}
    cf = counterfactual_batch(x, tok, table, lex, tok.eos_token_id) if mode != "pair_mean" else None
    out = teacher_targets(model, x, mode=mode, table=table, cf=cf, **kw).probs[0]
    p = teacher_targets(model, x, mode="none", **kw).probs[0]
    first_swap = enc(tok, "Then Sherman took the head of history home.\n").__len__()
    mid = [t for t in range(first_swap) if P[int(x[0, t])][-1:].isalnum()]  # later: the cf forward's q
    start = [t for t in range(first_swap) if t not in mid]
    assert len(mid) >= 5 and len(start) >= 3
    assert enc(tok, "Then Sherman")[-1] == man and enc(tok, "Then Sherman")[-2] in [x[0, t] for t in mid]
    torch.testing.assert_close(out[mid][:, nospace], p[mid][:, nospace], rtol=0, atol=1e-7)
    torch.testing.assert_close(out[start][:, man], out[start][:, woman], rtol=0, atol=1e-7)
    assert (out[start][:, man] - p[start][:, man]).abs().max() > 1e-5


def test_share_of_table_ids_that_are_pieces_of_longer_words(tok, table):
    """The measurement behind the README's figure: every occurrence of a table id that is a piece of a longer
    word; before the word-start rule all were acted on, after it only word-initial pieces (" he|ad")."""
    ids = enc(tok, "Then Sherman took the head of history home by herself. He left the man")
    got = word_piece_occurrences([ids], table)
    # She|r|man: "She" (word-initial piece) and "man" (inside the word); " he|ad", " his|t|or|y", " hers|elf"
    assert got == {"occurrences": 7, "pieces": 5, "acted_on_before": 5, "acted_on_after": 4}
