"""Power by simulation (distill.eval.power) and `distill power`: checked against simulation, small sims counts.

    python -m pytest tests/test_power.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.cli import main
from distill.eval import power
from distill.eval.paired import sign_flip_p
from distill.eval.stats import sq_gap


def _run(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


MODEL = power.simulation_model(professions=40, gap=0.3, share=0.6)


def test_power_rises_with_generations_per_profession():
    got = [power.power_of(MODEL, n, 1, 0.1, sims=200)["power"] for n in (4, 16, 64)]
    assert got[0] + 0.1 < got[1] and got[1] + 0.1 < got[2] and got[2] > 0.9


def test_a_zero_difference_has_power_near_alpha_in_both_tests():
    got = power.power_of(MODEL, 8, 4, 0.0, sims=1000)
    assert got["power"] == pytest.approx(power.ALPHA, abs=0.025)
    assert got["power_runs"] <= power.ALPHA + 0.025  # exact permutation test: at most alpha under the null


def test_the_detectable_difference_shrinks_with_more_runs_and_needs_four_for_the_runs_test():
    one = power.detectable_difference(MODEL, 6, 1, sims=200)
    four = power.detectable_difference(MODEL, 6, 4, sims=200)
    assert one is not None and four is not None and four < 0.8 * one
    # with 3 runs per arm the permutation test cannot go below p = 0.10: no difference is detectable by it
    assert power.detectable_difference(MODEL, 6, 3, sims=200, test="runs") is None
    by_runs = power.detectable_difference(MODEL, 6, 4, sims=200, test="runs")
    assert by_runs is not None and 0 < by_runs < power.max_difference(MODEL)
    assert power.power_of(MODEL, 6, 4, by_runs, sims=200)["power_runs"] >= power.TARGET


def test_a_planted_difference_is_detected_at_the_stated_rate_by_the_scorers_own_test():
    """Draw labelled generations the long way (one categorical draw per generation) and test them with the
    sign-flip test the scorer runs (distill.eval.paired.sign_flip_p): the share of rejections matches
    power_of's vectorised figure."""
    n, delta, sims = 16, 0.1, 200
    stated = power.power_of(MODEL, n, 1, delta, sims=400, seed=3)["power"]
    assert 0.3 < stated < 0.9  # a design where a wrong power would show
    rng = np.random.default_rng(11)
    shares = MODEL.shares
    arms = power.arm_gaps(MODEL, delta)
    assert np.sqrt(np.mean(arms[0] ** 2)) - np.sqrt(np.mean(arms[1] ** 2)) == pytest.approx(delta)
    hits = 0
    for _ in range(sims):
        u = []
        for gaps in arms:
            probs = np.stack([(shares + gaps) / 2, (shares - gaps) / 2, 1 - shares], axis=1)  # male, female, neutral
            v = np.array([rng.choice([1.0, -1.0, 0.0], size=n, p=p) for p in probs])  # (C, n)
            u.append(sq_gap(np.full(len(v), float(n)), v.sum(1), (v * v).sum(1)))
        hits += sign_flip_p(u[1] - u[0], n_flips=1000, seed=0) <= power.ALPHA
    assert hits / sims == pytest.approx(stated, abs=0.12)


def test_the_model_record_round_trips_and_is_what_an_eval_writes(tmp_path):
    """`distill score` (the same code as `distill eval`) keeps the baseline's per-profession model in results.json."""
    rng = np.random.default_rng(0)
    lines = []
    for c in range(6):
        gap = 0.4 if c % 2 == 0 else -0.4
        for s in range(6):
            for model, d in (("teacher", 0.0), ("kd", gap)):
                u = rng.random()
                text = "he said" if u < 0.3 + d / 2 else "she said" if u < 0.6 else "it rained"
                lines.append(json.dumps({"model": model, "category": f"cat{c // 2}", "profession": f"prof{c}",
                                         "prompt_index": c, "sample": s, "text": text}))
    src = tmp_path / "gens.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scored"
    assert _run(["score", "--generations", src, "--out", out, "--bootstrap", 50]) == 0
    res = json.loads((out / "results.json").read_text())
    record = res["power"]["model"]
    assert record["professions"] == [f"cat{c // 2}/prof{c}" for c in range(6)]
    model = power.model_from_record(record)
    assert model.rms == pytest.approx(res["power"]["baseline_rms"], abs=1e-5) and model.rms > 0.2
    assert np.all(np.abs(model.gaps) <= model.shares)
    # distill score records no sampling rate: `distill power --eval` names it and takes --tokens-per-second
    assert _run(["power", "--eval", out, "--delta", 0.2]) == 2
    res["settings"]["generation"] = {"token_slots": 3000, "seconds": 10.0, "tokens_per_second": 300.0}
    (out / "results.json").write_text(json.dumps(res))
    js = tmp_path / "p.json"
    assert _run(["power", "--eval", out, "--delta", 0.2, "--runs", "1", "--sims", 100, "--json", js]) == 0
    doc = json.loads(js.read_text())
    assert doc["tokens_per_second"] == 300.0 and doc["professions"] == 6 and doc["source"] == str(out)
    # the eval's own design (6 prompts for 6 professions: 1 per profession, 6 samples, 1 run) is a row
    assert any((d["prompts"], d["samples"], d["runs"]) == (1, 6, 1) for d in doc["designs"])


