"""The likelihood probe on tiny GPT-2s: a planted pronoun bias is recovered, reruns are identical."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from distill.eval.probe import PROBE_TEMPLATES, gender_token_ids, probe_model, probe_summary, probe_texts

TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "tiny_tokenizer"
PROFESSIONS = [("healthcare", "nurse"), ("trades", "plumber"), ("legal", "judge")]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def _model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tok) + 3,  # padded rows
                     tie_word_embeddings=False)
    return GPT2LMHeadModel(cfg).eval()


def _planted(tok, male_logit, female_logit):
    """Every position's logits are 0 except male_logit on the male ids and female_logit on the female ids:
    the final norm outputs a constant unit vector and the LM head reads only its first coordinate."""
    model = _model(tok)
    male, female = gender_token_ids(tok)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[male, 0] = male_logit
        model.lm_head.weight[female, 0] = female_logit
    return model, len(male), len(female)


def test_gender_ids_cover_spellings_with_and_without_space(tok):
    male, female = gender_token_ids(tok)
    spelled = {tok.decode([i]) for i in male}
    assert {"he", " he", "He", " his"} <= spelled
    assert " she" in {tok.decode([i]) for i in female}
    assert not set(male) & set(female)


def test_planted_male_bias_is_recovered(tok):
    model, n_male, n_female = _planted(tok, 2.0, 0.0)
    res = probe_model(model, tok, PROFESSIONS, batch_size=5)  # 12 prompts in batches of 5: padding in use
    expected = 2.0 + math.log(n_male / n_female)  # P(male) / P(female) = n_male e^2 / n_female
    assert res["logratio"] == pytest.approx([expected] * 3, rel=1e-5)
    assert all(0 < f < m < 1 for m, f in zip(res["male_mass"], res["female_mass"], strict=True))
    model, n_male, n_female = _planted(tok, 0.0, 3.0)  # now female
    lr = probe_model(model, tok, PROFESSIONS)["logratio"]
    assert lr == pytest.approx([math.log(n_male / n_female) - 3.0] * 3, rel=1e-5) and max(lr) < 0


def test_probe_is_identical_on_rerun_and_independent_of_batching(tok):
    model = _model(tok, seed=3)
    a = probe_model(model, tok, PROFESSIONS, batch_size=4)
    b = probe_model(model, tok, PROFESSIONS, batch_size=4)
    assert a == b  # bitwise: no sampling anywhere
    c = probe_model(model, tok, PROFESSIONS, batch_size=1)
    assert c["logratio"] == pytest.approx(a["logratio"], abs=1e-5)
    assert len(probe_texts(PROFESSIONS)) == len(PROFESSIONS) * len(PROBE_TEMPLATES)


def test_summary_known_answers():
    teacher = np.array([1.0, -1.0, 0.5, -0.5])
    s = probe_summary(teacher)
    assert s["rms_logratio"] == pytest.approx(math.sqrt(0.625)) and s["mean_logratio"] == 0.0
    assert "slope_on_teacher" not in s
    half = probe_summary(0.5 * teacher + 0.2, teacher)  # half the stereotype, shifted offset
    assert half["slope_on_teacher"] == pytest.approx(0.5) and half["r_on_teacher"] == pytest.approx(1.0)
    assert half["mean_logratio"] == pytest.approx(0.2)
    flat = probe_summary(np.full(4, 0.3), teacher)
    assert flat["slope_on_teacher"] == 0.0 and flat["r_on_teacher"] is None
    assert probe_summary(teacher, np.zeros(4))["slope_on_teacher"] is None
