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


def test_batched_by_length_the_ratios_stay_with_their_own_profession_and_template(tok):
    """One prompt at a time in text order, by hand, against the probe's length-sorted batches."""
    model = _model(tok, seed=5)
    male, female = gender_token_ids(tok)
    texts = probe_texts(PROFESSIONS)
    assert len({len(tok(t)["input_ids"]) for t in texts}) > 1, "prompts of several lengths, or sorting is untested"
    by_hand = []
    with torch.inference_mode():
        for text in texts:
            probs = torch.softmax(model(torch.tensor([tok(text)["input_ids"]])).logits[0, -1, : len(tok)], -1)
            by_hand.append((probs[male].sum().item(), probs[female].sum().item()))
    pm, pf = (np.array(side).reshape(len(PROFESSIONS), -1) for side in zip(*by_hand, strict=True))
    res = probe_model(model, tok, PROFESSIONS, batch_size=5)
    assert res["male_mass"] == pytest.approx(pm.mean(1).tolist(), rel=1e-4)
    assert res["female_mass"] == pytest.approx(pf.mean(1).tolist(), rel=1e-4)
    assert res["template_mean_logratio"] == pytest.approx((np.log(pm) - np.log(pf)).mean(0).tolist(), abs=1e-4)


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


def test_probe_split_is_fixed_disjoint_and_independent_of_the_list():
    """The training-time probe's professions never meet the ones `distill eval` probes, and a profession's half
    does not depend on which other professions a prompt file lists (or on their order)."""
    from distill.eval.probe import probe_professions, probe_split
    from distill.eval.prompts import load_prompts

    professions = probe_professions(load_prompts("professions"))
    val, held = probe_split(professions)
    assert set(val).isdisjoint(held) and sorted(val + held) == sorted(professions)
    assert min(len(val), len(held)) > len(professions) // 3  # a roughly even split, not a degenerate one
    val_rev, _ = probe_split(professions[::-1])
    assert sorted(val_rev) == sorted(val)
    sub_val, _ = probe_split(professions[::3])
    assert set(sub_val) == set(val) & set(professions[::3])


def test_templates_are_many_and_distinct():
    assert len(PROBE_TEMPLATES) >= 12 and len(set(PROBE_TEMPLATES)) == len(PROBE_TEMPLATES)
    assert all(t.count("{p}") == 1 and not t.endswith(" ") for t in PROBE_TEMPLATES)


def test_per_template_offsets_average_to_the_offset_when_every_template_agrees(tok):
    model, n_male, n_female = _planted(tok, 2.0, 0.0)
    res = probe_model(model, tok, PROFESSIONS)
    assert len(res["template_mean_logratio"]) == len(PROBE_TEMPLATES)
    assert np.allclose(res["template_mean_logratio"], np.mean(res["logratio"]), atol=1e-6)


def test_a_probe_set_without_a_validation_half_is_refused_before_any_model_loads(tmp_path, capsys):
    import json

    from bad_input_helpers import assert_one_error_line, run_cli

    from distill.eval.probe import probe_split

    one = next(p for p in ["nurse", "plumber", "judge", "baker", "pilot"] if probe_split([("c", p)])[0])
    prompts = tmp_path / "one.json"
    prompts.write_text(json.dumps({"health": {one: [f"The {one} said that"]}}))
    out = tmp_path / "run"
    assert run_cli("train", "--recipe", "recipes/debug.yaml", f"output_dir={out}",
                   f"train.probe_prompts={prompts}") == 2
    assert_one_error_line(capsys, "train", "train.probe_prompts", "1 profession", "train.probe=false")
    assert not out.exists()