def test_simulated_design_table_costs_and_cheapest(tmp_path, capsys):
    js = tmp_path / "power.json"
    argv = ["power", "--professions", 40, "--gap", 0.3, "--share", 0.6, "--tokens-per-second", 100,
            "--max-new-tokens", 30, "--prompts-per-profession", "2,4", "--samples-per-prompt", "2,4", "--runs", "1,2",
            "--delta", 0.1, "--sims", 200, "--json", js]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads(js.read_text())
    assert len(doc["designs"]) == 8
    for d in doc["designs"]:  # professions x prompts x samples x tokens x models / rate, models = 2 runs + teacher
        assert d["models"] == 2 * d["runs"] + 1
        assert d["minutes"] == pytest.approx(40 * d["prompts"] * d["samples"] * 30 * d["models"] / 100 / 60)
    reaching = [d for d in doc["designs"] if d["power"] >= 0.8]
    assert reaching and doc["cheapest"] == min(reaching, key=lambda d: (d["minutes"], -d["prompts"]))
    assert doc["within_budget"] is None  # the cheapest fits the default 180 minutes
    assert "cheapest design with 80% power (sign-flip test over professions): " in printed
    assert "power (professions)" in printed.splitlines()[2] and len(printed.splitlines()) >= 11
    # a budget below the cheapest: the most powerful design that fits, and what it detects with 80% power
    small = min(doc["cheapest"]["minutes"] * 0.99, max(d["minutes"] for d in doc["designs"]))
    assert _run([*argv[:-2], "--budget-minutes", small, "--json", js, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(js.read_text())
    fit = doc["within_budget"]
    assert fit["minutes"] <= small and fit["power"] < 0.8 and fit["detectable_difference"] > 0.1
    assert f"it detects a disparity_rms difference of {fit['detectable_difference']:.3f} or more" in printed
    assert "(over the budget)" in printed


def test_training_minutes_are_counted_per_run_and_the_runs_test_needs_four_runs(tmp_path, capsys):
    js = tmp_path / "p.json"
    assert _run(["power", "--gap", 0.3, "--share", 0.6, "--professions", 40, "--tokens-per-second", 100,
                 "--prompts-per-profession", 4, "--samples-per-prompt", 4, "--runs", "3,4", "--delta", 0.15,
                 "--train-minutes", 5, "--test", "runs", "--sims", 100, "--json", js]) == 0
    designs = {d["runs"]: d for d in json.loads(js.read_text())["designs"]}
    assert designs[4]["minutes"] - designs[3]["minutes"] == pytest.approx(2 * 5 + 40 * 16 * 30 * 2 / 100 / 60)
    assert designs[3]["power_runs"] == 0.0 and designs[4]["power_runs"] > 0.5
    assert "(permutation test over training runs): 4 prompts x 4 samples per profession, 4 runs" in \
        capsys.readouterr().out


def _results(folder, generation=True, model=True):
    folder.mkdir()
    rec = power.model_record(MODEL, [f"p{i}" for i in range(40)])
    settings = {"n_prompts": 80, "samples_per_prompt": 3, "max_new_tokens": 24}
    if generation:
        settings["generation"] = {"token_slots": 100, "seconds": 1.0, "tokens_per_second": 100.0}
    (folder / "results.json").write_text(json.dumps({"settings": settings,
                                                     "power": {"runs": 1, **({"model": rec} if model else {})}}))
    return folder


@pytest.mark.parametrize("case, needle", [
    ("zero_delta", "--delta must be a disparity_rms difference above 0"),
    ("negative_delta", "--delta must be"),
    ("huge_delta", "is not below 0.600"),
    ("no_model", "pass --eval DIR"),
    ("both", "not both"),
    ("no_results", "no results.json there"),
    ("no_rate", "has no sampling rate"),
    ("no_model_record", "no per-profession gaps"),
    ("gap_above_share", "--gap"),
    ("no_rate_sim", "--tokens-per-second R"),
    ("bad_grid", "--runs 'a,2' must be comma-separated"),
    ("zero_grid", "--samples-per-prompt '0' must list whole numbers of at least 1"),
    ("one_generation", "no design of the grid has 2 generations"),
    ("json_exists", "pass --overwrite"),
    ("budget", "--budget-minutes must be above 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, needle):
    sim = ["--gap", 0.3, "--share", 0.6, "--professions", 40, "--tokens-per-second", 100]
    js = tmp_path / "out.json"
    argv = {
        "zero_delta": [*sim, "--delta", 0], "negative_delta": [*sim, "--delta", -0.1],
        "huge_delta": [*sim, "--delta", 0.7], "no_model": ["--tokens-per-second", 100],
        "both": ["--eval", tmp_path, "--gap", 0.1], "no_results": ["--eval", tmp_path],
        "no_rate": ["--eval", _results(tmp_path / "no_rate", generation=False)],
        "no_model_record": ["--eval", _results(tmp_path / "no_model", model=False)],
        "gap_above_share": ["--gap", 0.7, "--share", 0.6, "--tokens-per-second", 100],
        "no_rate_sim": ["--gap", 0.1, "--share", 0.6], "bad_grid": [*sim, "--runs", "a,2"],
        "zero_grid": [*sim, "--samples-per-prompt", "0"],
        "one_generation": [*sim, "--prompts-per-profession", 1, "--samples-per-prompt", 1],
        "json_exists": [*sim], "budget": [*sim, "--budget-minutes", 0],
    }[case]
    if case == "json_exists":
        js.write_text("keep")
    assert _run(["power", *argv, "--json", js]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("distill power: error:") and len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert captured.out == ""  # refused before any simulation
    assert (js.read_text() == "keep") if case == "json_exists" else not js.exists()
