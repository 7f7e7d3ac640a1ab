"""`distill eval --lens ...` end to end on tiny word-level GPT-2s: results.json contract, report, plot, bad input."""

import json

import numpy as np
import pytest
import torch
from lens_fixtures import PNG_MAGIC, equalise, tiny_model, vocabulary, word_tokenizer

from distill.cli import main


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: intra-op threads only add hand-off cost on a shared CPU (see fit_probe)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """'biased': a tiny random model; 'fair': the same weights with every gendered word's embedding made equal
    to its counterpart (He/She, his/her, the bios' name pairs, the attribute pairs), so it cannot tell them apart."""
    import importlib.util

    from distill.eval.lenses import downstream as ld
    from distill.eval.lenses import embedding as le

    root = tmp_path_factory.mktemp("lens_models")
    tok = word_tokenizer(vocabulary())
    spec = importlib.util.spec_from_file_location("make_bios", ld.PROJECT_BIOS.with_name("make_bios.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = le.load_embedding_spec().tests[0]
    # "her" is the possessive in the bios (his/her) and the object in the attribute list (him/her): pair it
    # with "his" and "hers" with "him", so the male and female attribute sets become the same set of vectors
    attrs = [(a, b) for a, b in zip(t0.a, t0.b, strict=True) if b not in ("her", "hers")] + [("him", "hers")]
    pairs = [("He", "She"), ("his", "her")] + [(m, f) for f, m in mod.NAMES] + attrs
    out = {}
    for name in ("biased", "fair"):
        model = tiny_model(tok)
        if name == "fair":
            equalise(model, tok, pairs)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    small = word_tokenizer([w for w in vocabulary() if w != "astronomy"])  # cannot place one target word
    model = tiny_model(small)
    model.save_pretrained(root / "small")
    small.save_pretrained(root / "small")
    out["small"] = root / "small"
    return out


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def test_lenses_without_generation(models, tmp_path, capsys):
    out = tmp_path / "lenses"
    code = _run(["eval", "--model", f"biased={models['biased']}", "--model", f"fair={models['fair']}",
                 "--lens", "embedding,downstream", "--bootstrap", 200, "--out", out])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    b, f = res["models"]["biased"], res["models"]["fair"]
    for m in (b, f):
        assert {"tests", "combined_effect_size", "combined_p"} <= set(m["embedding"])
        assert all({"name", "effect_size", "p"} <= set(t) for t in m["embedding"]["tests"])
        assert {"tpr_gap_rms", "tpr_gap", "accuracy"} <= set(m["downstream"])
        assert len(m["downstream"]["tpr_gap"]) == 8
    # the fair model cannot tell the genders apart: no association, no gap, exactly
    assert f["embedding"]["combined_effect_size"] == 0.0 and f["downstream"]["tpr_gap_rms"] == 0.0
    assert b["downstream"]["tpr_gap_rms"] > 0.1 and b["downstream"]["gap_vs_female_share_r"] > 0.5
    assert abs(b["embedding"]["combined_effect_size"]) > 0.0
    comps = {c["metric"]: c for c in res["comparisons"]}
    assert set(comps) == {"embedding_effect_size", "tpr_gap_rms_unbiased"}
    down = comps["tpr_gap_rms_unbiased"]
    assert down["diff"] == pytest.approx(-b["downstream"]["tpr_gap_rms_unbiased"]) and down["n"] == 8
    assert down["ci"][1] < 0 and down["p"] <= 2 / 256 + 1e-12  # every occupation's gap shrank: the exact minimum
    # the gap closed because the probe changed its answers: the pair is resolved on some test biographies
    assert 0 < down["predictions_differ"] <= down["n_test"] == b["downstream"]["n_test"]
    assert "predictions_differ" not in comps["embedding_effect_size"]
    emb = comps["embedding_effect_size"]
    assert emb["n"] == 48 and emb["unit"] == "target word"
    assert emb["diff"] == pytest.approx(-np.mean([t["effect_size"] for t in b["embedding"]["tests"]]))
    # the bootstrap resamples counterfactual pairs whole: a gender-blind model's interval is exactly [0, 0]
    assert f["downstream"]["tpr_gap_rms_ci"] == [0.0, 0.0]
    report = (out / "report.md").read_text()
    assert "## Three lenses" in report and "| biased | not run |" in report and "career_vs_family" in report
    assert (out / "lenses.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "fair: downstream TPR-gap RMS 0.000" in printed
    assert f"{down['predictions_differ']:.3g} of {down['n_test']} test predictions differ" in printed
    assert "| test predictions that differ |" in report
    # same seed, same numbers
    again = tmp_path / "again"
    assert _run(["eval", "--model", f"biased={models['biased']}", "--model", f"fair={models['fair']}",
                 "--lens", "embedding,downstream", "--bootstrap", 200, "--out", again]) == 0
    assert json.loads((again / "results.json").read_text())["models"] == res["models"]


def test_a_model_against_itself_is_unresolved_by_the_downstream_lens(models, tmp_path):
    out = tmp_path / "same"
    assert _run(["eval", "--model", f"a={models['biased']}", "--model", f"b={models['biased']}",
                 "--lens", "downstream", "--bootstrap", 50, "--out", out]) == 0
    (down,) = json.loads((out / "results.json").read_text())["comparisons"]
    assert down["diff"] == 0.0 and down["predictions_differ"] == 0.0 and down["n_test"] > 0
    assert "cannot tell the two models apart" in (out / "report.md").read_text()


def test_all_lenses_with_generation(models, tmp_path, capsys):
    out = tmp_path / "all"
    code = _run(["eval", "--model", f"biased={models['biased']}", "--model", f"fair={models['fair']}",
                 "--prompts", "professions", "--max-prompts", 14, "--samples-per-prompt", 2, "--max-new-tokens", 4,
                 "--bootstrap", 50, "--lens", "all", "--lens-layer", 1, "--out", out])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["lenses"] == ["generation", "embedding", "downstream"] and res["settings"]["lens_layer"] == 1
    m = res["models"]["biased"]
    assert "disparity_rms" in m and "embedding" in m and "downstream" in m and "embedding_polarity" in m
    assert {c["metric"] for c in res["comparisons"]} >= {"disparity_rms", "embedding_effect_size", "tpr_gap_rms_unbiased"}
    report = (out / "report.md").read_text()
    assert "## Three lenses" in report and "## Summary" in report
    assert "test predictions differ" in capsys.readouterr().out  # the downstream comparison's resolution
    parts = res["settings"]["part_seconds"]  # what each part cost, per model and in all
    assert set(parts["by_model"]) == {"biased", "fair"}
    for seconds in parts["by_model"].values():
        assert set(seconds) == {"load", "generation", "probe", "embedding", "downstream"}  # no --text: no utility
    assert parts["total"]["generation"] == pytest.approx(sum(s["generation"] for s in parts["by_model"].values()))
    assert "## What each part cost and what it bought" in report
    assert "| generation: generation disparity (the paper's metric) |" in report
    assert "detects" in report.split("## What each part cost")[1]
    assert (out / "lenses.png").is_file()


@pytest.mark.parametrize("case", ["no_gender", "one_gender", "unplaceable", "no_prompts", "bad_lens", "bad_layer"])
def test_bad_input_is_one_line_before_compute(models, tmp_path, capsys, case):
    bios = tmp_path / "bios.jsonl"
    argv = ["eval", "--model", models["biased"], "--lens", "embedding,downstream", "--out", tmp_path / "out"]
    if case == "no_gender":
        bios.write_text('{"text": "a b", "occupation": "nurse", "gender": "f"}\n{"text": "c", "occupation": "chef"}\n')
        argv += ["--bios", bios]
        want = "line 2 has no 'gender' field"
    elif case == "one_gender":
        rows = [("nurse", "f", "train"), ("chef", "m", "train"), ("nurse", "f", "test"), ("nurse", "m", "test"),
                ("chef", "m", "test")]
        bios.write_text("".join(json.dumps({"text": "x", "occupation": o, "gender": g, "split": s}) + "\n"
                                for o, g, s in rows))
        argv += ["--bios", bios]
        want = "occupation 'chef' has only male biographies in the test split"
    elif case == "unplaceable":
        argv[2] = models["small"]
        want = "cannot place target word 'astronomy'"
    elif case == "no_prompts":
        argv[4] = "all"
        want = "--prompts is required by the generation lens"
    elif case == "bad_lens":
        argv[4] = "embeddings"
        want = "--lens 'embeddings': choose from"
    else:
        argv += ["--lens-layer", 9]
        want = "--lens-layer 9 is out of range for --model biased with 2 layers"
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill eval: error: ") and want in err, err
    assert "loading" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_several_runs_show_the_mean_of_their_runs_without_an_interval():
    from distill.eval.lenses.run import merge_runs

    def run(d, rms, gap):
        return {"embedding": {"tests": [{"name": "t", "effect_size": d, "p": 0.01}], "combined_effect_size": d,
                              "combined_p": 0.01, "combined_ci": [d - 1, d + 1]},
                "downstream": {"tpr_gap_rms": rms, "tpr_gap_rms_ci": [0, 1], "tpr_gap": {"nurse": gap},
                               "accuracy": 0.5, "train_female_share": {"nurse": 0.8}}}

    one = run(1.0, 0.2, 0.1)
    assert merge_runs([one]) is one
    m = merge_runs([run(1.0, 0.2, 0.1), run(0.5, 0.4, 0.3)])
    e, d = m["embedding"], m["downstream"]
    assert e["combined_effect_size"] == 0.75 and e["tests"][0] == {"name": "t", "effect_size": 0.75, "p": None}
    assert e["combined_p"] is None and e["combined_ci"] is None and len(e["runs"]) == 2
    assert e["combined_effect_size_sd"] == pytest.approx(0.3535533906)
    assert d["tpr_gap_rms"] == pytest.approx(0.3) and d["tpr_gap"] == {"nurse": pytest.approx(0.2)}
    assert d["tpr_gap_rms_ci"] is None and d["accuracy"] == 0.5
