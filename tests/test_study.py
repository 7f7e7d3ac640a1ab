"""The ablation study (`python -m distill.study`, `make study`): smoke run on the debug recipes, the reading of
the scorer's results.json (the several-run contract of issue 10), bad input.

    python -m pytest tests/test_study.py -q
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import load_config
from distill.errors import UserError
from distill.study import __main__ as study_main
from distill.study import arms as study_arms
from distill.study import figures as study_figures
from distill.study import runs as study_runs
from distill.study import table as study_table


def test_smoke_study_trains_scores_and_writes_table_results_and_plot(tmp_path):
    out = tmp_path / "study"
    code = study_main.main(["--smoke", "--in-process", "--seeds", "2", "--arms", "cda_cf_mean", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["arms"] == ["kd", "cda_cf_mean"] and res["seeds"] == [0, 1]  # the baseline is always added
    assert [(r["arm"], r["seed"]) for r in res["runs"]] == [("kd", 0), ("cda_cf_mean", 0), ("kd", 1),
                                                            ("cda_cf_mean", 1)]
    for r in res["runs"]:
        assert r["final_dir"] == str(out / "runs" / r["arm"] / f"s{r['seed']}" / "final")
        assert (out / "runs" / r["arm"] / f"s{r['seed']}" / "final" / "config.json").exists()
        assert r["figures"]["perplexity"] > 1.0 and 0.0 <= r["figures"]["teacher_agreement"] <= 1.0
    # the other two lenses, per run: the scorer keeps them per lens (model.embedding.runs[i]), not per seed
    scored = json.loads((out / "eval" / "results.json").read_text())["models"]["kd"]
    kd_runs = [r["figures"] for r in res["runs"] if r["arm"] == "kd"]
    assert [f["embedding_effect_size"] for f in kd_runs] == \
        [x["combined_effect_size"] for x in scored["embedding"]["runs"]]
    assert [f["downstream_tpr_gap_rms"] for f in kd_runs] == [x["tpr_gap_rms"] for x in scored["downstream"]["runs"]]
    # each run keeps its own probe ratios, and their mean is the model's (python -m distill.bench.probe_runs)
    per_run = [s["probe"]["logratio"] for s in scored["seeds"]]
    assert len(per_run) == 2 and all(set(r) == set(scored["probe"]["logratio"]) for r in per_run)
    for key, mean in scored["probe"]["logratio"].items():
        assert (per_run[0][key] + per_run[1][key]) / 2 == pytest.approx(mean, abs=1e-6)
    assert res["recipes"]["cda_cf_mean"]["overrides"]["crr.teacher"] == "cf_mean"
    assert res["comparisons"]["cda_cf_mean"]  # paired against kd by the scorer
    assert all(c["b"].startswith("cda_cf_mean") for c in res["comparisons"]["cda_cf_mean"])
    table = (out / "table.md").read_text().splitlines()
    rows = {line.split("|")[1].strip(): line for line in table if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"arm", "kd", "cda_cf_mean"}
    assert table[0].startswith("**Primary comparison** (declared in results.json at ")  # crr is not in this study:
    assert res["primary"]["b"] == "cda_cf_mean" and "not in this study" in res["primary"]["why"]  # its first arm
    assert "0.33 is its floor with 2 runs per arm" in table[2]  # (smoke: kd is the probe's reference, no slope)
    ppl = [r["figures"]["perplexity"] for r in res["runs"] if r["arm"] == "kd"]
    mean, sd = sum(ppl) / 2, abs(ppl[0] - ppl[1]) / 2**0.5
    assert f"{mean:.3f} ± {sd:.3f}" in rows["kd"] and "| 2 |" in rows["kd"]
    assert (out / "disparity_vs_perplexity.png").read_bytes()[:4] == b"\x89PNG"
    # --reuse-eval rewrites the table from the scorer's results without training or scoring again.
    (out / "table.md").unlink()
    assert study_main.main(["--smoke", "--reuse-eval", "--seeds", "2", "--arms", "cda_cf_mean", "--out", str(out)]) == 0
    assert (out / "table.md").read_text().splitlines()[4:] == table[4:]
    assert study_main.main(["--smoke", "--reuse-eval", "--seeds", "1", "--arms", "cda_cf_mean", "--out", str(out)]) == 2
    # Arms added later are scored in a second eval, with their baselines: kd again (for cf_mean) and small_kd.
    more = ["--smoke", "--in-process", "--seeds", "2", "--arms", "cda_cf_mean,cf_mean,small_cda_pair_mean"]
    assert study_main.main([*more, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    second = json.loads((out / "eval-2" / "results.json").read_text())
    assert sorted(second["models"]) == ["cf_mean", "kd", "small_cda_pair_mean", "small_kd"]  # not cda_cf_mean
    assert res["evals"]["cda_cf_mean"] == str(out / "eval") and res["evals"]["cf_mean"] == str(out / "eval-2")
    assert res["baseline_agreement"]["kd"]["max_abs_diff"] == 0.0  # the scorer reproduced kd exactly
    assert {c["a"] for c in res["comparisons"]["small_cda_pair_mean"]} == {"small_kd"}
    assert "| small_cda_pair_mean | 2 |" in (out / "table.md").read_text()
    assert "vs small_kd: disparity_rms" in (out / "table.md").read_text()
    # A run trained again after its eval is not taken from that eval.
    late = (out / "runs" / "cf_mean" / "s0" / "final" / "config.json")
    os.utime(late, (late.stat().st_mtime + 3600,) * 2)
    assert study_main.main([*more, "--reuse-eval", "--out", str(out)]) == 2
    # A second call reuses the finished runs (resume) and rewrites the outputs.
    assert study_main.main(["--smoke", "--in-process", "--seeds", "1", "--arms", "kd", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["seeds"] == [0]


def _results_v2():
    """A results.json shaped by issue 10's contract: arms as several-run models with per-run `seeds`."""
    def run(d, ppl):
        return {"disparity_rms": d, "disparity_rms_ci": [0, d * 2], "perplexity": ppl, "teacher_agreement": 0.6,
                "probe": {"rms_logratio": d * 10, "mean_logratio": 0.1, "slope_on_teacher": 0.5, "r_on_teacher": 0.9}}
    return {"models": {"teacher": run(0.2, 40.0),
                       "kd": {**run(0.1, 80.0), "seeds": [run(0.10, 80.0), run(0.12, 82.0)]},
                       "cda_pair_mean": {**run(0.05, 81.0), "seeds": [run(0.04, 81.0), run(0.06, 81.0)]}},
            "comparisons": [{"a": "cda_pair_mean", "b": "kd", "metric": "disparity_rms", "diff": 0.06,
                             "ci": [0.01, 0.1], "p": 0.02, "p_runs": 0.1},
                            {"a": "teacher", "b": "kd", "metric": "disparity_rms", "diff": -0.1, "ci": [-1, 0],
                             "p": 0.5}]}


