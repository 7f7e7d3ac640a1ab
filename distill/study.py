"""The ablation study: which part of counterfactual role reversal buys what, over several seeds.

    python -m distill.study --out out/study                          # every arm, 3 seeds
    python -m distill.study --arms kd,cda_pair_mean --seeds 2 --out out/study_two
    python -m distill.study --smoke --out /tmp/study_smoke            # debug recipes, 2 steps: the code path
    make study STUDY_SEEDS=3 STUDY_ARMS=kd,cda,pair_mean             # the same through make
    python -m distill.study --lanes 2 --out out/study                # two runs at a time (distill.study_lanes)
    python -m distill.study --arms cda_pair_mean --seeds 5 --prompts-per-profession 8 --samples-per-prompt 5 \
        --out out/demo_seeds                                         # a larger eval, sized by `distill power`

Each arm is a base recipe plus overrides (ARMS). For every (arm, seed) the study runs `distill train` into
OUT/runs/ARM/sSEED (a finished run, one with final/, is reused, so an interrupted study resumes), then one
`distill eval` over the runs no earlier eval scored, with the teacher and their baselines (plain KD of the same
student size), so every paired test compares models scored on the same prompts and sampling seeds. From
scratch that is one eval over everything; arms added later cost only themselves (distill.study_evals). It writes:

    OUT/eval/, OUT/eval-2/    the scorer's own outputs (results.json, report.md, generations)
    OUT/results.json          {"arms": [...], "seeds": [...], "runs": [{"arm", "seed", "final_dir", "figures"}],
                               "comparisons": {arm: [the scorer's tests of arm - its baseline]},
                               "evals": {arm: eval folder}, "baseline_agreement": {...},
                               "runs_tests": {arm: the probe slope's test over training runs},
                               "primary": {the one primary comparison}, "secondary": {"tests": N, ...}}
                              (before the first run trains it holds the primary's declaration only)
    OUT/table.md              per arm: mean +- sd over seeds of each figure, paired test against its baseline
    OUT/disparity_vs_perplexity.png   one panel per student size: a dot per run, each arm's mean +- sd

The scorer's contract: `--model NAME=DIR1,DIR2,...` gives one model several training runs, whose
per-run figures are under `seeds`; per-model figures `disparity_rms`, `disparity_rms_ci`, `probe{...}`;
comparisons `{a, b, metric, diff, ci, p, p_runs}`.

One comparison is primary, declared in OUT/results.json before anything is trained or scored: crr
(`cda_pair_mean`) against `kd` on disparity_rms, over training runs (distill.study_primary). Every other p the
study reports is secondary and Holm-adjusted as one family; the table says which is which.

Seeds: `seed=N` moves the training order and the teacher-written transfer set (its cache key holds the seed),
so arms with the same seed see the same text and differ only in their method.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from distill import rundir, study_evals, study_lanes, study_primary
from distill.atomic import write_text_atomic
from distill.errors import UserError, guarded_stdout, report
from distill.fetch_teacher import DEFAULT_TEACHER_GGUF as TEACHER
from distill.study_table import write_plot, write_table  # noqa: F401  (the study's outputs; tests call them here)

BASE = "recipes/demo_kd.yaml"  # the demo budget; every arm differs from it only in the listed keys
SMALL = "recipes/study/small_kd.yaml"  # 20 of 30 blocks: the real-compression arms
BASELINE = "kd"
SMALL_BASELINE = "small_kd"  # the compressed arms are paired with plain KD of their own size


def _crr(augment: str = "none", teacher: str = "none") -> dict[str, str]:
    return {"crr.augment": augment, "crr.teacher": teacher}


# arm -> (recipe, overrides). The order is the table's.
ARMS: dict[str, tuple[str, dict[str, str]]] = {
    "kd": (BASE, _crr()),
    "cda": (BASE, _crr("both")),
    **{m: (BASE, _crr(teacher=m)) for m in ("pair_mean", "cf_mean", "cf_max", "cf_expmean")},
    **{f"cda_{m}": (BASE, _crr("both", m)) for m in ("pair_mean", "cf_mean", "cf_max", "cf_expmean")},
    # Real compression: a third of the blocks removed, three times the steps. Two arms, because
    # one compressed arm alone would have no baseline of its own size to be compared with.
    "small_kd": (SMALL, _crr()),
    "small_cda_pair_mean": (SMALL, _crr("both", "pair_mean")),
}

PROFESSIONS, PROMPTS_EACH = 136, 8  # the 'professions' prompt set: 8 prompts for each of 136 professions


def eval_args(prompts_per_profession: int = 2, samples_per_prompt: int = 3) -> list[str]:
    """The study's `distill eval` arguments: the demo's scoring budget (Makefile DEMO_EVAL) by default, 272 prompts
    (2 per profession) x 3 samples, precision auto; larger designs come from `distill power` (Makefile)."""
    return ["--prompts", "professions", "--max-prompts", str(PROFESSIONS * prompts_per_profession),
            "--samples-per-prompt", str(samples_per_prompt), "--max-new-tokens", "24", "--batch-size", "64",
            "--dtype", "auto", "--text", "data/tiny_heldout.txt"]


EVAL_ARGS = eval_args()

# Smoke mode: the debug recipe (tiny random teacher, data/tiny_corpus.txt), two steps, a handful of prompts.
SMOKE_BASE = "recipes/debug.yaml"
SMOKE_OVERRIDES = {"train.max_steps": "2", "train.eval_steps": "2", "train.eval_batches": "1",
                   "train.save_steps": "0", "train.log_steps": "1"}
SMOKE_SMALL = {"student.from_teacher_layers": "[0]", "train.max_steps": "3"}
SMOKE_EVAL = ["--prompts", "tests/fixtures/bold_small.json", "--samples-per-prompt", "2", "--max-new-tokens",
              "4", "--batch-size", "16", "--text", "data/tiny_heldout.txt", "--bootstrap", "50"]

# (label, key in the scorer's per-run figures, nested key or None): the table's columns, in order
FIGURES = [
    ("disparity_rms", "disparity_rms", None),
    ("naive |d|", "naive_disparity", None),
    ("probe rms log-ratio", "probe", "rms_logratio"),
    ("probe slope on teacher", "probe", "slope_on_teacher"),
    ("perplexity", "perplexity", None),
    ("agreement", "teacher_agreement", None),
    ("embedding effect size", "embedding_effect_size", None),
    ("downstream TPR-gap rms", "downstream_tpr_gap_rms", None),
]


def baseline_of(arm: str) -> str:
    """The arm an arm's paired tests compare it with: plain KD of the same student size."""
    return SMALL_BASELINE if ARMS[arm][0] == SMALL else BASELINE


