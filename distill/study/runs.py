"""Training the study's runs: every (arm, seed) into OUT/runs/ARM/sSEED, one after another or in parallel
lanes (distill.study.lanes). A finished run, one with final/config.json, is kept, so an interrupted study
resumes where it stopped; unless its recipe.yaml differs from what the study would train now (a recipe edited
since, e.g. another cut): then it is trained again, and the study says which keys changed.

    from distill.study.runs import Runner, train_runs
    runs = train_runs(arms, seeds, out, smoke, Runner(in_process=False, log=print), lanes=1)
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from distill.errors import UserError
from distill.study.arms import arm_plan
from distill.study.lanes import DISTILL, run_in_lanes


class Runner:
    """Runs `distill ...` as a subprocess (the study) or in this process (the smoke test: no start-up cost)."""

    def __init__(self, in_process: bool, log):
        self.in_process, self.log = in_process, log

    def __call__(self, argv: list[str]) -> int:
        self.log(f"$ distill {shlex.join(argv)}")
        if not self.in_process:
            return subprocess.run([*DISTILL, *argv]).returncode
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


IGNORED_KEYS = frozenset({"description", "report_to"})  # words and loggers: the trained model is the same


def changed_keys(run_dir: Path, recipe: str, overrides: list[str]) -> list[str]:
    """The recipe keys in which a finished run differs from `recipe` + `overrides` ([]: it can be reused)."""
    from distill.config import load_config
    from distill.train.run_lifecycle import recipe_changes, saved_recipe_keys

    old = saved_recipe_keys(run_dir)
    if old is None:
        return ["recipe.yaml (missing or unreadable)"]
    return [k for k in recipe_changes(old, load_config(recipe, overrides)) if k not in IGNORED_KEYS]


def train_runs(arms: list[str], seeds: list[int], out: Path, smoke: bool, run, lanes: int = 1) -> list[dict]:
    """Train every (arm, seed) not yet finished, one after another or in `lanes` parallel lanes
    (distill.study.lanes); returns plan_runs' list."""
    runs = plan_runs(arms, seeds, out)
    jobs = []
    for r in runs:
        arm, seed, final = r["arm"], r["seed"], Path(r["final_dir"])
        recipe, over = arm_plan(arm, smoke)
        overrides = [f"output_dir={final.parent}", f"seed={seed}", *(f"{k}={v}" for k, v in over.items())]
        if (final / "config.json").exists():
            changed = changed_keys(final.parent, recipe, overrides)
            if not changed:
                continue  # finished earlier with this recipe: an interrupted study picks up here
            run.log(f"{arm} seed {seed}: trained again, its recipe differs from {recipe} now in "
                    f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}")
        jobs.append((f"{arm}_s{seed}", recipe, seed, ["train", "--recipe", recipe, "--overwrite", *overrides]))
    if not smoke:  # each seed's transfer set, once, before any of its runs (the lanes would race to build it)
        for recipe, seed in dict.fromkeys((recipe, seed) for _, recipe, seed, _ in jobs):
            if run(["corpus", "--recipe", recipe, f"seed={seed}"]) != 0:
                raise UserError(f"distill corpus failed for seed {seed} (see above)")
    if lanes > 1:
        run_in_lanes([(name, argv) for name, _, _, argv in jobs], lanes, out / "logs", run.log)
        return runs
    for name, _, _, argv in jobs:
        if run(argv) != 0:
            raise UserError(f"training {name} failed (see above); rerun to resume the rest")
    return runs


