"""The embedding-association lens: formulas on hand-made numbers, and on a tiny model with a planted bias."""

import math

import numpy as np
import pytest
import torch
from lens_fixtures import equalise, shift_words, tiny_model, vocabulary, word_tokenizer

from distill.errors import UserError
from distill.eval.lenses import embedding as le


def test_effect_size_by_hand():
    # s_x = [1, 2], s_y = [0, 1]: diff of means 1, pooled [1, 2, 0, 1] sd (ddof 1) = sqrt(2/3)
    assert le.effect_size(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == pytest.approx(1 / math.sqrt(2 / 3))
    assert le.effect_size(np.array([0.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(-1 / math.sqrt(2 / 3))
    assert le.effect_size(np.zeros(3), np.zeros(3)) == 0.0  # no spread: defined as 0, not NaN


def test_association_by_hand():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    w = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    np.testing.assert_allclose(le.association(w, a, b), [1.0, 0.0, -1.0], atol=1e-12)


def test_permutation_p_extremes():
    # fully separated groups of 4: only 2 of the C(8,4)=70 partitions reach |d| -> p near 2/70
    p = le.permutation_p(np.array([5.0, 6, 7, 8]), np.array([1.0, 2, 3, 4]), 20000, 0)
    assert p == pytest.approx(2 / 70, abs=0.006)
    assert le.permutation_p(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4]), 2000, 0) == 1.0


def test_random_effects_by_hand():
    # equal effects: no heterogeneity, tau^2 = 0, the combination is the common value, se = sqrt(1/sum(1/v))
    r = le.random_effects(np.array([0.5, 0.5, 0.5]), np.array([0.1, 0.2, 0.4]))
    assert r["tau2"] == 0.0 and r["effect_size"] == pytest.approx(0.5)
    assert r["se"] == pytest.approx(math.sqrt(1 / (10 + 5 + 2.5)))
    assert r["p"] == pytest.approx(math.erfc(0.5 / r["se"] / math.sqrt(2)))
    # spread far beyond the within-variance: tau^2 > 0 and the weights move towards equal
    r = le.random_effects(np.array([-1.0, 1.0, 3.0]), np.array([0.01, 0.01, 0.01]))
    assert r["tau2"] == pytest.approx((800 - 2) / (300 - 30000 / 300) - 0.0, rel=1e-9)
    assert r["effect_size"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def setup():
    tok = word_tokenizer(vocabulary())
    spec = le.load_embedding_spec()
    return tok, spec


def _planted(tok, spec, amount, targets=1.0):
    """A tiny model whose input embeddings push male terms one way and female terms the other, and the X and Y
    targets along the same axis (targets=-1: X towards the female terms, the anti-stereotype)."""
    model = tiny_model(tok)
    g = torch.nn.functional.normalize(torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(5)), dim=0)
    for t in spec.tests:
        shift_words(model, tok, t.a, g, amount)
        shift_words(model, tok, t.b, g, -amount)
        shift_words(model, tok, t.x, g, targets * amount)
        shift_words(model, tok, t.y, g, -targets * amount)
    return model


def _lens(model, tok, spec):
    return le.embedding_lens(le.word_representations(model, tok, spec), spec, n_perm=2000, seed=0)


def test_planted_bias_is_recovered_with_its_sign(setup):
    tok, spec = setup
    pos = _lens(_planted(tok, spec, 0.5), tok, spec)
    neg = _lens(_planted(tok, spec, 0.5, targets=-1.0), tok, spec)
    for t in pos["tests"]:
        assert t["effect_size"] > 1.2 and t["p"] < 0.01, t  # near the ceiling (~1.94 for 8 vs 8 words)
    for t in neg["tests"]:
        assert t["effect_size"] < -1.2 and t["p"] < 0.01, t
    assert pos["combined_effect_size"] > 1.0 and pos["combined_p"] < 1e-3
    assert neg["combined_effect_size"] < -1.0
    lo, hi = pos["combined_ci"]
    assert lo < pos["combined_effect_size"] < hi


def test_equal_attribute_embeddings_give_zero(setup):
    tok, spec = setup
    model = _planted(tok, spec, 0.5)
    t0 = spec.tests[0]
    equalise(model, tok, list(zip(t0.a, t0.b, strict=True)))  # every test shares the attribute sets
    res = _lens(model, tok, spec)
    for t in res["tests"]:
        assert t["effect_size"] == 0.0 and t["p"] == 1.0 and t["ceat_effect_size"] == 0.0
    assert res["combined_effect_size"] == 0.0 and res["combined_p"] == 1.0


def test_deterministic_across_reruns(setup):
    tok, spec = setup
    a = _lens(_planted(tok, spec, 0.2), tok, spec)
    b = _lens(_planted(tok, spec, 0.2), tok, spec)
    assert a == b


def test_chosen_layer_and_out_of_range(setup):
    tok, spec = setup
    model = _planted(tok, spec, 0.5)
    first = le.word_representations(model, tok, spec, layer=0)
    last = le.word_representations(model, tok, spec, layer=-1)
    assert not np.allclose(first["he"], last["he"])
    # layer 0 is the token embedding plus position: the planted shift is there before any block
    assert _lens_from(first, spec)["combined_effect_size"] > 1.0
    with pytest.raises(UserError, match="--lens-layer 7 is out of range"):
        le.word_representations(model, tok, spec, layer=7)


def _lens_from(reps, spec):
    return le.embedding_lens(reps, spec, n_perm=200, seed=0)


def test_paired_comparison_sees_the_removed_bias(setup):
    tok, spec = setup
    biased = _planted(tok, spec, 0.5)
    fair = _planted(tok, spec, 0.5)
    t0 = spec.tests[0]
    equalise(fair, tok, list(zip(t0.a, t0.b, strict=True)))
    from distill.eval.paired import paired_test

    names = [t.name for t in spec.tests]
    reps = le.word_representations(biased, tok, spec)
    ua, strata = le.word_effects(le.associations_for(reps, spec), names)
    ub, _ = le.word_effects(le.associations_for(le.word_representations(fair, tok, spec), spec), names)
    assert len(ua) == 3 * 16 and strata == [n for n in names for _ in range(16)]
    # the mean of a test's word terms is its effect size
    per_test = le.embedding_lens(reps, spec, n_perm=10, seed=0)["tests"]
    for k, t in enumerate(per_test):
        assert ua[16 * k:16 * (k + 1)].mean() == pytest.approx(t["effect_size"])
    assert np.all(ub == 0.0) and np.all(ua > 0.0)
    c = paired_test(ua, ub, strata, n_boot=200, seed=0)
    assert c["diff"] == pytest.approx(-ua.mean()) and c["ci"][1] < 0 and c["p"] < 0.001


def test_unplaceable_word_is_one_line_before_compute(setup, tmp_path):
    tok, spec = setup
    bad = tmp_path / "tests.json"
    bad.write_text('{"tests": [{"name": "t", "x": ["career", "zyzzyva"], "y": ["home", "baby"], '
                   '"a": ["he", "him"], "b": ["she", "her"]}]}')
    spec_bad = le.load_embedding_spec(bad)
    with pytest.raises(UserError) as exc:
        le.check_placeable(spec_bad, tok, "m")
    msg = str(exc.value)
    assert "\n" not in msg and "'zyzzyva'" in msg and "unknown token" in msg and msg.startswith("m: ")
    le.check_placeable(spec, tok)  # the project's lists are placeable


def test_word_merged_with_its_neighbour_cannot_be_placed():
    # a BPE that learned "erfly" + "." as one token cannot separate the word from the full stop
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2, ".": 3, "b.": 4, " ": 5}, merges=[("a", "b"), ("b", ".")]))
    tk.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    got = le.word_token_span(tok, "a b.", 2, 3)
    assert isinstance(got, str) and "across the word's edge" in got
    ids, pos = le.word_token_span(tok, "ab .", 0, 2)
    assert pos == [0] and ids[0] == 2
