"""The ablation study: which part of counterfactual role reversal buys what, over several seeds.

    python -m distill.study --out out/study                          # every arm, 3 seeds
    python -m distill.study --arms kd,cda_pair_mean --seeds 2 --out out/study_two
    python -m distill.study --smoke --out /tmp/study_smoke            # debug recipes, 2 steps: the code path
    make study STUDY_SEEDS=3 STUDY_ARMS=kd,cda,pair_mean             # the same through make
    python -m distill.study --lanes 2 --out out/study                # two runs at a time (distill.study.lanes)
    python -m distill.study --arms cda_pair_mean --seeds 5 --prompts-per-profession 8 --samples-per-prompt 5 \
        --out out/demo_seeds                                         # a larger eval, sized by `distill power`

Each arm is a base recipe plus overrides (ARMS). For every (arm, seed) the study runs `distill train` into
OUT/runs/ARM/sSEED (a finished run, one with final/, is reused, so an interrupted study resumes), then one
`distill eval` over the runs no earlier eval scored, with the teacher and their baselines (plain KD of the same
student size), so every paired test compares models scored on the same prompts and sampling seeds. From
scratch that is one eval over everything; arms added later cost only themselves (distill.study.evals). It writes:

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
(`cda_pair_mean`) against `kd` on disparity_rms, over training runs (distill.study.primary). Every other p the
study reports is secondary and Holm-adjusted as one family; the table says which is which.

The package: arms.py (the arms, their baselines, the eval budget), runs.py (training the runs; lanes.py runs
them in parallel), evals.py (which eval scored which arm; the new eval for the rest), figures.py (the scorer's
results read per run), primary.py (the primary comparison and Holm's adjustment), table.py (table and plot).

Seeds: `seed=N` moves the training order and the teacher-written transfer set (its cache key holds the seed),
so arms with the same seed see the same text and differ only in their method.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from distill import rundir
from distill.atomic import write_text_atomic
from distill.errors import UserError, guarded_stdout, report
from distill.fetch_teacher import DEFAULT_TEACHER_GGUF as TEACHER
from distill.study import evals as study_evals
from distill.study import lanes as study_lanes
from distill.study import primary as study_primary
from distill.study.arms import (
    ARMS,
    BASELINE,
    DEMO_EVAL,
    PROMPTS_EACH,
    arm_plan,
    baseline_of,
    eval_args,
    parse_arms,
)
from distill.study.evals import score
from distill.study.figures import FIGURES, baseline_comparisons, figure, run_figures, slope_runs_test
from distill.study.runs import Runner, plan_runs, train_runs
from distill.study.table import write_plot, write_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/study", help="output folder (default out/study)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm, 0..N-1 (default 3)")
    p.add_argument("--arms", default="", help=f"comma-separated subset of: {', '.join(ARMS)} (default all)")
    p.add_argument("--teacher", default=None, help=f"first scored model (default {TEACHER}; none in --smoke)")
    p.add_argument("--smoke", action="store_true", help="debug recipes, 2 steps, few prompts: tests the code path")
    p.add_argument("--in-process", action="store_true", help="run the distill commands in this process")
    p.add_argument("--prompts-per-profession", type=int, default=1, metavar="P",
                   help=f"eval prompts per profession, 1-{PROMPTS_EACH} (default 1: the demo's; size it with "
                   "`distill power`)")
    p.add_argument("--samples-per-prompt", type=int, default=3, metavar="K",
                   help="eval samples per prompt (default 3: the demo's)")
    p.add_argument("--lanes", type=int, default=1,
                   help="train this many runs at once, each pinned to its share of the cores (default 1; on a small "
                   "CPU, one lane per core finishes sooner: distill/study/lanes.py; keep 1 on a GPU)")
    p.add_argument("--reuse-eval", action="store_true",
                   help="write results.json, table.md and the plot from the evals (OUT/eval*/) of an earlier "
                   "study with the same arms and seeds, without training or scoring again")
    p.add_argument("--print-demo-eval-args", action="store_true",
                   help="print the demo's `distill eval` scoring arguments (the Makefile's DEMO_EVAL) and exit")
    args = p.parse_args(argv)
    if args.print_demo_eval_args:
        print(shlex.join(DEMO_EVAL))
        return 0
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