def test_reads_the_several_run_contract_and_orients_comparisons_against_kd(tmp_path):
    res = _results_v2()
    runs = [{"arm": a, "seed": s, "final_dir": f"runs/{a}/s{s}/final"} for s in (0, 1) for a in ("kd", "cda_pair_mean")]
    for r in runs:
        r["figures"] = study_figures.run_figures(res, r["arm"], r["seed"])
    assert [study_figures.figure(r["figures"], study_figures.FIGURES[0]) for r in runs] == [0.10, 0.04, 0.12, 0.06]
    assert study_figures.figure(runs[0]["figures"], study_figures.FIGURES[3]) == 0.5  # probe slope on teacher
    comps = study_figures.baseline_comparisons(res, "cda_pair_mean")
    assert comps == [{"metric": "disparity_rms", "a": "kd", "b": "cda_pair_mean", "diff": -0.06,
                      "ci": [-0.1, -0.01], "p": 0.02, "p_runs": 0.1}]
    study_table.write_table(tmp_path / "t.md", ["kd", "cda_pair_mean"], runs, {"cda_pair_mean": comps}, "cmd")
    text = (tmp_path / "t.md").read_text()
    assert "| cda_pair_mean | 2 | 0.050 ± 0.014 |" in text
    assert "disparity_rms: -0.060 [-0.100, -0.010], p 0.020, runs p 0.100" in text
    study_table.write_plot(tmp_path / "p.png", ["kd", "cda_pair_mean"], runs)
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_a_single_run_arm_reads_its_own_figures():
    res = {"models": {"kd": {"disparity_rms": 0.3, "runs": 1}}}
    assert study_figures.run_figures(res, "kd", 0) == {"disparity_rms": 0.3, "runs": 1}


