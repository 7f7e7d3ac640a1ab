"""The downstream lens: probe, TPR gaps by hand, bios loading and bad input, and a tiny model on the project's bios."""

import json

import numpy as np
import pytest
from lens_fixtures import equalise, tiny_model, vocabulary, word_tokenizer

from distill.errors import UserError
from distill.eval.lenses import downstream as ld
from distill.eval.lenses.bios_record import Bios


def test_tpr_gaps_by_hand():
    # class 0: 2 female (1 right), 2 male (2 right) -> gap -0.5; class 1: 1 female right, 1 male wrong -> +1
    true = np.array([0, 0, 0, 0, 1, 1])
    female = np.array([True, True, False, False, True, False])
    pred = np.array([0, 1, 0, 0, 1, 0])
    gaps, var = ld.tpr_gaps(pred, true, female, 3)
    np.testing.assert_allclose(gaps[:2], [-0.5, 1.0])
    assert np.isnan(gaps[2])  # class 2 absent from the test split
    assert var[0] == pytest.approx(0.25 / 1 + 0.0) and var[1] == 0.0
    assert ld.rms(gaps) == pytest.approx(np.sqrt((0.25 + 1.0) / 2))


def test_predictions_that_differ_pairs_runs_by_index_else_all_pairs():
    a = [np.array([0, 1, 2, 3]), np.array([0, 0, 0, 0])]
    b = [np.array([0, 1, 2, 0]), np.array([1, 1, 0, 0])]
    assert ld.predictions_that_differ(a, b) == pytest.approx((1 + 2) / 2)  # seed 0 with 0, seed 1 with 1
    assert ld.predictions_that_differ(a, a) == 0.0
    assert ld.predictions_that_differ(a[:1], b) == pytest.approx((1 + 3) / 2)  # 1 run against 2: both pairs


def test_pearson_undefined_without_spread():
    assert ld.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert ld.pearson([1, 1, 1], [2, 4, 6]) is None


def test_probe_learns_a_separable_problem_and_is_deterministic():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 5)) + 4 * np.eye(3, 5)[y]
    p1, p2 = ld.fit_probe(x, y, 3), ld.fit_probe(x, y, 3)
    assert np.mean(p1(x) == y) > 0.95
    np.testing.assert_array_equal(p1(x), p2(x))


def _synthetic(shortcut: float):
    """Two occupations, ambiguous text for half the bios; a gender feature of size `shortcut`. In train the
    first occupation is 80% female; the test split is counterfactual pairs (same text features, both genders)."""
    rng = np.random.default_rng(1)
    texts, occs, gens, splits, feats = [], [], [], [], []
    for split, n in (("train", 200), ("test", 100)):
        for i in range(n):
            occ = i % 2
            clear = rng.random() < 0.5
            signal = (1.0 if occ == 0 else -1.0) * (2.0 if clear else 0.0) + rng.normal() * 0.3
            genders = ([("female" if rng.random() < (0.8 if occ == 0 else 0.2) else "male")] if split == "train"
                       else ["female", "male"])
            for g in genders:
                texts.append(f"bio {i}")
                occs.append(["nurse", "surgeon"][occ])
                gens.append(g)
                splits.append(split)
                feats.append([signal, shortcut * (1.0 if g == "female" else -1.0)])
    return Bios(texts, occs, gens, splits, "synthetic"), np.array(feats)


def test_planted_shortcut_gives_a_gap_with_its_sign_and_none_without_it():
    bios, feats = _synthetic(1.0)
    test = ld.split_bios(bios)
    res = ld.downstream_lens(feats, bios, test, n_boot=100)
    # the female-leaning occupation is found more often for women, the male-leaning one for men
    assert res["tpr_gap"]["nurse"] > 0.3 and res["tpr_gap"]["surgeon"] < -0.3
    assert 0.3 < res["tpr_gap_rms"] <= 0.6  # at most the ambiguous half of the bios can flip
    assert res["gap_vs_female_share_r"] is None  # two occupations: a correlation needs three (the next test)
    lo, hi = res["tpr_gap_rms_ci"]
    assert lo <= res["tpr_gap_rms"] <= hi
    fair_bios, fair_feats = _synthetic(0.0)
    fair = ld.downstream_lens(fair_feats, fair_bios, ld.split_bios(fair_bios), n_boot=100)
    assert fair["tpr_gap_rms"] == 0.0 and fair["tpr_gap"] == {"nurse": 0.0, "surgeon": 0.0}
    # the per-cluster figures of the paired test: their mean is the unbiased mean squared gap
    sq = ld.occupation_squared_gaps(res["_predictions"], bios, test)
    assert len(sq) == 2 and np.mean(sq) == pytest.approx(res["tpr_gap_ms_unbiased"])
    assert np.all(ld.occupation_squared_gaps(fair["_predictions"], fair_bios, test) <= 0.0)  # 0 - its variance


def _synthetic_three(shortcut: float):
    """Three occupations, 80%, 50% and 20% female in train, otherwise as `_synthetic` (one text feature per
    occupation, zero for the ambiguous half; counterfactual pairs in test)."""
    rng = np.random.default_rng(2)
    shares, names = (0.8, 0.5, 0.2), ("nurse", "teacher", "surgeon")
    texts, occs, gens, splits, feats = [], [], [], [], []
    for split, n in (("train", 300), ("test", 150)):
        for i in range(n):
            occ = i % 3
            signal = np.eye(3)[occ] * (2.0 if rng.random() < 0.5 else 0.0) + rng.normal(size=3) * 0.3
            genders = ([("female" if rng.random() < shares[occ] else "male")] if split == "train"
                       else ["female", "male"])
            for g in genders:
                texts.append(f"bio {i}")
                occs.append(names[occ])
                gens.append(g)
                splits.append(split)
                feats.append([*signal, shortcut * (1.0 if g == "female" else -1.0)])
    return Bios(texts, occs, gens, splits, "synthetic"), np.array(feats)