def arm_plan(arm: str, smoke: bool) -> tuple[str, dict[str, str]]:
    """(recipe, overrides) of one arm, in smoke mode moved onto the debug recipe."""
    recipe, over = ARMS[arm]
    if not smoke:
        return recipe, dict(over)
    small = SMOKE_SMALL if recipe == SMALL else {}
    return SMOKE_BASE, {**over, **SMOKE_OVERRIDES, **small}


def parse_arms(spec: str | None) -> list[str]:
    if not spec:
        return list(ARMS)
    arms = [a.strip() for a in spec.replace(" ", ",").split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arm(s) {', '.join(unknown)} in STUDY_ARMS/--arms; choose from {', '.join(ARMS)}")
    bases = [baseline_of(a) for a in arms if baseline_of(a) not in arms]  # paired tests: KD of the same size
    return list(dict.fromkeys(bases + arms))


class Runner:
    """Runs `distill ...` as a subprocess (the study) or in this process (the smoke test: no start-up cost)."""

    def __init__(self, in_process: bool, log):
        self.in_process, self.log = in_process, log

    def __call__(self, argv: list[str]) -> int:
        self.log(f"$ distill {shlex.join(argv)}")
        if not self.in_process:
            return subprocess.run([*study_lanes.DISTILL, *argv]).returncode
        from distill.cli import main

        try:
            main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0


def plan_runs(arms: list[str], seeds: list[int], out: Path) -> list[dict]:
    """[{arm, seed, final_dir}] in training order (seed by seed), each run in OUT/runs/ARM/sSEED/."""
    return [{"arm": arm, "seed": seed, "final_dir": str(out / "runs" / arm / f"s{seed}" / "final")}
            for seed in seeds for arm in arms]


def train_runs(arms: list[str], seeds: list[int], out: Path, smoke: bool, run, lanes: int = 1) -> list[dict]:
    """Train every (arm, seed) not yet finished, one after another or in `lanes` parallel lanes
    (distill.study_lanes); returns plan_runs' list."""
    runs = plan_runs(arms, seeds, out)
    jobs = []
    for r in runs:
        arm, seed, final = r["arm"], r["seed"], Path(r["final_dir"])
        if (final / "config.json").exists():
            continue  # finished earlier: an interrupted study picks up here
        recipe, over = arm_plan(arm, smoke)
        jobs.append((f"{arm}_s{seed}", recipe, seed, ["train", "--recipe", recipe, "--overwrite",
                     f"output_dir={final.parent}", f"seed={seed}", *(f"{k}={v}" for k, v in over.items())]))
    if not smoke:  # each seed's transfer set, once, before any of its runs (the lanes would race to build it)
        for recipe, seed in dict.fromkeys((recipe, seed) for _, recipe, seed, _ in jobs):
            if run(["corpus", "--recipe", recipe, f"seed={seed}"]) != 0:
                raise UserError(f"distill corpus failed for seed {seed} (see above)")
    if lanes > 1:
        study_lanes.run_in_lanes([(name, argv) for name, _, _, argv in jobs], lanes, out / "logs", run.log)
        return runs
    for name, _, _, argv in jobs:
        if run(argv) != 0:
            raise UserError(f"training {name} failed (see above); rerun to resume the rest")
    return runs


def score(runs: list[dict], arms: list[str], out: Path, smoke: bool, run, teacher: str | None,
          reuse: bool, eval_argv: list[str] | None = None) -> tuple[dict[str, dict], dict[str, Path], dict]:
    """({arm: results.json of the eval that scored it}, {arm: that eval's folder}, baseline agreement).

    Arms an earlier eval under OUT already scored are not scored again; the rest go into one new `distill eval`
    with the teacher and their baselines (distill.study_evals). With `reuse`, nothing is scored."""
    extra = SMOKE_EVAL if smoke else (eval_argv or EVAL_ARGS)
    assigned, missing, evals = study_evals.assign_evals(out, arms, runs, baseline_of, extra)
    if reuse:
        study_evals.check_reusable(missing, out)
    elif missing:
        eval_dir = study_evals.next_eval_dir(out)
        head = ["--model", f"teacher={teacher}"] if teacher else []
        models = study_evals.eval_models(missing, baseline_of)
        grouped = [f"{arm}=" + ",".join(r["final_dir"] for r in runs if r["arm"] == arm) for arm in models]
        argv = ["eval", *head, *(x for m in grouped for x in ("--model", m)), *extra, "--out", str(eval_dir),
                "--overwrite"]
        if run(argv) != 0:
            raise UserError("distill eval failed (see above); the trained runs are kept under " + str(out / "runs"))
        assigned.update({arm: eval_dir for arm in models})
        evals[eval_dir] = json.loads((eval_dir / "results.json").read_text())
    evals = {d: evals[d] for d in dict.fromkeys(assigned.values())}  # only the evals the table draws on
    agreement = study_evals.baseline_agreement(evals, [a for a in arms if a == baseline_of(a)])
    return {arm: evals[d] for arm, d in assigned.items()}, assigned, agreement


def run_figures(results: dict, arm: str, index: int) -> dict:
    """The scorer's figures for one training run: the index-th entry of its arm's `seeds` (runs are passed in
    seed order), or the arm's own figures when it has a single run; plus that run's two other lenses
    (`embedding_effect_size`, `downstream_tpr_gap_rms`), which the scorer keeps per lens, not per seed."""
    model = results.get("models", {}).get(arm, {})
    seeds = model.get("seeds")
    figures = dict(seeds[index]) if seeds else dict(model)
    for key, lens, field in (("embedding_effect_size", "embedding", "combined_effect_size"),
                             ("downstream_tpr_gap_rms", "downstream", "tpr_gap_rms")):
        block = model.get(lens)
        if isinstance(block, dict):
            one = block["runs"][index] if seeds and block.get("runs") else block
            if one.get(field) is not None:
                figures[key] = one[field]
    return figures


def figure(fig: dict, column: tuple[str, str, str | None]) -> float | None:
    """One FIGURES column of a run's figures, or None where the scorer left it out (or NaN)."""
    _, key, sub = column
    v = fig.get(key)
    if sub is not None:
        v = v.get(sub) if isinstance(v, dict) else None
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


TABLE_TESTS = ("disparity_rms", "probe_rms_logratio")  # the paired tests the table shows (all are in results)


def baseline_comparisons(results: dict, arm: str, base: str = BASELINE) -> list[dict]:
    """The scorer's comparisons between `arm` and its baseline, oriented as arm - baseline (the scorer's diff is
    b - a, in the order the models were given)."""
    out = []
    for c in results.get("comparisons", []):
        pair = (c.get("a"), c.get("b"))
        if pair not in ((base, arm), (arm, base)):
            continue
        sign = 1.0 if pair[0] == base else -1.0
        ci = c.get("ci")
        out.append({"metric": c["metric"], "a": base, "b": arm, "diff": sign * c["diff"],
                    "ci": (ci if sign > 0 else [-ci[1], -ci[0]]) if ci else None, "p": c.get("p"),
                    "p_runs": c.get("p_runs")})
    return out


def slope_runs_test(runs: list[dict], arm: str) -> dict | None:
    """The probe's slope on the teacher, arm - baseline over training runs: mean difference and the exact
    permutation p over the runs (the scorer tests the probe within its trained models only; the slope's spread
    over seeds is what says an effect holds across training). None for a baseline or with too few runs."""
    from distill.eval.scoring import runs_permutation_p

    base = baseline_of(arm)
    if arm == base:
        return None
    values = [[v for r in runs if r["arm"] == a and (v := figure(r["figures"], FIGURES[3])) is not None]
              for a in (base, arm)]
    p = runs_permutation_p(*values)
    if p is None:
        return None
    return {"metric": "probe_slope_on_teacher", "a": base, "b": arm,
            "diff": statistics.fmean(values[1]) - statistics.fmean(values[0]), "p_runs": p}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/study", help="output folder (default out/study)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm, 0..N-1 (default 3)")
    p.add_argument("--arms", default="", help=f"comma-separated subset of: {', '.join(ARMS)} (default all)")
    p.add_argument("--teacher", default=None, help=f"first scored model (default {TEACHER}; none in --smoke)")
    p.add_argument("--smoke", action="store_true", help="debug recipes, 2 steps, few prompts: tests the code path")
    p.add_argument("--in-process", action="store_true", help="run the distill commands in this process")
    p.add_argument("--prompts-per-profession", type=int, default=2, metavar="P",
                   help=f"eval prompts per profession, 1-{PROMPTS_EACH} (default 2: the demo's; size it with "
                   "`distill power`)")
    p.add_argument("--samples-per-prompt", type=int, default=3, metavar="K",
                   help="eval samples per prompt (default 3: the demo's)")
    p.add_argument("--lanes", type=int, default=1,
                   help="train this many runs at once, each pinned to its share of the cores (default 1; on a small "
                   "CPU, one lane per core finishes sooner: distill/study_lanes.py; keep 1 on a GPU)")
    p.add_argument("--reuse-eval", action="store_true",
                   help="write results.json, table.md and the plot from the evals (OUT/eval*/) of an earlier "
                   "study with the same arms and seeds, without training or scoring again")
    args = p.parse_args(argv)
    try:
        with rundir.command_locks(), guarded_stdout():  # the lock on --out ends with the study
            return _study(args, argv)
    except (UserError, OSError) as exc:  # bad input, or a write that failed (a full disk): one line
        return report("distill study", exc)


def declare_primary(out: Path, arms: list[str], seeds: list[int], command: str) -> dict | None:
    """Declare the primary comparison in OUT/results.json before anything trains or is scored (the rest of the
    file follows when the study ends); an earlier declaration of the same comparison keeps its time."""
    path = out / "results.json"
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text()).get("primary")
        except (ValueError, AttributeError):
            previous = None
    primary = study_primary.declare(arms, baseline_of, previous, scored_before=bool(study_evals.eval_dirs(out)))
    write_text_atomic(path, json.dumps({"command": command, "arms": arms, "seeds": seeds, "primary": primary,
                                        "status": "primary comparison declared; the study has not finished"},
                                       indent=2) + "\n")
    return primary


