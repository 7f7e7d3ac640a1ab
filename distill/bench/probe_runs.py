"""`python -m distill.bench.probe_runs`: the likelihood probe and perplexity of several-run models, per run, with
the exact permutation p over runs against a baseline.

    python -m distill.bench.probe_runs --eval out/demo_seeds/eval --eval out/diag/balance_eval --baseline kd

Reads each eval's results.json (`distill eval` keeps every run's probe and perplexity under `seeds`). A model
scored by two evals is taken from the first. Per model: the probe's offset (mean log P(male)/P(female)), its
distance from 0 and from the teacher's, the slope on the teacher and perplexity, each as mean +- sd over runs,
and against the baseline the ratio of means and the runs p (`distill.eval.paired.runs_permutation_p`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from distill.errors import UserError
from distill.eval.paired import runs_permutation_p
from distill.eval.probe import probe_summary

FIGURES = ("offset", "|offset|", "|offset - teacher|", "slope", "perplexity")


def load_runs(evals: list[Path]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float] | None]:
    """({model: {figure: per-run values}}, the teacher's {figure: value} or None) from the evals' results.json."""
    models: dict[str, dict[str, np.ndarray]] = {}
    ratios: dict[str, list[dict]] = {}  # each run's entry: its probe figures (and per-profession ratios)
    teacher = None
    for path in evals:
        results = path / "results.json"
        if not results.is_file():
            raise UserError(f"{results} does not exist: give --eval a `distill eval` output folder")
        for name, figures in json.loads(results.read_text())["models"].items():
            if name in models or (teacher is not None and name == "teacher"):
                continue
            runs = figures.get("seeds") or [figures]  # a one-run model has no per-run list
            if any(not run.get("probe") for run in runs):
                raise UserError(f"{name} in {results} has no likelihood probe; score it without --no-probe")
            values = {"offset": np.array([run["probe"]["mean_logratio"] for run in runs]),
                      "perplexity": np.array([run.get("perplexity", np.nan) for run in runs], dtype=float)}
            if name == "teacher":
                teacher = {k: float(v[0]) for k, v in values.items()}
                teacher_ratio = runs[0]["probe"]["logratio"]
            else:
                models[name] = values
                ratios[name] = runs
    for name, values in models.items():
        values["|offset|"] = np.abs(values["offset"])
        if teacher is not None:
            values["|offset - teacher|"] = np.abs(values["offset"] - teacher["offset"])
        # From each run's ratios where the eval kept them (an eval that scored no teacher has no slope of its own).
        values["slope"] = np.array([
            slope(run["probe"]["logratio"], teacher_ratio) if teacher is not None and "logratio" in run["probe"]
            else run["probe"].get("slope_on_teacher", np.nan) for run in ratios[name]], dtype=float)
    return models, teacher


def slope(student: dict[str, float], teacher: dict[str, float]) -> float:
    """Least-squares slope of the student's per-profession log ratios on the teacher's (shared professions), as
    `distill eval` computes it (`probe_summary`)."""
    shared = sorted(set(student) & set(teacher))
    if len(shared) < 2:
        raise UserError("the student and the teacher share fewer than 2 probed professions: score them with the "
                        "same --prompts")
    fitted = probe_summary([student[k] for k in shared], [teacher[k] for k in shared])["slope_on_teacher"]
    return np.nan if fitted is None else fitted  # None: the teacher's ratios do not vary


def table(models: dict[str, dict[str, np.ndarray]], teacher: dict[str, float] | None, baseline: str) -> str:
    """Markdown: one row per model, mean +- sd over runs, and for the others the ratio to the baseline's
    mean and the runs p."""
    if baseline not in models:
        raise UserError(f"--baseline {baseline!r} is not among the scored models ({', '.join(models)})")
    figures = [f for f in FIGURES if teacher is not None or f != "|offset - teacher|"]
    lines = ["| model | runs | " + " | ".join(figures) + " |", "|---|---|" + "---|" * len(figures)]
    if teacher is not None:
        shown = {"offset": f"{teacher['offset']:+.3f}", "|offset|": f"{abs(teacher['offset']):.3f}",
                 "|offset - teacher|": "0", "slope": "1", "perplexity": f"{teacher['perplexity']:.2f}"}
        lines.append("| teacher | 1 | " + " | ".join(shown[f] for f in figures) + " |")
    base = models[baseline]
    for name, values in models.items():
        cells = []
        for figure in figures:
            v = values[figure]
            sign = "+" if figure == "offset" else ""
            if np.isnan(v).any():
                cells.append("n/a")
                continue
            cell = f"{v.mean():{sign}.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")
            if name != baseline and figure != "offset":
                p = runs_permutation_p(base[figure], v)
                cell += f" ({v.mean() / base[figure].mean():.2f}x" + (f", p {p:.3f})" if p is not None else ")")
            cells.append(cell)
        lines.append(f"| {name} | {len(values['offset'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.bench.probe_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", action="append", required=True, type=Path, metavar="DIR",
                   help="a `distill eval` output folder (repeatable; a model in two is read from the first)")
    p.add_argument("--baseline", default="kd", help="the model the others are compared with (default kd)")
    args = p.parse_args(argv)
    try:
        models, teacher = load_runs(args.eval)
        print(table(models, teacher, args.baseline))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n(x: ratio of the means to the baseline's; p: exact permutation p over runs against it, two-sided)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
