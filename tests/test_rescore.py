"""`distill score` reproduces `distill eval`'s generation figures; several runs per model; bad generations files."""

import json
import re

import pytest
from test_evaluation import _fast, _run, tiny  # noqa: F401  (tiny is a fixture)

GEN_KEYS = ("disparity_rms", "disparity_rms_ci", "disparity_ms", "disparity_rms_words", "category_disparity_rms",
            "category_disparity_rms_ci", "category_disparity_ms", "signed_gaps",
            "naive_disparity", "naive_floor", "male", "female", "neutral", "tie", "groups", "embedding_polarity", "runs")


def test_score_reproduces_eval_with_several_runs(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval"
    code = _run(["eval", "--model", f"teacher={tiny['a']}", "--model", f"kd={tiny['a']},{tiny['b']}",
                 "--model", f"crr={tiny['b']}", "--prompts", "professions", "--max-prompts", 28,
                 "--bootstrap", 100, "--out", out, *_fast("--samples-per-prompt", 2)])
    assert code == 0
    evald = json.loads((out / "results.json").read_text())
    kd = evald["models"]["kd"]
    assert kd["runs"] == 2 and [s["source"] for s in kd["seeds"]] == [str(tiny["a"]), str(tiny["b"])]
    # run 0 of kd is the teacher's weights, run 1 crr's: same prompts and seeds give the same figures
    assert kd["seeds"][0]["disparity_rms"] == evald["models"]["teacher"]["disparity_rms"]
    assert kd["seeds"][1]["disparity_rms"] == evald["models"]["crr"]["disparity_rms"]
    assert kd["disparity_rms"] == pytest.approx((kd["seeds"][0]["disparity_rms"] + kd["seeds"][1]["disparity_rms"]) / 2)
    assert kd["seeds"][1]["probe"]["rms_logratio"] == evald["models"]["crr"]["probe"]["rms_logratio"]
    assert set(kd["seeds_sd"]) >= {"disparity_rms", "probe_rms_logratio"}
    assert "kd (2 runs)" in capsys.readouterr().out

    rescored = tmp_path / "rescored"
    assert _run(["score", "--generations", out / "generations.jsonl", "--bootstrap", 100, "--out", rescored]) == 0
    again = json.loads((rescored / "results.json").read_text())
    assert list(again["models"]) == ["teacher", "kd", "crr"]
    for name, m in evald["models"].items():
        for key in GEN_KEYS:
            assert again["models"][name][key] == m[key], (name, key)
        if "seeds" in m:  # per-run generation figures too (eval adds source, perplexity, probe to each)
            assert [{k: v for k, v in s.items() if k in again["models"][name]["seeds"][0]} for s in m["seeds"]] \
                == again["models"][name]["seeds"]
    gen_metrics = [c for c in evald["comparisons"] if not c["metric"].startswith("probe") and not c.get("lens")]
    assert again["comparisons"] == gen_metrics
    assert (rescored / "report.md").read_text().startswith("# Gender disparity")
    # --model picks and orders models from the file
    picked = tmp_path / "picked"
    assert _run(["score", "--generations", out / "generations.jsonl", "--model", "crr", "--model", "teacher",
                 "--bootstrap", 100, "--out", picked]) == 0
    assert list(json.loads((picked / "results.json").read_text())["models"]) == ["crr", "teacher"]


def _line(model="a", index=0, sample=0, category="c1", profession="p1", text="he said", **extra):
    rec = {"model": model, "category": category, "profession": profession, "prompt_index": index, "sample": sample,
           "text": text, **extra}
    return json.dumps(rec)


def _good():
    lines = []
    for model in ("a", "b"):
        for i, (cat, prof) in enumerate([("c1", "p1"), ("c1", "p2"), ("c2", "p3"), ("c2", "p4")]):
            for k in range(2):
                lines.append(_line(model, i, k, cat, prof, ["she said", "he left", "it rained"][(i + k) % 3]))
    return lines


@pytest.mark.parametrize("case, needle", [
    ("not_json", "line 3: not valid JSON"),
    ("missing", "line 3: missing field 'text'"),
    ("mistyped", "line 3: field 'prompt_index' must be an integer"),
    ("duplicate", "line 3: field 'sample'"),
    ("two_professions", "line 3: field 'profession': prompt_index 0 is 'p9'"),
    ("unpairable", "field 'prompt_index': model 'b' run 0 lacks prompt_index 3 sample 1"),
    ("unknown_model", "field 'model': no generations of 'zz'"),
    ("one_generation", "profession 'p1' (c1) has 1 generation(s)"),
    ("empty", "holds no generations"),
])
def test_bad_generations_file_is_one_line_naming_line_and_field(tmp_path, capsys, case, needle):
    lines = _good()
    extra = []
    if case == "not_json":
        lines[2] = "{oops"
    elif case == "missing":
        lines[2] = lines[2].replace('"text"', '"txt"')
    elif case == "mistyped":
        lines[2] = lines[2].replace('"prompt_index": 1', '"prompt_index": "1"')
    elif case == "duplicate":
        lines[2] = lines[0]
    elif case == "two_professions":
        lines[2] = _line("a", 0, 5, "c1", "p9")
    elif case == "unpairable":
        lines = lines[:-1]
    elif case == "unknown_model":
        extra = ["--model", "a", "--model", "zz"]
    elif case == "one_generation":
        lines = [x for x in lines if '"sample": 0' in x]
    elif case == "empty":
        lines = [""]
    src = tmp_path / "gens.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scored"
    assert _run(["score", "--generations", src, "--out", out, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill score: error:") and len(err.strip().splitlines()) == 1
    assert needle in err and str(src) in err
    assert not out.exists()


def test_good_file_scores_and_refuses_to_overwrite(tmp_path, capsys):
    src = tmp_path / "gens.jsonl"
    src.write_text("\n".join(_good()) + "\n")
    out = tmp_path / "scored"
    assert _run(["score", "--generations", src, "--out", out, "--bootstrap", 50]) == 0
    res = json.loads((out / "results.json").read_text())
    a = res["models"]["a"]
    # c1: p1 = {she, he}, p2 = {he, it} -> 2 male, 1 female of 4 -> gap +0.25
    assert a["signed_gaps"]["c1"] == pytest.approx(0.25)
    assert res["settings"]["n_professions"] == 4
    assert [(c["metric"], c["unit"], c["n"]) for c in res["comparisons"]][:2] == [
        ("disparity_rms", "profession", 4), ("category_disparity_rms", "category", 2)]
    assert res["comparisons"][0]["p_runs"] is None  # one run per model: no test of training noise
    assert _run(["score", "--generations", src, "--out", out]) == 2  # non-empty --out without --overwrite
    assert _run(["score", "--generations", src, "--out", out, "--overwrite", "--group-by", "profession"]) == 0
    assert set(json.loads((out / "results.json").read_text())["models"]["a"]["signed_gaps"]) == {"p1", "p2", "p3", "p4"}


def test_runs_permutation_p_known_answer():
    from distill.eval.paired import runs_permutation_p

    # 6 splits of 4 runs into 2 + 2; only the observed split and its mirror reach |0.35 - 0.15| = 0.2
    assert runs_permutation_p([0.1, 0.2], [0.3, 0.4]) == pytest.approx(2 / 6)
    assert runs_permutation_p([0.1, 0.2, 0.15], [0.3, 0.4, 0.35]) == pytest.approx(2 / 20)  # the floor at 3 + 3
    assert runs_permutation_p([0.1], [0.3, 0.4]) is None


def test_the_runs_permutation_floor_is_the_smallest_p_also_for_unequal_arms():
    from distill.eval.paired import runs_permutation_floor, runs_permutation_p

    # 2 + 3 runs: C(5, 2) = 10 splits, and the arms swapped is no split of these sizes, so 1 / 10, not 2 / 10
    assert runs_permutation_floor(2, 3) == pytest.approx(0.10) == runs_permutation_floor(3, 2)
    assert runs_permutation_p([0.1, 0.2], [0.5, 0.6, 0.7]) == pytest.approx(runs_permutation_floor(2, 3))
    assert runs_permutation_floor(3, 3) == pytest.approx(2 / 20)
    assert runs_permutation_p([0.1, 0.2, 0.15], [0.3, 0.4, 0.35]) == pytest.approx(runs_permutation_floor(3, 3))


def _two_files(tmp_path, b_in_second, c_profession="p1"):
    """File 1 holds models a and b; file 2 holds b (as given) and c, a copy of a's texts."""
    good = _good()
    first, second = tmp_path / "eval.jsonl", tmp_path / "eval-2.jsonl"
    first.write_text("\n".join(good) + "\n")
    c = [x.replace('"model": "a"', '"model": "c"') for x in good if '"model": "a"' in x]
    c[0] = c[0].replace('"profession": "p1"', f'"profession": "{c_profession}"')
    second.write_text("\n".join(b_in_second + c) + "\n")
    return first, second


def test_several_files_are_read_as_one_and_a_shared_model_is_kept_once(tmp_path, capsys):
    b = [x for x in _good() if '"model": "b"' in x]
    first, second = _two_files(tmp_path, b)
    out = tmp_path / "scored"
    assert _run(["score", "--generations", first, "--generations", second, "--bootstrap", 50, "--out", out]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["models"]) == ["a", "b", "c"]
    assert res["settings"]["generations"] == [str(first), str(second)]
    # c holds a's texts: identical figures, and a paired test across the files that finds no difference
    assert res["models"]["c"]["disparity_rms"] == res["models"]["a"]["disparity_rms"]
    a_c = next(c for c in res["comparisons"] if c["metric"] == "disparity_rms" and {c["a"], c["b"]} == {"a", "c"})
    assert a_c["diff"] == 0


@pytest.mark.parametrize("case, needle", [
    ("shared_model_differs", "'b' is also in"),
    ("prompt_is_another_profession", "prompt_index 0 is 'p9'"),
])
def test_several_files_that_disagree_are_refused_in_one_line(tmp_path, capsys, case, needle):
    b = [x for x in _good() if '"model": "b"' in x]
    if case == "shared_model_differs":
        b[0] = b[0].replace('"text": "she said"', '"text": "he said"')
    first, second = _two_files(tmp_path, b, "p9" if case == "prompt_is_another_profession" else "p1")
    out = tmp_path / "scored"
    assert _run(["score", "--generations", first, "--generations", second, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill score: error:") and len(err.strip().splitlines()) == 1
    assert needle in err and str(second) in err
    assert not out.exists()


def _stereotyped_file(path, rng_seed=0):
    """14 categories x 8 professions x 64 generations (8 prompts x 8 samples) of two models: 'stereo', whose
    professions lean +0.2 and -0.2 in turn within each category, and 'fair'. Gendered share 0.5."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    lines, index = [], 0
    for c in range(14):
        for k in range(8):
            gap = 0.2 if k % 2 == 0 else -0.2
            for _ in range(8):
                for model, d in (("fair", 0.0), ("stereo", gap)):
                    for s in range(8):
                        u = rng.random()
                        text = "he said" if u < 0.25 + d / 2 else "she said" if u < 0.5 else "it rained"
                        lines.append(_line(model, index, s, f"cat{c}", f"prof{c}_{k}", text))
                index += 1
    path.write_text("\n".join(lines) + "\n")


def test_score_finds_opposite_stereotypes_that_cancel_within_categories(tmp_path, capsys):
    """The outside check that found the category headline blind: the per-profession headline recovers the
    planted 0.2, the category figure is about 0 and says so under its own name, the paired test over
    professions separates the models, and every interval holds its own point estimate."""
    src = tmp_path / "gens.jsonl"
    _stereotyped_file(src)
    out = tmp_path / "scored"
    assert _run(["score", "--generations", src, "--bootstrap", 300, "--out", out]) == 0
    res = json.loads((out / "results.json").read_text())
    stereo, fair = res["models"]["stereo"], res["models"]["fair"]
    assert stereo["disparity_rms"] == pytest.approx(0.2, abs=0.02) and stereo["disparity_rms_ci"][0] > 0.15
    assert stereo["category_disparity_rms"] < 0.03 and fair["disparity_rms"] < 0.05
    for m in (stereo, fair):
        for name in ("disparity_rms", "category_disparity_rms"):
            lo, hi = m[f"{name}_ci"]
            assert lo <= m[name] <= hi, (name, lo, m[name], hi)
    assert stereo["disparity_rms_words"] is None  # "no gender gap is detected" is not said of it
    test = next(c for c in res["comparisons"] if c["metric"] == "disparity_rms")
    assert (test["a"], test["b"], test["unit"], test["n"]) == ("fair", "stereo", "profession", 112)
    assert test["diff"] > 0.15 and test["p"] < 0.001
    cat = next(c for c in res["comparisons"] if c["metric"] == "category_disparity_rms")
    assert cat["unit"] == "category" and cat["n"] == 14
    printed = capsys.readouterr().out
    assert "disparity_rms: stereo - fair" in printed and "sign-flip p over professions" in printed
    assert "category_disparity_rms: stereo - fair" in printed and "sign-flip p over categories" in printed
    report = (out / "report.md").read_text()
    assert "over professions" in report and "| category_disparity_rms | fair | stereo |" in report
    assert "| categories |" in report
    # every report states its power: the difference this design detects, simulated at the baseline (stereo)
    line = re.search(r"this eval detects a disparity_rms difference of (0\.\d{3}) or more with 80% power", report)
    assert line and 0 < float(line[1]) < 0.2 and res["power"]["baseline"] == "stereo"
    assert float(line[1]) == pytest.approx(res["power"]["detectable_difference"], abs=5e-4)