def _study(args, argv) -> int:
    if args.seeds < 1:
        raise UserError(f"--seeds/STUDY_SEEDS must be at least 1, got {args.seeds}")
    if not 1 <= args.prompts_per_profession <= PROMPTS_EACH:
        raise UserError(f"--prompts-per-profession must be 1 to {PROMPTS_EACH} (the prompts the set has for each "
                        f"profession), got {args.prompts_per_profession}")
    if args.samples_per_prompt < 1 or args.prompts_per_profession * args.samples_per_prompt < 2:
        raise UserError("--samples-per-prompt must be at least 1, and prompts x samples at least 2 (the unbiased gap "
                        f"needs pairs), got {args.prompts_per_profession} x {args.samples_per_prompt}")
    study_lanes.check_lanes(args.lanes, args.in_process)
    arms = parse_arms(args.arms)
    seeds = list(range(args.seeds))
    teacher = None if args.smoke else (args.teacher or TEACHER)
    if teacher and not Path(teacher).exists():
        raise UserError(f"teacher {teacher!r} not found; run `make teacher` first (or pass --teacher)")
    out = Path(args.out)
    # never into a training run, a report or a model's final/; then a second study on --out is refused
    rundir.prepare_reused_dir(out, "study", [teacher] if teacher else [])
    rundir.lock_output(out, "--out")
    rundir.write_marker(out, "study")
    command = "python -m distill.study " + shlex.join(argv if argv is not None else sys.argv[1:])
    primary = declare_primary(out, arms, seeds, command)
    run = Runner(args.in_process, lambda msg: print(msg, flush=True))
    if args.reuse_eval:
        runs = plan_runs(arms, seeds, out)
    else:
        runs = train_runs(arms, seeds, out, args.smoke, run, args.lanes)
    results, eval_dirs, agreement = score(runs, arms, out, args.smoke, run, teacher, reuse=args.reuse_eval,
                                          eval_argv=eval_args(args.prompts_per_profession, args.samples_per_prompt))
    for r in runs:  # a several-run model lists its runs in the order given: seeds ascending
        r["figures"] = run_figures(results[r["arm"]], r["arm"], seeds.index(r["seed"]))
    comparisons = {arm: baseline_comparisons(results[arm], arm, baseline_of(arm)) for arm in arms
                   if arm != baseline_of(arm)}
    runs_tests = {arm: t for arm in arms if (t := slope_runs_test(runs, arm))}
    study_primary.fill(primary, runs, lambda r: figure(r["figures"], FIGURES[0]))
    family = study_primary.adjust_secondary(comparisons, runs_tests, primary)
    write_text_atomic(out / "results.json", json.dumps({
        "command": command, "arms": arms, "seeds": seeds,
        "recipes": {a: dict(zip(("recipe", "overrides"), arm_plan(a, args.smoke), strict=True)) for a in arms},
        "runs": runs, "comparisons": comparisons, "baseline_agreement": agreement,
        "runs_tests": runs_tests,
        "evals": {arm: str(d) for arm, d in eval_dirs.items()},
        "teacher": results[BASELINE if BASELINE in arms else arms[0]].get("models", {}).get("teacher"),
        "primary": primary,
        "secondary": {"adjustment": "holm", "tests": family, "alpha": study_primary.ALPHA,
                      "what": "every p and p_runs under comparisons and runs_tests but the primary's: p_holm, "
                              "p_runs_holm"},
    }, indent=2, default=str) + "\n")
    write_table(out / "table.md", arms, runs, comparisons, command, agreement, runs_tests, primary, family)
    write_plot(out / "disparity_vs_perplexity.png", arms, runs)
    print(f"wrote {out}/results.json, table.md and disparity_vs_perplexity.png ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