def test_arms_cover_the_ablation_and_the_compressed_student_removes_a_third_of_the_blocks():
    assert {"kd", "cda", "pair_mean", "cf_mean", "cf_max", "cf_expmean", "cda_pair_mean", "cda_cf_mean",
            "cda_cf_max", "cda_cf_expmean", "small_kd"} <= set(study_arms.ARMS)
    small = load_config(study_arms.SMALL)
    demo = load_config(study_arms.BASE)
    assert len(small.student.from_teacher_layers) <= 20 and small.train.max_steps > demo.train.max_steps
    for arm in study_arms.ARMS:  # every arm's recipe loads with its overrides
        recipe, over = study_arms.arm_plan(arm, smoke=False)
        cfg = load_config(recipe, [f"{k}={v}" for k, v in over.items()])
        assert cfg.crr.teacher == over["crr.teacher"] and cfg.crr.augment == over["crr.augment"]
        recipe, over = study_arms.arm_plan(arm, smoke=True)
        load_config(recipe, [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("argv,message", [
    (["--arms", "kd,cf_min"], "unknown arm(s) cf_min"),
    (["--seeds", "0"], "at least 1"),
    (["--teacher", "nowhere.gguf"], "not found"),
    (["--prompts-per-profession", "9"], "must be 1 to 8"),
    (["--prompts-per-profession", "1", "--samples-per-prompt", "1"], "at least 2"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "study"
    assert study_main.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill study: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_parse_arms_keeps_order_and_adds_the_baseline():
    assert study_arms.parse_arms("cda, pair_mean") == ["kd", "cda", "pair_mean"]
    assert study_arms.parse_arms("") == list(study_arms.ARMS)
    assert study_arms.parse_arms("small_cda_pair_mean") == ["small_kd", "small_cda_pair_mean"]
    with pytest.raises(UserError):
        study_arms.parse_arms("kd,nope")


def test_a_new_eval_never_lands_on_an_existing_one(tmp_path):
    from distill.study import evals as study_evals

    assert study_evals.next_eval_dir(tmp_path) == tmp_path / "eval"
    for name in ("eval", "eval-3", "evaluation"):  # eval-2 was deleted; "evaluation" is not ours
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text("{}")
    assert study_evals.eval_dirs(tmp_path) == [tmp_path / "eval", tmp_path / "eval-3"]
    assert study_evals.next_eval_dir(tmp_path) == tmp_path / "eval-4"


def test_lanes_train_in_parallel_processes_and_the_study_reads_them(tmp_path):
    out = tmp_path / "study"
    assert study_main.main(["--smoke", "--lanes", "2", "--seeds", "1", "--arms", "cda", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in res["runs"]] == [("kd", 0), ("cda", 0)]
    for name in ("kd_s0", "cda_s0"):  # each run's output went to its own log, not interleaved on stdout
        assert "student written to" in (out / "logs" / f"{name}.log").read_text()
    assert (out / "runs" / "cda" / "s0" / "final" / "config.json").exists()


def test_each_lane_gets_its_own_cores_and_one_thread_per_core_and_failures_are_named(tmp_path):
    from distill.hardware import usable_cores
    from distill.study import lanes as study_lanes

    probe = (sys.executable, "-c", "import os, sys; print(sorted(os.sched_getaffinity(0)), "
             "os.environ['OMP_NUM_THREADS']); sys.exit(int(sys.argv[1]))")
    lanes = min(2, len(usable_cores()))
    said = []
    with pytest.raises(UserError, match=r"1 training run\(s\) failed: see .*bad\.log"):
        study_lanes.run_in_lanes([("ok", ["0"]), ("bad", ["3"]), ("ok2", ["0"])], lanes, tmp_path, said.append,
                                 program=probe)
    seen = [(tmp_path / f"{n}.log").read_text().split() for n in ("ok", "bad", "ok2")]
    per = len(usable_cores()) // lanes
    assert all(words[-1] == str(per) for words in seen)  # OMP_NUM_THREADS = the lane's share of the cores
    if lanes == 2:  # the first two jobs ran at the same time on disjoint cores
        assert seen[0][:-1] != seen[1][:-1]
    assert sum("FAILED (exit 3" in line for line in said) == 1 and sum(" done in " in line for line in said) == 2


@pytest.mark.parametrize("lanes, in_process, message", [
    (0, False, "at least 1"), (10_000, False, "more than the"), (2, True, "drop --in-process"),
])
def test_bad_lanes_are_refused_in_one_line(lanes, in_process, message):
    from distill.study import lanes as study_lanes

    with pytest.raises(UserError, match=message):
        study_lanes.check_lanes(lanes, in_process)


def test_the_probe_slope_is_tested_over_training_runs_and_the_floor_follows_the_seeds():
    from distill.eval.paired import runs_permutation_floor

    def run(arm, seed, slope):
        return {"arm": arm, "seed": seed, "figures": {"probe": {"slope_on_teacher": slope}}}

    runs = [run("kd", s, v) for s, v in enumerate([0.27, 0.26, 0.30])] + \
           [run("pair_mean", s, v) for s, v in enumerate([0.12, 0.13, 0.14])]
    t = study_figures.slope_runs_test(runs, "pair_mean")
    assert t["a"] == "kd" and t["diff"] == pytest.approx(0.13 - 0.2766667, abs=1e-6)
    assert t["p_runs"] == pytest.approx(2 / 20)  # perfectly separated: the floor at 3 + 3
    assert study_figures.slope_runs_test(runs, "kd") is None
    assert runs_permutation_floor(3, 3) == pytest.approx(0.1) and runs_permutation_floor(5, 5) == pytest.approx(2 / 252)


def test_the_primary_comparison_is_declared_before_scoring_and_the_rest_is_holm_adjusted(tmp_path, monkeypatch):
    """The study writes crr - kd on disparity_rms over runs into results.json before training and scoring (seen
    from inside both), fills it with the estimate and the runs p after, and Holm-adjusts every other p."""
    from distill.eval.paired import holm, runs_permutation_p

    out = tmp_path / "study"
    scorer = _results_v2()
    scorer["comparisons"].append({"a": "kd", "b": "cda_pair_mean", "metric": "probe_rms_logratio", "diff": 0.05,
                                  "ci": [0.01, 0.09], "p": 0.01})
    for r, slope in zip(scorer["models"]["cda_pair_mean"]["seeds"], (0.12, 0.13), strict=True):
        r["probe"]["slope_on_teacher"] = slope
    seen = {}

    def declared():
        return json.loads((out / "results.json").read_text())["primary"]

    def fake_train(arms, seeds, out_, smoke, run, lanes=1):
        seen["train"] = declared()
        return study_runs.plan_runs(arms, seeds, out_)

    def fake_score(runs, arms, out_, smoke, run, teacher, reuse, eval_argv=None):
        seen["score"], seen["eval_argv"] = declared(), eval_argv
        return {a: scorer for a in arms}, {a: out_ / "eval" for a in arms}, {}

    monkeypatch.setattr(study_main, "train_runs", fake_train)
    monkeypatch.setattr(study_main, "score", fake_score)
    argv = ["--smoke", "--seeds", "2", "--arms", "cda_pair_mean", "--out", str(out)]
    assert study_main.main(argv) == 0
    for moment in ("train", "score"):  # declared, not yet filled, before anything trained or was scored
        d = seen[moment]
        assert (d["a"], d["b"], d["metric"]) == ("kd", "cda_pair_mean", "disparity_rms") and "permutation" in d["test"]
        assert d["declared_before_scoring"] is True and d["estimate"] is None and d["p"] is None
    res = json.loads((out / "results.json").read_text())
    primary = res["primary"]
    assert primary["declared_at"] == seen["score"]["declared_at"]
    assert primary["runs"] == {"kd": [0.10, 0.12], "cda_pair_mean": [0.04, 0.06]}
    assert primary["estimate"] == pytest.approx(-0.06)
    assert primary["p"] == runs_permutation_p([0.10, 0.12], [0.04, 0.06]) == pytest.approx(1 / 3)
    assert primary["floor"] == pytest.approx(1 / 3) and primary["established"] is False
    # secondary: the disparity_rms p over professions, the probe's p and the slope's runs p; not the primary
    tests = res["comparisons"]["cda_pair_mean"]
    disparity = next(c for c in tests if c["metric"] == "disparity_rms")
    probe = next(c for c in tests if c["metric"] == "probe_rms_logratio")
    slope = res["runs_tests"]["cda_pair_mean"]
    assert disparity["primary"] is True and "p_runs_holm" not in disparity
    assert res["secondary"]["tests"] == 3 and res["secondary"]["adjustment"] == "holm"
    assert [disparity["p_holm"], probe["p_holm"], slope["p_runs_holm"]] == holm([0.02, 0.01, slope["p_runs"]])
    assert probe["p_holm"] == pytest.approx(0.03)
    table = (out / "table.md").read_text()
    assert table.startswith("**Primary comparison** (declared in results.json at ")
    assert "crr (`cda_pair_mean`) - `kd`, disparity_rms, mean over training runs: -0.060, exact permutation p " \
        "over 2 + 2 runs = 0.333" in table and "not established" in table
    assert "runs p 0.100 (primary)" in table and "p 0.010 (Holm 0.030)" in table
    assert "Holm-adjusted value over all 3 secondary p values" in table
    assert seen["eval_argv"] == study_arms.EVAL_ARGS  # the demo's scoring design unless told otherwise
    # a rerun keeps the declaration's time (here with the eval size `distill power` chose, passed to the scorer);
    # a study whose eval exists before any declaration says so
    assert study_main.main([*argv, "--prompts-per-profession", "8", "--samples-per-prompt", "4"]) == 0
    assert seen["eval_argv"] == study_arms.eval_args(8, 4)
    assert json.loads((out / "results.json").read_text())["primary"]["declared_at"] == primary["declared_at"]
    from distill import rundir

    late = tmp_path / "late"  # a study begun before declarations existed: its eval is there, no primary
    (late / "eval").mkdir(parents=True)
    rundir.write_marker(late, "study")
    (late / "eval" / "results.json").write_text("{}")
    assert study_main.main([*argv[:-1], str(late)]) == 0
    assert json.loads((late / "results.json").read_text())["primary"]["declared_before_scoring"] is False
    assert "after an earlier eval of this study had scored" in (late / "table.md").read_text()


def test_the_eval_size_comes_from_the_options_and_an_eval_of_another_size_is_not_reused():
    from distill.study import evals as study_evals

    assert study_arms.eval_args() == study_arms.EVAL_ARGS and "136" in study_arms.EVAL_ARGS  # the demo's design by default
    big = study_arms.eval_args(8, 4)
    assert study_evals.expected_settings(big) == {**study_evals.expected_settings(study_arms.EVAL_ARGS),
                                                  "max_prompts": "1088", "samples_per_prompt": "4"}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_demo_scores_with_the_budget_the_study_defines_and_demo_smoke_still_overrides_it():
    """The demo's `distill eval` arguments exist once (arms.DEMO_EVAL): the Makefile's DEMO_EVAL prints them with
    `python -m distill.study --print-demo-eval-args`, and the study scores with them by default."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}

    def eval_line(target):
        out = subprocess.run(["make", "-n", "--no-print-directory", target, f"PY={sys.executable}"], cwd=root,
                             env=env, capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if " distill eval " in line)

    demo = shlex.join(study_arms.DEMO_EVAL)
    assert "--max-prompts 136 --samples-per-prompt 3" in demo
    assert eval_line("demo").endswith(" " + demo)
    assert demo not in eval_line("demo-smoke") and " --max-prompts 14 " in eval_line("demo-smoke")
    assert study_arms.EVAL_ARGS == [*study_arms.DEMO_EVAL, "--text", "data/tiny_heldout.txt"]


def test_a_study_of_kd_alone_declares_no_primary():
    assert study_primary_declare(["kd"]) is None
    d = study_primary_declare(["kd", "cda", "cda_pair_mean"])
    assert (d["a"], d["b"]) == ("kd", "cda_pair_mean")
    assert study_primary_declare(["small_kd", "small_cda_pair_mean"])["a"] == "small_kd"


def study_primary_declare(arms):
    from distill.study import primary as study_primary

    return study_primary.declare(arms, study_arms.baseline_of, previous=None, scored_before=False)


def test_a_finished_run_is_reused_only_while_its_recipe_is_unchanged(tmp_path):
    import yaml

    from distill.config import load_config
    from distill.study.runs import changed_keys
    from distill.train.run_lifecycle import config_dict

    over = [f"output_dir={tmp_path}", "seed=1", "crr.augment=both"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config_dict(load_config("recipes/debug.yaml", over))))
    assert changed_keys(tmp_path, "recipes/debug.yaml", over) == []
    assert changed_keys(tmp_path, "recipes/debug.yaml", [*over, "description=reworded"]) == []
    assert changed_keys(tmp_path, "recipes/debug.yaml", [*over, "train.lr=3e-5", "seed=2"]) == ["seed", "train.lr"]
    (tmp_path / "recipe.yaml").write_text(": not yaml [")
    assert changed_keys(tmp_path, "recipes/debug.yaml", over) == ["recipe.yaml (missing or unreadable)"]