def test_the_gap_follows_the_training_female_share_across_three_occupations():
    bios, feats = _synthetic_three(1.0)
    res = ld.downstream_lens(feats, bios, ld.split_bios(bios), n_boot=50)
    assert res["tpr_gap"]["nurse"] > 0.3 and res["tpr_gap"]["surgeon"] < -0.2
    assert res["gap_vs_female_share_r"] > 0.9  # the gaps line up with how female each occupation was in train
    fair_bios, fair_feats = _synthetic_three(0.0)
    fair = ld.downstream_lens(fair_feats, fair_bios, ld.split_bios(fair_bios), n_boot=50)
    assert fair["gap_vs_female_share_r"] is None  # every gap 0: no spread, no correlation


def test_project_bios_split_and_planted_correlation():
    bios = ld.load_bios("project")
    test = ld.split_bios(bios)
    ld.check_bios(bios, test)
    assert len(bios.texts) == 400 and test.sum() == 160
    occ, fem = np.array(bios.occupations), np.array([g == "female" for g in bios.genders])
    assert np.mean(fem[~test & (occ == "nurse")]) == pytest.approx(0.8)
    assert np.mean(fem[~test & (occ == "surgeon")]) == pytest.approx(0.2)
    assert np.mean(fem[test]) == 0.5  # counterfactual pairs


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(vocabulary())


def _gender_pairs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_bios", ld.PROJECT_BIOS.with_name("make_bios.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [("He", "She"), ("his", "her")] + [(m, f) for f, m in mod.NAMES]


def test_tiny_model_on_project_bios_finds_the_planted_shortcut_and_zero_when_gender_is_invisible(tok):
    bios = ld.load_bios("project")
    test = ld.split_bios(bios)
    model = tiny_model(tok, seed=0)
    res = ld.downstream_lens(ld.bio_features(model, tok, bios.texts), bios, test, n_boot=100)
    again = ld.downstream_lens(ld.bio_features(model, tok, bios.texts), bios, test, n_boot=100)
    assert {k: v for k, v in res.items() if k != "_predictions"} == \
        {k: v for k, v in again.items() if k != "_predictions"}
    assert res["accuracy"] > 0.5  # 8 classes: chance is 0.125
    female_lean = ["nurse", "paralegal", "teacher", "dietitian"]
    assert np.mean([res["tpr_gap"][o] for o in female_lean]) > 0.1
    assert res["gap_vs_female_share_r"] > 0.5 and res["tpr_gap_rms"] > 0.1
    equalise(model, tok, _gender_pairs())
    fair = ld.downstream_lens(ld.bio_features(model, tok, bios.texts), bios, test, n_boot=100)
    assert fair["tpr_gap_rms"] == 0.0 and set(fair["tpr_gap"].values()) == {0.0}


# --------------------------------------------------------------------------------------------- bad input


def _write(tmp_path, rows):
    p = tmp_path / "bios.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_bios_without_gender_field_is_one_line(tmp_path):
    path = _write(tmp_path, [{"text": "a", "occupation": "nurse", "gender": "f"}, {"text": "b", "occupation": "chef"}])
    with pytest.raises(UserError, match=r"line 2 has no 'gender' field") as exc:
        ld.load_bios(path)
    assert "\n" not in str(exc.value)
    path = _write(tmp_path, [{"text": "a", "gender": "f"}])
    with pytest.raises(UserError, match=r"line 1 has no 'occupation' field"):
        ld.load_bios(path)


def test_one_gender_only_in_test_split_is_one_line(tmp_path):
    rows = [{"text": f"t{i}", "occupation": o, "gender": g, "split": s}
            for i, (o, g, s) in enumerate([("nurse", "f", "train"), ("nurse", "m", "train"), ("chef", "m", "train"),
                                           ("nurse", "f", "test"), ("nurse", "m", "test"), ("chef", "m", "test"),
                                           ("chef", "m", "test")])]
    bios = ld.load_bios(_write(tmp_path, rows))
    with pytest.raises(UserError, match=r"occupation 'chef' has only male biographies in the test split"):
        ld.check_bios(bios, ld.split_bios(bios))


def test_other_bad_bios(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ld.load_bios(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="gender 'x' is not one of"):
        ld.load_bios(_write(tmp_path, [{"text": "a", "occupation": "nurse", "gender": "x"}]))
    with pytest.raises(UserError, match="'split' must be"):
        ld.load_bios(_write(tmp_path, [{"text": "a", "occupation": "n", "gender": "f", "split": "dev"}]))


def test_project_bios_file_is_what_its_generator_writes():
    import subprocess
    import sys

    gen = ld.PROJECT_BIOS.with_name("make_bios.py")
    assert subprocess.run([sys.executable, str(gen), "--check"]).returncode == 0


def test_features_batched_by_length_stay_in_text_order(tok):
    """Each text's features, computed alone, against the lens's length-sorted batches."""
    import torch

    bios = ld.load_bios("project")
    texts = bios.texts[:40]
    model = tiny_model(tok, seed=1)
    batched = ld.bio_features(model, tok, texts, batch_size=16)
    with torch.inference_mode():
        alone = [model.base_model(input_ids=torch.tensor([tok(t, add_special_tokens=False)["input_ids"][:ld.MAX_TOKENS]]),
                                  output_hidden_states=True).hidden_states[-1][0].float().mean(0).numpy()
                 for t in texts]
    assert len({len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts}) > 1
    assert np.allclose(batched, np.array(alone), atol=1e-4)
